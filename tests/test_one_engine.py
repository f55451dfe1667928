"""One engine (issue 36): `train` is the simulation engine with one device; every lever runs under both commands."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from privtune_ray.config import load_config
from privtune_ray.drivers.engine import one_device
from privtune_ray.drivers.simulate import run_simulation
from privtune_ray.drivers.train import run_training

ROOT = Path(__file__).parents[1]
quiet = lambda *_: None  # noqa: E731
DATA = ["data.max_train_samples=48", "data.max_eval_samples=16", "attack.enabled=false", "train.progress=false"]
TRAIN = [*DATA, "train.max_steps=2", "train.batch_size=8", "train.log_every=1"]
SIMULATE = [
    *DATA,
    "simulation.devices=4",
    "simulation.devices_per_round=2",
    "simulation.local_batch_size=4",
    "simulation.rounds=2",
    "simulation.deadline_s=null",
]
# Each lever of the issue, as the keys that switch it on (GuardedTuning at its smallest layout on MiniLM).
LEVERS = {
    "lora": ["train.lora.enabled=true", "train.lora.r=2"],
    "quantised-cut": ["design.bits=8", "mechanism.name=dchi", "mechanism.eta=20"],
    "denoiser-and-mean-head": ["train.denoiser.kind=mlp", "train.denoiser.width=16", "train.head_pooling=mean"],
    "warm-start": [
        "train.warm_start.enabled=true",
        "train.warm_start.samples=32",
        "train.warm_start.steps=2",
        "train.warm_start.batch_size=8",
    ],
    "ewtune": ["design.name=ewtune", "design.target_epsilon=8.0", "design.calibrate_with=pld"],
    "online": ["design.name=online", "design.bits=8"],
    "gradfree": ["design.name=gradfree"],
    "offline": ["design.name=offline"],
}
CONFIG = {"train": "simulations/sst2_baseline.yaml", "simulate": "simulations/ci/sst2_designs.yaml"}


def test_train_is_a_one_device_simulation(tmp_path):
    """The run directory of `train` holds the engine's tables: one device (tier `local`, at the split depth, the
    bottom already held, so nothing downloaded), a round per step; and train's own metrics.csv."""
    cfg = load_config(str(ROOT / CONFIG["train"]), [*TRAIN, "train.max_steps=3", "train.log_every=2"])
    run = run_training(cfg, out=tmp_path / "run", log=quiet)
    summary = json.loads((run / "summary.json").read_text())
    devices, rounds = pd.read_csv(run / "devices.csv"), pd.read_csv(run / "rounds.csv")
    assert summary["command"] == "train" and summary["steps"] == 3 and summary["devices"] == 1
    assert rounds["round"].tolist() == [0, 1, 2] and (rounds["samples"] == 8).all()
    assert set(devices["device"]) == {0} and set(devices["tier"]) == {"local"}
    assert set(devices["depth"]) == {cfg.model.split_depth} and set(devices["status"]) == {"ok"}
    assert devices["bytes_down"].sum() == 0 and summary["bytes_up"] == devices["bytes_up"].sum()
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [2, 3]
    recorded = load_config(str(run / "config.yaml")).simulation  # the config as given, not the one-device population
    assert recorded == cfg.simulation and recorded.tiers != one_device(cfg, 3).simulation.tiers


def test_one_device_is_always_there_with_zero_latency_and_the_whole_split():
    cfg = one_device(load_config(str(ROOT / CONFIG["train"]), TRAIN), rounds=7)
    sim = cfg.simulation
    assert (sim.devices, sim.devices_per_round, sim.rounds, sim.local_batch_size) == (1, 1, 7, 8)
    (tier,) = sim.tiers
    assert (tier.availability, tier.dropout, tier.latency_ms, tier.jitter) == (1.0, 0.0, 0.0, 0.0)
    assert tier.uplink_mbps == float("inf") and sim.backend == "inprocess" and sim.deadline_s is None


