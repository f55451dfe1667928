"""A new design is one class and one registry line: a small design proves it through `train` and `simulate`.

``HeadOnlyDesign`` is split learning whose cloud trains only the task head (bias and weights of the classifier),
the top's blocks frozen, and reports how many parameters it froze. It touches nothing outside this file but the
``DESIGNS`` entry the tests add.
"""

import json
from pathlib import Path

import pytest
import torch

from privtune_ray.config import load_config
from privtune_ray.designs.registry import DESIGNS
from privtune_ray.designs.split import SplitDesign
from privtune_ray.drivers.simulate import Coordinator, prepare, start_backend
from privtune_ray.drivers.train import run_training
from privtune_ray.errors import ConfigError
from privtune_ray.runs import RunSession

ROOT = Path(__file__).parents[1]


class HeadOnlyDesign(SplitDesign):
    """Split learning whose cloud trains the task head only (BERT: the pooler and the classifier)."""

    name = "head_only"

    def top_server(self, top, optimizer, scheduler, device):
        head = {id(p) for p in top.head.parameters()}
        self.frozen = 0
        for p in top.parameters():
            if id(p) not in head:
                p.requires_grad_(False)
                self.frozen += p.numel()
        return super().top_server(top, optimizer, scheduler, device)

    def summary(self, cloud, rounds_done, population=None):
        return {"head_only": {"frozen_params": self.frozen}}


@pytest.fixture
def head_only(monkeypatch):
    monkeypatch.setitem(DESIGNS, "head_only", HeadOnlyDesign)  # the one registry line


def quiet(*_):
    pass


def test_an_unregistered_design_is_one_line_naming_the_registered_ones():
    from privtune_ray.checks import check_config

    with pytest.raises(ConfigError, match=r"'design.name'.*unknown design 'head_only'.*split, ewtune"):
        check_config(load_config(None, ["design.name=head_only"]))


def test_a_new_design_trains_in_train(head_only, tmp_path):
    cfg = load_config(
        str(ROOT / "simulations" / "sst2_demo.yaml"),
        [
            "design.name=head_only",
            "data.max_train_samples=64",
            "data.max_eval_samples=16",
            "train.max_steps=2",
            "train.progress=false",
        ],
    )
    out = run_training(cfg, out=tmp_path / "train", log=quiet)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["design"] == "head_only" and summary["defence"] == "none"
    assert summary["trainable_params"] == (384 * 384 + 384) + (384 * 2 + 2)  # the head: BERT's pooler, the classifier
    assert summary["head_only"]["frozen_params"] > 1_000_000


def test_a_new_design_runs_in_simulate_and_trains_only_the_head(head_only, tmp_path):
    cfg = load_config(
        str(ROOT / "simulations" / "sst2_devices.yaml"),
        [
            "design.name=head_only",
            "data.max_train_samples=120",
            "data.max_eval_samples=16",
            "simulation.devices=6",
            "simulation.devices_per_round=3",
            "simulation.rounds=2",
            "simulation.local_batch_size=8",
            "simulation.partition=iid",
            "train.progress=false",
        ],
    )
    setup = prepare(cfg)
    pool = start_backend(setup)
    before = {k: v.clone() for k, v in pool.backend.replicas[0].server.top.state_dict().items()}
    coordinator = Coordinator(setup, pool, RunSession.open(cfg, tmp_path / "sim", resume=False), log=quiet)
    coordinator.train()
    after = pool.backend.replicas[0].server.top.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)  # the blocks stayed frozen, the head trained
    assert coordinator.totals.rounds_done == 2 and coordinator.totals.samples > 0
