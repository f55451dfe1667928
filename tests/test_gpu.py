"""The GPU path of the top model: `train` and the in-process replica pool on CUDA agree with the CPU run.

Skipped where torch sees no GPU (CI has none). On a GPU machine: `pytest -m gpu tests/test_gpu.py`.
PRIVTUNE_TEST_MODEL names the model (default: the embedded MiniLM).
"""

import copy
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from privtune_ray.config import TrainConfig, load_config
from privtune_ray.data import load_split
from privtune_ray.data.batching import collate, tokenize_split
from privtune_ray.drivers.simulate import run_simulation
from privtune_ray.drivers.train import run_training
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.models import load_split_model, load_tokenizer
from privtune_ray.training.client import SplitClient
from privtune_ray.training.server import TopServer, build_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODEL = os.environ.get("PRIVTUNE_TEST_MODEL", "all-MiniLM-L6-v2")
TRAIN = [
    "train.max_steps=20",
    "data.max_train_samples=640",
    "data.max_eval_samples=256",
    "train.progress=false",
    "train.threads=4",
    f"model.name={MODEL}",
]
EXACT = ["round", "device", "tier", "depth", "status", "samples", "tokens", "bytes_up", "bytes_down", "releases"]


def quiet(*_):
    pass


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_a_top_step_on_the_gpu_equals_the_cpu_step():
    """Same top, same message, dropout off: the loss and the updated weights agree to float rounding."""
    split = load_split_model(MODEL, 2)
    tokenizer = load_tokenizer(MODEL)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=32, seed=0), tokenizer, 64)
    msg = SplitClient(split.bottom, Mechanism()).encode(collate(dev, np.arange(32), tokenizer.pad_token_id))
    servers = {}
    for device in ("cpu", "cuda"):
        top = copy.deepcopy(split.top)
        for module in top.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        optimizer, scheduler = build_optimizer(top, TrainConfig(lr=1e-3, warmup_ratio=0.0), total_steps=10)
        servers[device] = TopServer(top, optimizer, scheduler, device=device)
    losses = {d: s.train_step(msg) for d, s in servers.items()}
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-5)
    for p_cpu, p_gpu in zip(servers["cpu"].top.parameters(), servers["cuda"].top.parameters(), strict=True):
        assert p_gpu.device.type == "cuda"
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mechanism", ["none", "privtune"])
def test_training_on_the_gpu_matches_the_cpu(mechanism, tmp_path):
    """Whole runs: the same samples and bytes; dropout masks come from each device's own RNG, so the
    trajectories differ a little and the accuracies agree within a few points."""
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(
            "simulations/sst2_baseline.yaml", TRAIN + [f"train.device={device}", f"mechanism.name={mechanism}"]
        )
        runs[device] = _summary(run_training(cfg, tmp_path / device, log=quiet))
    for key in ("steps", "train_samples", "bytes_up"):
        assert runs["cuda"][key] == runs["cpu"][key]
    assert abs(runs["cuda"]["dev_accuracy"] - runs["cpu"]["dev_accuracy"]) <= 0.03
    assert abs(runs["cuda"]["dev_loss"] - runs["cpu"]["dev_loss"]) <= 0.1 * runs["cpu"]["dev_loss"]


def test_replica_pool_on_the_gpu_matches_the_cpu(tmp_path):
    """Two replicas kept in sync by the gradient all-reduce, on CUDA, against the same run on the CPU."""
    small = [
        "data.max_train_samples=400",
        "data.max_eval_samples=128",
        "simulation.devices=20",
        "simulation.rounds=4",
        "simulation.devices_per_round=4",
        "simulation.local_batch_size=16",
        "simulation.top_replicas=2",
        "train.progress=false",
        "train.threads=4",
        f"model.name={MODEL}",
    ]
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = load_config("simulations/sst2_devices.yaml", small + [f"train.device={device}"])
        runs[device] = run_simulation(cfg, tmp_path / device, log=quiet)
    cpu, gpu = (pd.read_csv(runs[d] / "devices.csv") for d in ("cpu", "cuda"))
    pd.testing.assert_frame_equal(gpu[EXACT], cpu[EXACT])
    summary = _summary(runs["cuda"])
    assert summary["backend"]["replica"]["device"].startswith("cuda") and summary["backend"]["top_replicas"] == 2
    assert abs(summary["dev_accuracy"] - _summary(runs["cpu"])["dev_accuracy"]) <= 0.03
