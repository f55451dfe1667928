"""EW-Tune: DP-SGD on the top model through Opacus, σ calibrated by the Edgeworth accountant, ε accumulated."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from privtune_ray.checks import check_config
from privtune_ray.config import DesignConfig, TrainConfig, load_config
from privtune_ray.data import load_split
from privtune_ray.data.batching import collate, tokenize_split
from privtune_ray.designs.dp_plan import DPPlan, plan_dp_sgd, spent_epsilon
from privtune_ray.designs.ewtune import DPTopServer, poisson_batches
from privtune_ray.drivers.train import run_training
from privtune_ray.errors import ConfigError
from privtune_ray.mechanisms.base import Mechanism
from privtune_ray.models import split_model
from privtune_ray.training.client import SplitClient
from privtune_ray.training.server import TopServer, build_optimizer

BASELINE = Path(__file__).parents[1] / "simulations" / "sst2_baseline.yaml"


def quiet(*_):
    pass


def _no_dropout(module):
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module


def _sgd(top):
    optimizer = torch.optim.SGD(top.parameters(), lr=0.5)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_a_dp_step_without_noise_or_clipping_equals_a_plain_step(minilm, tokenizer):
    """σ = 0 and C = ∞: the DPOptimizer's sum of per-sample gradients / B is the plain mean gradient."""
    split = split_model(copy.deepcopy(minilm), 2)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=8, seed=0), tokenizer, 64)
    msg = SplitClient(split.bottom, Mechanism()).encode(collate(dev, np.arange(8), tokenizer.pad_token_id))
    plan = DPPlan(
        sample_rate=0.1,
        steps=1,
        noise_multiplier=0.0,
        clip_norm=1e9,
        delta=1e-5,
        target_epsilon=1.0,
        epsilon_edgeworth=float("inf"),
        epsilon_pld=float("inf"),
        epsilon_rdp=float("inf"),
    )
    tops = [_no_dropout(copy.deepcopy(split.top)) for _ in range(2)]
    plain = TopServer(tops[0], *_sgd(tops[0]))  # SGD: the step is the gradient itself (Adam's first step is ~sign(g))
    dp = DPTopServer(tops[1], *_sgd(tops[1]), plan, expected_batch_size=8)
    assert dp.train_step(msg) == pytest.approx(plain.train_step(msg), rel=1e-6)
    for a, b in zip(tops[0].parameters(), tops[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(tops[1].parameters(), split.top.parameters(), strict=True))


def test_clipping_and_noise_change_the_step(minilm, tokenizer):
    split = split_model(copy.deepcopy(minilm), 2)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=8, seed=0), tokenizer, 64)
    msg = SplitClient(split.bottom, Mechanism()).encode(collate(dev, np.arange(8), tokenizer.pad_token_id))
    steps = {}
    for name, sigma, clip in [("plain", 0.0, 1e9), ("clipped", 0.0, 1e-3), ("noisy", 1.0, 1e9)]:
        plan = DPPlan(0.1, 1, sigma, clip, 1e-5, 1.0, 0.0, 0.0, 0.0)
        top = _no_dropout(copy.deepcopy(split.top))
        server = DPTopServer(
            top, *build_optimizer(top, TrainConfig(lr=1e-3, warmup_ratio=0.0, weight_decay=0.0), 10), plan, 8
        )
        server.train_step(msg)
        steps[name] = torch.cat(
            [(p - q).flatten() for p, q in zip(top.parameters(), split.top.parameters(), strict=True)]
        )
    assert not torch.allclose(steps["clipped"], steps["plain"]) and not torch.allclose(steps["noisy"], steps["plain"])


