"""Shared fixtures. Hub lookups are switched off: every test runs offline on the embedded model and ../shared/data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def minilm():
    from privtune_ray.models import load_task_model

    return load_task_model("all-MiniLM-L6-v2", num_labels=2)


@pytest.fixture(scope="session")
def tokenizer():
    from privtune_ray.models import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def sst2_dev():
    from privtune_ray.data import load_split

    return load_split("sst2", "dev")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (each start costs seconds; local_mode is gone)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # a Ray of its own, even where another runs on this host (a cluster test's, a user's)
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted in-process run of test_simulation's small config that the in-process and the Ray tests
    compare against (one run for both modules). Read-only: a test that writes into a run works on its own."""
    from test_simulation import quiet, small

    from privtune_ray.drivers.simulate import run_simulation

    return run_simulation(small(), out=tmp_path_factory.mktemp("sim") / "reference", log=quiet)
