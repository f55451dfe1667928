"""Config loading: every key checked, overrides typed, one clear error naming the key."""

from pathlib import Path

import pytest

from privtune_ray.config import Config, load_config, read_config_file
from privtune_ray.errors import ConfigError
from privtune_ray.sweep import load_sweep

# Every run config in simulations/ (cluster.yaml is the Ray cluster launcher's, checked in test_simulation_ray.py).
ROOT = Path(__file__).parents[1] / "simulations"
SIMULATIONS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "cluster.yaml")
RUNS = [p for p in SIMULATIONS if "sweep" not in read_config_file(p)]


@pytest.mark.parametrize("path", SIMULATIONS, ids=[str(p.relative_to(ROOT)) for p in SIMULATIONS])
def test_every_shipped_config_loads(path):
    if path in RUNS:
        assert isinstance(load_config(path), Config)
    else:  # a sweep: every one of its points is a valid config
        _, _, points = load_sweep(path)
        assert points


def test_overrides_are_parsed_and_typed():
    cfg = load_config(
        RUNS[0],
        [
            "train.max_steps=30",
            "train.lr=3e-4",
            "data.max_eval_samples=null",
            "train.lora.enabled=true",
            "train.lora.target_modules=[query, value]",
        ],
    )
    assert cfg.train.max_steps == 30 and cfg.train.lr == 3e-4 and cfg.data.max_eval_samples is None
    assert cfg.train.lora.enabled and cfg.train.lora.target_modules == ["query", "value"]
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lrr=1e-4", r"unknown config key 'train.lrr'.*lr"),
        ("modell.name=x", r"unknown config key 'modell'"),
        ("train.max_steps=ten", r"'train.max_steps' must be of type int"),
        ("train.max_steps=-3", r"'train.max_steps'.*>= 1"),
        ("model.split_depth=-1", r"'model.split_depth'"),
        ("train.lr=0", r"'train.lr'.*> 0"),
        ("data.dataset=imdb", r"'data.dataset'.*unknown dataset 'imdb'"),
        ("train.lora=3", r"'train.lora' must be a section"),
        ("train.lora.enabled=maybe", r"'train.lora.enabled' must be of type bool"),
        ("seed=-1", r"'seed'"),
        ("train.max_steps", r"must look like key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(RUNS[0], [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("simulations/no-such.yaml")


@pytest.mark.parametrize(
    "override,match",
    [
        ("mechanism.name=rot13", r"'mechanism.name'.*unknown mechanism 'rot13'"),
        ("mechanism.eta=0", r"'mechanism.eta'.*> 0"),
        ("mechanism.eta=-5", r"'mechanism.eta'"),
        ("mechanism.noise_multiplier=0", r"'mechanism.noise_multiplier'"),
        ("mechanism.delta=1.5", r"'mechanism.delta'.*\(0, 1\)"),
        ("mechanism.s_min=0", r"'mechanism.s_min'"),
        ("mechanism.n_hops=0", r"'mechanism.n_hops'"),
    ],
)
def test_bad_mechanism_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(RUNS[0], [override])


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  lr: [1e-4\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml', line \d+, column \d+: not valid YAML .*fix the file"):
        load_config(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


@pytest.mark.parametrize("override", ["mechanism.eta=.inf", "train.lr=.nan", "design.target_epsilon=-.inf"])
def test_a_non_finite_number_is_refused_everywhere(override):
    with pytest.raises(ConfigError, match=f"'{override.split('=')[0]}' must be a finite number"):
        load_config(None, [override])


def test_more_devices_per_round_than_devices_is_refused():
    with pytest.raises(ConfigError, match=r"devices_per_round.*8 devices per round out of simulation.devices=5"):
        load_config(None, ["simulation.devices=5", "simulation.devices_per_round=8"])