def test_sigma_is_calibrated_by_edgeworth_with_pld_and_rdp_beside_it():
    plan = plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=3.0), sample_rate=1 / 30, steps=600)
    assert plan.sample_rate == pytest.approx(1 / 30) and plan.calibrated_with == "edgeworth"
    assert plan.epsilon_edgeworth == pytest.approx(3.0, abs=1e-3) and plan.noise_multiplier > 0.3
    assert plan.epsilon_pld > 0 and plan.epsilon_rdp >= plan.epsilon_pld  # RDP is the looser bound
    # at q = 1/30, T = 600 the Edgeworth ε is within 4 % of the PLD bound and above it: no warning
    assert plan.edgeworth_warning() is None
    spent = [spent_epsilon(plan, t)["epsilon_pld"] for t in (0, 100, 300, 600)]
    assert spent[0] == 0 and spent == sorted(spent) and spent[-1] == pytest.approx(plan.epsilon_pld)


def test_a_plan_whose_pld_epsilon_exceeds_the_target_stops_unless_allowed():
    # q = 32/67,000, T = 2,000: the Edgeworth-calibrated σ = 0.38 gives PLD ε 6.9 for the target 3
    fixes = r"design.calibrate_with=pld, or design.allow_understated_epsilon=true .*, or lower design.target_epsilon"
    with pytest.raises(ConfigError, match=r"design.target_epsilon=3 is understated: .* PLD epsilon 6.9.*" + fixes):
        plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=3.0), 32 / 67_000, 2_000)
    allowed = plan_dp_sgd(
        DesignConfig(name="ewtune", target_epsilon=3.0, allow_understated_epsilon=True), 32 / 67_000, 2_000
    )
    assert (
        allowed.epsilon_edgeworth == pytest.approx(3.0, abs=1e-3)
        and "Edgeworth epsilon 3.000 is 0.43 x the PLD epsilon 6.9" in allowed.edgeworth_warning()
    )
    assert allowed.to_dict()["epsilon"] == allowed.epsilon_pld > 6.8  # the guarantee is the bound, not the target
    # calibrated to the PLD bound instead: σ larger, PLD ε at most the target, Edgeworth's estimate beside it
    plan = plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=3.0, calibrate_with="pld"), 32 / 67_000, 2_000)
    assert plan.calibrated_with == "pld" and plan.noise_multiplier > allowed.noise_multiplier
    assert plan.epsilon_pld <= 3.0 and plan.epsilon_pld == pytest.approx(3.0, rel=1e-3)
    assert 0 < plan.epsilon_edgeworth < 3.0 and plan.epsilon_rdp >= plan.epsilon_pld
    # below the bound by more than 10 % even where σ meets it: the warning states the ratio, without the fix
    ratio = plan.epsilon_edgeworth / plan.epsilon_pld
    assert ratio < 0.9 and f"is {ratio:.2f} x the PLD epsilon" in plan.edgeworth_warning()
    assert "calibrate_with" not in plan.edgeworth_warning() and plan.to_dict()["edgeworth_to_pld"] == ratio
    d = plan.to_dict()
    assert d["epsilon"] == d["epsilon_pld"] and d["epsilon_edgeworth_estimate"] == d["epsilon_edgeworth"]
    assert d["guarantee"] == "(3, 1e-05)-DP (PLD bound, dp-accounting)" and "epsilon_rdp" in d


def test_calibration_outside_its_range_or_past_the_expansion_names_the_fix():
    with pytest.raises(
        ConfigError, match=r"design.target_epsilon=50 is met already at sigma = 0.3.*design.calibrate_with=pld"
    ):
        plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=50.0), 0.01, 100)
    # q·T = 0.1: the expansion breaks down below σ ≈ 0.62 and stays under ε 0.21 above it (PLD 11.04 at σ = 0.3)
    with pytest.raises(
        ConfigError, match=r"cannot be calibrated by the Edgeworth expansion.*q·T = 0.1 .*set design.calibrate_with=pld"
    ):
        plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=3.0), 0.001, 100)
    plan = plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=3.0, calibrate_with="pld"), 0.001, 100)
    assert plan.epsilon_pld == pytest.approx(3.0, rel=1e-3) and np.isnan(plan.epsilon_edgeworth)  # no estimate there
    spent = spent_epsilon(plan, 1)  # the per-step log records NaN, it does not stop the run
    assert np.isnan(spent["epsilon_edgeworth"]) and 0 < spent["epsilon_pld"] < plan.epsilon_pld