# EW-Tune's two runs (about 12 s each: the PLD calibration) are long; test_ewtune.py runs it under both by default.
@pytest.mark.parametrize("command", ["train", "simulate"])
@pytest.mark.parametrize("lever", [pytest.param(x, marks=pytest.mark.long) if x == "ewtune" else x for x in LEVERS])
def test_every_lever_runs_under_both_commands(lever, command, tmp_path):
    overrides = (TRAIN if command == "train" else SIMULATE) + LEVERS[lever]
    cfg = load_config(str(ROOT / CONFIG[command]), overrides)
    runner = run_training if command == "train" else run_simulation
    summary = json.loads((runner(cfg, out=tmp_path / "run", log=quiet) / "summary.json").read_text())
    assert summary["command"] == command and summary["rounds"] == 2
    assert summary["train_samples"] > 0 and 0.0 <= summary["utility"] <= 1.0
    on = {
        "lora": lambda: summary["lora"] is True,
        "quantised-cut": lambda: summary["bytes_up"] < summary["train_samples"] * 64 * 384,  # < 1 byte a value
        "denoiser-and-mean-head": lambda: (summary["denoiser"], summary["head_pooling"]) == ("mlp", "mean"),
        "warm-start": lambda: summary["warm_start"] == "hidden" and summary["public_sentences"] > 0,
        "ewtune": lambda: summary["dp_sgd"]["spent"]["epsilon_pld"] > 0,
        "online": lambda: summary["guarded"]["design"] == "online",
        "gradfree": lambda: summary["guarded"]["design"] == "gradfree",
        "offline": lambda: summary["guarded"]["design"] == "offline",
    }[lever]
    assert on(), summary


def test_the_cloud_cuts_a_large_upload_into_pieces_that_hold_each_row_once():
    """`train.physical_batch_size`: the replica backpropagates train's one logical batch in pieces by length; each
    piece is rows of the upload as received (real positions equal, padding rows zero, cut to its longest row)."""
    from types import SimpleNamespace

    from privtune_ray.message import Message, take_rows
    from privtune_ray.simulation.replica import TopReplica

    torch.manual_seed(0)
    lengths = torch.tensor([5, 2, 7, 3, 7, 1, 4])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    msg = Message(hidden=torch.randn(7, 8, 4), attention_mask=mask, labels=torch.arange(7) % 2, split_depth=2)
    for packs in (False, True):
        host = SimpleNamespace(
            setup=SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(physical_batch_size=3))),
            design=SimpleNamespace(packs_uploads=packs),
        )
        pieces = TopReplica._pieces(host, [msg])
        rows = torch.cat([u.rows for piece in pieces for u in piece])
        assert sorted(rows.tolist()) == list(range(7)) and all(len(u.rows) <= 3 for p in pieces for u in p)
        assert [u.k for p in pieces for u in p] == [0, 1, 2]  # the pieces of one message, in order
    for unit in pieces:
        (u,) = unit
        part = take_rows(msg, u.rows)
        width = int(lengths[u.rows].max())
        assert part.hidden.shape == (len(u.rows), width, 4) and torch.equal(part.labels, msg.labels[u.rows])
        real = part.attention_mask.bool()
        assert torch.equal(part.hidden[real], msg.hidden[u.rows, :width][real])
        assert not part.hidden[~real].any()  # padding rows zero, as on the wire
    with pytest.raises(ValueError, match="class-id labels"):
        take_rows(Message(torch.zeros(2, 3, 4), torch.ones(2, 3).long(), torch.zeros(0).long()), torch.tensor([0]))


def test_a_checkpoint_from_before_the_batch_cursor_resumes_at_the_same_batch():
    """Populations once counted a device's cursor in samples sent; a checkpoint of that kind resumes where it was."""
    import numpy as np

    from privtune_ray.config import SimulationConfig
    from privtune_ray.simulation.population import Population

    sim = SimulationConfig(devices=2, devices_per_round=2, local_batch_size=4)
    parts = [np.arange(10), np.arange(10, 18)]
    make = lambda: Population(sim, 0, np.zeros(2, np.int16), np.ones(2, np.int16), parts)  # noqa: E731
    ran = make()
    for r in range(2):
        ran.commit(ran.plan(r))
    old = {**ran.state_dict(), "cursor": ran.cursor * 4}  # as the sample-counting code wrote it
    del old["cursor_batches"]
    resumed = make()
    resumed.load_state_dict(old)
    assert resumed.cursor.tolist() == ran.cursor.tolist() == [2, 2]
    assert [d.task.samples.tolist() for d in resumed.plan(2).devices] == [
        d.task.samples.tolist() for d in ran.plan(2).devices
    ]
