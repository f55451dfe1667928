"""The cloud's levers on public text (issue 15): the warm start, the denoiser, and the refusals that keep them
off private data."""

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from privtune_ray.checks import check_config
from privtune_ray.cli import main
from privtune_ray.config import load_config
from privtune_ray.drivers.simulate import prepare
from privtune_ray.drivers.train import run_training
from privtune_ray.errors import ConfigError
from privtune_ray.mechanisms.registry import build_mechanism
from privtune_ray.models.denoiser import TokenDenoiser
from privtune_ray.models.split import MeanPooledHead, mean_pool, split_model
from privtune_ray.training.server import TopServer
from privtune_ray.training.warm_start import PublicBatches, load_public, warm_start

ROOT = Path(__file__).parents[1]
BASELINE = str(ROOT / "simulations" / "sst2_baseline.yaml")
SMALL = ["train.progress=false", "data.max_train_samples=256", "data.max_eval_samples=64", "train.log_every=2"]
quiet = lambda *_: None  # noqa: E731
LEVERS = ["mechanism.name=dchi", "mechanism.eta=20", "train.warm_start.enabled=true", "train.warm_start.samples=96"]


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.warm_start.split=train", r"split 'train', which is data.train_split: .*private"),
        ("train.warm_start.split=dev", r"split 'dev', which is data.eval_split"),
        ("train.warm_start.split=validation", r"train.warm_start.split='validation': sst2 has the splits"),
        (
            "train.warm_start.objective=kl",
            r"'train.warm_start.objective'.*unknown objective 'kl'.*\['hidden', 'pooled'\]",
        ),
        ("train.warm_start.dataset=imdb", r"'train.warm_start.dataset'.*unknown dataset 'imdb'"),
        ("train.denoiser.kind=unet", r"'train.denoiser.kind'.*unknown denoiser 'unet'.*\['none', 'mlp'\]"),
        ("train.warm_start.steps=0", r"'train.warm_start.steps'.*>= 1"),
        ("train.head_pooling=max", r"'train.head_pooling'.*'token' or 'mean'"),
    ],
)
def test_a_public_source_that_is_private_or_unknown_is_refused_naming_it(override, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        check_config(load_config(BASELINE, [*LEVERS, override]))
    args = ["train", BASELINE, "--out", str(tmp_path / "run"), *sum((["--set", s] for s in [*LEVERS, override]), [])]
    assert main(args) == 2 and not (tmp_path / "run").exists()


def test_a_mean_pooled_head_on_a_language_model_is_refused():
    with pytest.raises(ConfigError, match=r"'train.head_pooling'.*causal-lm needs 'token'"):
        check_config(load_config(BASELINE, ["model.task=causal-lm", "train.head_pooling=mean"]))


@pytest.mark.parametrize(
    "levers",
    [
        ["design.name=online", "train.head_pooling=mean"],
        ["design.name=offline", "train.warm_start.enabled=true"],
    ],
)
def test_simulate_refuses_levers_on_a_design_that_builds_its_own_cloud_part(levers):
    with pytest.raises(ConfigError, match=r"design '(online|offline)' builds its own cloud part"):
        prepare(load_config(str(ROOT / "simulations" / "sst2_devices.yaml"), levers))


def test_simulate_warms_the_top_on_public_text_once_and_every_replica_starts_from_it():
    """The coordinator runs the levers once on the top from the shallowest depth; the replicas (two, so the
    routing is exercised) load exactly those weights (test_one_engine.py runs the lever end to end)."""
    from types import SimpleNamespace

    from privtune_ray.drivers.simulate import prepare_public_top, start_backend
    from privtune_ray.models.loading import load_task_model

    cfg = load_config(
        str(ROOT / "simulations" / "sst2_devices.yaml"),
        [
            "data.max_train_samples=128",
            "data.max_eval_samples=32",
            "simulation.devices=8",
            "simulation.devices_per_round=2",
            "simulation.rounds=2",
            "simulation.top_replicas=2",
            *LEVERS,
            "train.warm_start.steps=4",
            "train.denoiser.kind=mlp",
            "train.denoiser.width=32",
            "train.denoiser.pretrain_steps=3",
        ],
    )
    setup = prepare(cfg)
    assert setup.public is not None and len(setup.public) == 96
    blob, record = prepare_public_top(setup, log=quiet)
    prepared = torch.load(io.BytesIO(blob), weights_only=True)
    assert any(k.startswith("front.") for k in prepared)  # the denoiser is part of the prepared top
    assert record["public_sentences"] == 96 and len(record["denoiser_pretrain_loss"]) == 2
    pool = start_backend(setup, prepared_top=blob)
    try:
        held = [
            torch.load(io.BytesIO(b), weights_only=False)["top"]
            for b in pool.backend.on_replicas([(i, "state", ()) for i in range(2)])
        ]
    finally:
        pool.shutdown()
    for state in held:
        assert state.keys() == prepared.keys()
        assert all(torch.equal(state[k], prepared[k]) for k in prepared)
    entry = int(setup.population.depth.min())
    host = SimpleNamespace(setup=SimpleNamespace(entry_depth=entry, prepared_top=None), device="cpu")
    cold = setup.design.build_cloud(host, load_task_model(cfg.model.name, "classification", 2)).top.state_dict()
    blocks = [k for k in prepared if k.startswith("blocks.") and k in cold]
    assert blocks and any(not torch.equal(cold[k], prepared[k]) for k in blocks)  # the warm start moved them


def test_simulate_runs_the_denoiser_and_the_mean_pooled_head(tmp_path):
    from types import SimpleNamespace

    from privtune_ray.designs.registry import design_for
    from privtune_ray.drivers.simulate import run_simulation
    from privtune_ray.models.loading import load_task_model

    levers = ["train.denoiser.kind=mlp", "train.head_pooling=mean", "mechanism.name=dchi", "mechanism.eta=20"]
    small = ["data.max_train_samples=128", "data.max_eval_samples=32", "simulation.devices=8", "simulation.rounds=2"]
    cfg = load_config(
        str(ROOT / "simulations" / "sst2_devices.yaml"), [*small, "simulation.devices_per_round=2", *levers]
    )
    host = SimpleNamespace(setup=SimpleNamespace(entry_depth=1, prepared_top=None), device="cpu")
    top = design_for(cfg, "simulate").build_cloud(host, load_task_model(cfg.model.name, "classification", 2)).top
    assert isinstance(top.front, TokenDenoiser) and isinstance(top.head, MeanPooledHead)  # what each replica holds
    run = run_simulation(cfg, out=tmp_path / "run", log=quiet)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and 0.0 <= summary["utility"] <= 1.0
    assert "head_pooling: mean" in (run / "config.yaml").read_text()


def test_the_mean_pooled_head_reads_every_real_token_and_no_padding_row(minilm):
    """The family's head (BERT: the [CLS] pooler) reads one position; the mean-pooled head reads the mean of the
    real tokens: changing a later real token moves its logits only, changing a padding row moves neither."""
    top = split_model(copy.deepcopy(minilm), 2).top
    pooled = MeanPooledHead(top.head).eval()
    hidden, mask = torch.randn(2, 8, 384), torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        token_logits, mean_logits = top.head.eval()(hidden, mask), pooled(hidden, mask)
        assert torch.allclose(mean_logits, top.head(mean_pool(hidden, mask).unsqueeze(1), mask[:, :1]))
        later, padded = hidden.clone(), hidden.clone()
        later[:, 3] += 5.0
        padded[1, 6] += 5.0
        assert torch.allclose(top.head(later, mask), token_logits)  # [CLS] only
        assert not torch.allclose(pooled(later, mask), mean_logits, atol=1e-4)
        assert torch.allclose(pooled(padded, mask), mean_logits)


def test_public_text_leaves_out_every_private_sentence(tokenizer):
    cfg = load_config(BASELINE, [*LEVERS, "train.warm_start.samples=null"])
    public, _ = load_public(cfg, tokenizer, [[]])
    private = public.texts[:7] + ["a sentence of no public split"]
    kept, dropped = load_public(cfg, tokenizer, [private[:4], private[4:]])
    assert dropped == 7 and len(kept) == len(public) - 7 and not set(kept.texts) & set(private)


@pytest.mark.slow  # the train test below (behind `long`, which CI runs) checks that the warm start's loss falls
def test_the_warm_start_brings_the_tops_features_on_noisy_input_towards_the_clean_ones(minilm, tokenizer):
    """``hidden`` distillation on 96 public sentences: the relative distance between the top's features on h̃ and
    the clean pretrained top's on h falls, on held-out public sentences too."""
    cfg = load_config(BASELINE, LEVERS)
    public, _ = load_public(cfg, tokenizer, [[]])
    split = split_model(copy.deepcopy(minilm), 2)
    mech = build_mechanism(cfg.mechanism, split, tokenizer, "", seed=5)
    train, held_out = public.subset(range(64)), public.subset(range(64, 96))
    pad = tokenizer.pad_token_id

    def distance(top, data):
        h, noisy, mask = PublicBatches(data, split.bottom, mech, 32, pad, seed=1).next()
        with torch.no_grad():
            clean = top.features(h, mask)
            real = mask.bool()
            return float((top.features(noisy, mask) - clean)[real].pow(2).sum() / clean[real].pow(2).sum())

    top = split.top
    top.front = TokenDenoiser(split.hidden_size, 64)
    before = distance(top, held_out)
    losses = warm_start(top, PublicBatches(train, split.bottom, mech, 16, pad, seed=0), 30, 3e-4, "hidden", "cpu")
    assert losses[-1] < 0.7 * losses[0]
    assert distance(top, held_out) < 0.8 * before


@pytest.mark.long  # two trainings
def test_train_with_warm_start_and_denoiser_records_them_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    """The levers run once, before the first step: a run interrupted at step 3 resumes from its checkpoint (which
    holds the prepared top, denoiser included) without rerunning them, and ends where an uninterrupted run ends."""
    cfg = load_config(
        BASELINE,
        [
            *SMALL,
            *LEVERS,
            "train.warm_start.steps=6",
            "train.denoiser.kind=mlp",
            "train.denoiser.width=32",
            "train.denoiser.pretrain_steps=4",
            "train.head_pooling=mean",
            "train.max_steps=4",
            "train.checkpoint_every=2",
        ],
    )
    whole = json.loads((run_training(cfg, out=tmp_path / "whole", log=quiet) / "summary.json").read_text())
    assert whole["warm_start"] == "hidden" and whole["denoiser"] == "mlp" and whole["head_pooling"] == "mean"
    assert whole["public_sentences"] == 96 and whole["public_dropped_as_private"] == 0
    first, last = whole["warm_start_loss"]  # the first step's loss, the mean of the last ten
    assert last < first and len(whole["denoiser_pretrain_loss"]) == 2
    assert json.loads((tmp_path / "whole" / "public.json").read_text())["warm_start_loss"] == whole["warm_start_loss"]

    calls, original = {"n": 0}, TopServer.accumulate_samples

    def dies_at_step_3(self, msg):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, msg)

    monkeypatch.setattr(TopServer, "accumulate_samples", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, out=tmp_path / "cut", log=quiet)
    monkeypatch.setattr(TopServer, "accumulate_samples", original)
    ran = []
    monkeypatch.setattr("privtune_ray.drivers.engine.prepare_cloud_top", lambda *a, **k: ran.append(1) or {})
    resumed = json.loads((run_training(cfg, out=tmp_path / "cut", resume=True, log=quiet) / "summary.json").read_text())
    assert not ran  # the checkpoint holds the prepared top
    assert resumed["warm_start_loss"] == whole["warm_start_loss"]
    assert resumed["dev_loss"] == pytest.approx(whole["dev_loss"], abs=1e-5)