def test_an_unreachable_target_is_one_clear_error():
    with pytest.raises(
        ConfigError, match=r"design.target_epsilon=0.01 is unreachable .* design.max_noise_multiplier=2 .*raise"
    ):
        plan_dp_sgd(DesignConfig(name="ewtune", target_epsilon=0.01, max_noise_multiplier=2.0), 0.1, 500)


def test_poisson_batches_come_from_opacus_and_repeat_under_a_seed():
    a, b = poisson_batches(10_000, 100, 50, seed=3), poisson_batches(10_000, 100, 50, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    sizes = np.array([len(x) for x in a])
    assert len(set(sizes)) > 5 and abs(sizes.mean() - 100) < 10  # sizes vary around q·N
    assert not np.array_equal(a[0], poisson_batches(10_000, 100, 1, seed=4)[0])


@pytest.mark.parametrize(
    "override,match",
    [
        ("design.name=ew-tune", r"unknown design 'ew-tune'"),
        ("design.target_epsilon=-1", r"'design.target_epsilon'.*> 0"),
        ("design.clip_norm=0", r"'design.clip_norm'"),
        ("design.calibrate_with=rdp", r"'design.calibrate_with'.*edgeworth .* or pld"),
    ],
)
def test_bad_design_keys_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):  # the schema's checks, then the design registry's (check_config)
        check_config(load_config(BASELINE, [override]))


@pytest.mark.long  # a whole EW-Tune training; its accountant is checked by default in test_accounting
def test_ewtune_training_records_the_epsilon_spent_as_it_goes(tmp_path):
    # q = 0.1, T = 6: calibrated to the PLD bound (Edgeworth's σ would give PLD ε 12.1 for the target 8)
    cfg = load_config(
        BASELINE,
        [
            "design.name=ewtune",
            "design.target_epsilon=8",
            "design.calibrate_with=pld",
            "data.max_train_samples=320",
            "data.max_eval_samples=64",
            "train.max_steps=6",
            "train.log_every=2",
            "train.progress=false",
            "train.threads=2",
        ],
    )
    run = run_training(cfg, tmp_path / "run", log=quiet)
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    dp = summary["dp_sgd"]
    assert summary["design"] == "ewtune" and dp["steps"] == summary["steps"] == 6 and dp["calibrated_with"] == "pld"
    # the guarantee is the PLD ε, EW-Tune's Edgeworth ε beside it as an estimate
    assert dp["epsilon"] == dp["epsilon_pld"] <= 8.0 and dp["epsilon"] == pytest.approx(8.0, rel=1e-3)
    assert dp["guarantee"] == "(8, 1e-05)-DP (PLD bound, dp-accounting)"
    assert dp["epsilon_edgeworth_estimate"] == dp["epsilon_edgeworth"] < 8.0 and dp["sample_rate"] == pytest.approx(
        32 / 320
    )
    assert list(metrics["epsilon_pld"]) == sorted(metrics["epsilon_pld"])  # cumulative, never reset per round
    assert metrics["epsilon_pld"].iloc[-1] == pytest.approx(dp["spent"]["epsilon_pld"])
    # `account` plans the same schedule without tokenising: N from the rows, less the attacker's carve-out
    from privtune_ray.designs.dp_plan import devices_train_size, train_dp_plan

    assert devices_train_size(cfg) == 320
    plan = train_dp_plan(cfg, 320, cfg.train.max_steps)[2]
    assert plan.to_dict() == {k: v for k, v in dp.items() if k not in ("expected_batch_size", "spent")}
    carved = ["data.max_train_samples=320", "attack.enabled=true", "attack.aux_samples=50"]
    assert devices_train_size(load_config(BASELINE, carved)) == 270
    base = ["design.name=ewtune", "data.max_train_samples=320", "train.max_steps=6"]
    for overrides, match in (
        (["design.target_epsilon=0.01", "design.max_noise_multiplier=1"], "unreachable"),
        (["design.target_epsilon=8"], "understated"),
        (["design.delta=0.01"], r"design.delta=0.01 is at least 1/N = 0.0031. \(N = 320 .*e.g. 0.0001"),
        (["train.batch_size=400"], r"train.batch_size = 400 .* exceeds the 320 training samples"),
        (
            ["train.lora.enabled=true", "train.lora.target_modules=[query, qkv]"],
            r"train.lora.target_modules: \['qkv'\] name no linear layer .* choose from \[.*'query'",
        ),
    ):
        with pytest.raises(ConfigError, match=match):
            run_training(load_config(BASELINE, base + overrides), tmp_path / "bad", log=quiet)
        assert not (tmp_path / "bad").exists()


def test_a_dp_step_over_several_messages_equals_one_over_their_union(minilm, tokenizer):
    """σ = 0, C = ∞: clipped sums accumulated message by message (a simulation round) = the plain summed gradient."""
    split = split_model(copy.deepcopy(minilm), 2)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=8, seed=0), tokenizer, 64)
    client = SplitClient(split.bottom, Mechanism())
    parts = [client.encode(collate(dev, idx, tokenizer.pad_token_id)) for idx in (np.arange(3), np.arange(3, 8))]
    plan = DPPlan(0.1, 1, 0.0, 1e9, 1e-5, 1.0, 0.0, 0.0, 0.0)
    tops = [_no_dropout(copy.deepcopy(split.top)) for _ in range(2)]
    plain, dp = TopServer(tops[0], *_sgd(tops[0])), DPTopServer(tops[1], *_sgd(tops[1]), plan, expected_batch_size=8)
    for server in (plain, dp):
        for msg in parts:
            server.accumulate(msg)
        server.step(8)
    for a, b in zip(tops[0].parameters(), tops[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_uploads_packed_into_one_piece_take_the_dp_step_of_each_alone(minilm, tokenizer):
    """The cloud's packing of a round's uploads (``Design.packs_uploads``): messages of different lengths,
    concatenated and right-padded, give the same per-sample losses and (C = 1, σ = 0.5 from one seed) the same
    DP step as the messages accumulated one by one."""
    from privtune_ray.message import concat_messages

    split = split_model(copy.deepcopy(minilm), 2)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=9, seed=0), tokenizer, 64)
    client = SplitClient(split.bottom, Mechanism())
    order = np.argsort(dev.lengths)  # short messages and long ones: padding differs between them
    msgs = [client.encode(collate(dev, idx, tokenizer.pad_token_id)) for idx in np.array_split(order, 4)]
    assert len({m.hidden.shape[1] for m in msgs}) == 4
    packed = concat_messages(msgs)
    assert packed.batch_size == 9 and packed.hidden.shape[1] == max(m.hidden.shape[1] for m in msgs)
    plan = DPPlan(0.1, 1, 0.5, 1.0, 1e-5, 1.0, 0.0, 0.0, 0.0)
    tops, losses = [], []
    for pieces in (msgs, [packed]):
        top = _no_dropout(copy.deepcopy(split.top))
        server = DPTopServer(top, *_sgd(top), plan, expected_batch_size=9, seed=3)
        losses.append(torch.cat([server.accumulate_samples(m) for m in pieces]))
        server.step(9)
        tops.append(top)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(tops[0].parameters(), tops[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(a, c) for a, c in zip(tops[0].parameters(), split.top.parameters(), strict=True))


@pytest.mark.parametrize("trainable", ["lora", "bias"])
def test_a_logical_batch_in_physical_pieces_takes_the_dp_step_of_the_whole(minilm, tokenizer, trainable):
    """train.physical_batch_size: a Poisson batch of 8 sent as pieces of 3 (per-sample clipping to C = 1, noise
    σ = 0.5 from the same seed) steps the LoRA or BitFit top exactly as the batch sent whole."""
    from privtune_ray.config import LoraConfig
    from privtune_ray.drivers.train import physical_pieces, split_step
    from privtune_ray.runs import Totals
    from privtune_ray.training.server import adapt_top

    split = split_model(copy.deepcopy(minilm), 4)
    dev = tokenize_split(load_split("sst2", "dev", max_samples=8, seed=0), tokenizer, 64)
    client = SplitClient(split.bottom, Mechanism())
    train_cfg = TrainConfig(
        lora=LoraConfig(enabled=trainable == "lora"), trainable="all" if trainable == "lora" else "bias"
    )
    plan = DPPlan(0.1, 1, 0.5, 1.0, 1e-5, 1.0, 0.0, 0.0, 0.0)
    tops, steps = [], []
    for size in (None, 3):
        torch.manual_seed(0)  # LoRA's A is drawn at random
        top = adapt_top(_no_dropout(copy.deepcopy(split.top)), split.family, train_cfg)
        before = {n: p.detach().clone() for n, p in top.named_parameters() if p.requires_grad}
        server = DPTopServer(top, *_sgd(top), plan, expected_batch_size=8, seed=3)
        pieces = [collate(dev, idx, tokenizer.pad_token_id) for idx in physical_pieces(np.arange(8), size, dev.lengths)]
        split_step(client, server, pieces, Totals())
        tops.append(top)
        steps.append({n: p.detach() - before[n] for n, p in top.named_parameters() if p.requires_grad})
    assert len(physical_pieces(np.arange(8), 3)) == 3 and set(steps[0]) == set(steps[1])
    if trainable == "bias":  # BitFit: the blocks' biases and the whole head train, no block weight
        assert all(n.endswith(".bias") or n.startswith("head.") for n in steps[0]) and any(
            "blocks" in n for n in steps[0]
        )
    else:
        assert any("lora_A" in n for n in steps[0]) and not any("blocks" in n and "lora" not in n for n in steps[0])
    for name, step in steps[0].items():
        torch.testing.assert_close(steps[1][name], step, rtol=1e-4, atol=1e-6)
    assert any(step.abs().sum() > 0 for step in steps[0].values())


# Edgeworth's σ for the target 8 at q = 0.16, T = 4 gives PLD ε 11.36: these runs allow it (and log the warning)
SIM = [
    "data.max_train_samples=400",
    "data.max_eval_samples=64",
    "simulation.devices=20",
    "simulation.rounds=4",
    "simulation.devices_per_round=4",
    "simulation.local_batch_size=16",
    "train.progress=false",
    "design.name=ewtune",
    "design.target_epsilon=8",
    "simulation.partition=iid",
    "simulation.tiers=[{name: one, memory_mb: 4096}]",
    "design.allow_understated_epsilon=true",
    "train.physical_batch_size=40",  # the cloud packs a round's uploads into pieces of up to 40 samples
]
DEVICES = Path(__file__).parents[1] / "simulations" / "sst2_devices.yaml"


@pytest.mark.long  # a whole EW-Tune simulation; Poisson rounds are checked by default below
def test_ewtune_in_simulate_composes_epsilon_over_poisson_rounds(tmp_path):
    from privtune_ray.drivers.simulate import run_simulation

    lines = []
    run = run_simulation(load_config(DEVICES, SIM), out=tmp_path / "sim", log=lines.append)
    rounds, devices = pd.read_csv(run / "rounds.csv"), pd.read_csv(run / "devices.csv")
    # 4 steps at q = 0.16: the Edgeworth ε meets the target 8, the PLD bound does not, and the run says so
    summary = json.loads((run / "summary.json").read_text())
    dp = summary["dp_sgd"]
    ratio = f"{dp['epsilon_edgeworth'] / dp['epsilon_pld']:.2f}"
    expected = f"warning: the Edgeworth epsilon 8.000 is {ratio} x the PLD epsilon"
    assert any(expected in line for line in lines), lines[:3]
    assert dp["warning"].startswith("warning: the Edgeworth epsilon 8.000") and float(ratio) < 0.9
    # 400 samples on 20 devices, 4 × 16 expected per round: every sample joins a round with q = 64 / 400 = 0.16
    assert dp["sample_rate"] == pytest.approx(64 / 400) and dp["steps"] == 4
    assert dp["epsilon_edgeworth"] == pytest.approx(8.0, abs=1e-3)
    # cumulative: ε grows every round and ends at the plan's, the PLD beside the Edgeworth one
    for accountant in ("epsilon_edgeworth", "epsilon_pld", "epsilon_rdp"):
        assert rounds[accountant].is_monotonic_increasing and rounds[accountant].iloc[-1] == pytest.approx(
            dp[accountant]
        )
    plan = DPPlan(**{k: v for k, v in dp.items() if k in DPPlan.__dataclass_fields__})
    assert rounds["epsilon_pld"].tolist() == pytest.approx(
        [spent_epsilon(plan, r)["epsilon_pld"] for r in (1, 2, 3, 4)]
    )
    # Poisson rounds: the number of devices and of their samples varies
    assert rounds["selected"].nunique() > 1 or devices["samples"].nunique() > 1
    assert summary["design"] == "ewtune" and rounds["samples"].sum() == summary["train_samples"]


def test_poisson_rounds_repeat_under_a_seed_and_sample_at_rate_q():
    from privtune_ray.config import SimulationConfig
    from privtune_ray.simulation.population import Population

    sim = SimulationConfig(devices=50, devices_per_round=5, local_batch_size=4)
    parts = [np.arange(10 * i, 10 * i + 10) for i in range(50)]
    pops = [Population(sim, 3, np.zeros(50, np.int16), np.full(50, 2, np.int16), parts, poisson=True) for _ in range(2)]
    plans = [[p.plan(r) for r in range(400)] for p in pops]
    assert all([t.samples.tolist() for t in a.tasks] == [t.samples.tolist() for t in b.tasks] for a, b in zip(*plans))
    sent = np.concatenate([t.samples for plan in plans[0] for t in plan.tasks])
    # every sample independently: P(in a round) = 5 · 4 / 500 = 0.04, i.e. 16 of 400 rounds on average
    assert pops[0].dp_sample_rate() == pytest.approx(0.04)
    assert abs(len(sent) / (400 * 500) - 0.04) < 0.004
    assert pops[0].expected_batch_size() == pytest.approx(0.04 * 500)
    # releases count each sample's draws
    for plan in plans[0]:
        pops[0].commit(plan)
    counts = np.bincount(sent, minlength=500)
    assert [pops[0].releases(i) for i in range(3)] == [int(counts[10 * i : 10 * i + 10].max()) for i in range(3)]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["simulation.top_replicas=2"], "top_replicas=1"),
        (["simulation.deadline_s=5"], "deadline_s=null"),
        (["design.target_epsilon=0.01", "design.max_noise_multiplier=1"], "unreachable"),
        (["design.allow_understated_epsilon=false"], "understated.*PLD epsilon 11.3"),
    ],
)
def test_ewtune_in_simulate_refuses_what_breaks_its_account(overrides, match, tmp_path):
    from privtune_ray.drivers.simulate import run_simulation

    with pytest.raises(ConfigError, match=match):
        run_simulation(load_config(DEVICES, SIM + overrides), out=tmp_path / "never", log=quiet)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow  # three EW-Tune simulations; resume is checked in the default run by test_train
def test_an_interrupted_ewtune_simulation_resumes_with_the_same_noise(tmp_path):
    """The checkpoint keeps the DP noise generator: the resumed run's losses and ε rows equal an uninterrupted run's."""
    from privtune_ray.drivers.simulate import run_simulation

    cfg = SIM + ["simulation.checkpoint_every=2"]
    full = run_simulation(load_config(DEVICES, cfg), out=tmp_path / "full", log=quiet)

    def interrupt(coordinator, r):
        if r == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation(load_config(DEVICES, cfg), out=tmp_path / "cut", log=quiet, hooks={"training": interrupt})
    resumed = run_simulation(load_config(DEVICES, cfg), out=tmp_path / "cut", resume=True, log=quiet)
    a, b = pd.read_csv(resumed / "rounds.csv"), pd.read_csv(full / "rounds.csv")
    assert a["samples"].tolist() == b["samples"].tolist() and a["epsilon_pld"].tolist() == b["epsilon_pld"].tolist()
    assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), abs=1e-6)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (resumed, full))
    assert sa["dev_loss"] == pytest.approx(sb["dev_loss"], abs=1e-6)
