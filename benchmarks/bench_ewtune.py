"""EW-Tune that learns (issue 16): DP-SGD accuracy at PLD ε ≤ 3, in ``train`` and ``simulate``, and EW-Tune's own claim.

1. ``claim``: at the target ε and δ of the config, σ calibrated by the Edgeworth expansion (EW-Tune's), by RDP and by
   PLD (dp-accounting) for the recipe's schedules (``train``: q = batch_size / N, T = epochs / q; ``simulate``:
   q = devices_per_round × local_batch_size / N, T = rounds) and a grid of (q, epochs): how much less noise
   Edgeworth calibration gives (EW-Tune reports up to 5.6 % less than RDP) and the PLD ε its σ really spends.
2. ``train`` and ``simulate``: the config (``simulations/sst2_ewtune.yaml``) run for each seed, calibrated by each
   accountant of ``--arms`` (``pld``: the bound; ``edgeworth``: EW-Tune's σ, run with
   ``design.allow_understated_epsilon``, to show what its smaller σ buys in accuracy at the PLD ε it spends).
3. ``step_cost``: the top's seconds per expected logical batch, plain LoRA against DP-SGD LoRA and DP-SGD BitFit,
   side by side (``--step-repeats``, 0 skips it).

    python benchmarks/bench_ewtune.py [--seeds 0 1] [--only train simulate] [--arms pld edgeworth] [--claim-only]
        [--config simulations/sst2_ewtune.yaml] [--set key=value ...] [--runs-dir runs/ewtune]
        [--out benchmarks/results/ewtune.json]
    python benchmarks/bench_ewtune.py --merge PART.json [PART.json ...] [--out benchmarks/results/ewtune.json]

``--merge`` combines results measured in parts (one seed per stop or machine): every run of each kind and arm, one
per seed, re-aggregated, with each part's git revision and time under ``merged_from``.

Runs are resumable: a finished run (its summary.json) is read, an interrupted one resumes from its checkpoint.
The file holds, for ``train`` and ``simulate``, ``accuracy_mean``, ``accuracy_std``, ``pld_epsilon``,
``edgeworth_epsilon``, ``delta`` and ``setting`` (the ``pld`` arm), every run, and the targets measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

from privtune_ray.accounting import (  # noqa: E402
    SigmaOutOfRange,
    calibrate_sigma,
    calibrate_sigma_pld,
    calibrate_sigma_rdp,
    pld_epsilon,
)
from privtune_ray.benchmarking import write_results  # noqa: E402
from privtune_ray.config import load_config  # noqa: E402
from privtune_ray.designs.dp_plan import devices_train_size  # noqa: E402

TARGETS = {"train": 0.83, "simulate": 0.80}  # SST-2 dev accuracy at PLD ε ≤ 3 (the targets)
GRID_Q = (0.004, 0.016, 0.06)
GRID_EPOCHS = (1, 3, 10)


def calibrations(target: float, delta: float, q: float, steps: int) -> dict:
    """σ by each accountant for ``target`` at (q, T); Edgeworth's saving against RDP and PLD; the PLD ε it spends."""
    row: dict = {"q": q, "steps": steps, "q_times_steps": q * steps}
    row["sigma_rdp"] = calibrate_sigma_rdp(target, delta, q, steps)
    row["sigma_pld"] = calibrate_sigma_pld(target, delta, q, steps)
    try:
        sigma = calibrate_sigma(target, delta, q, steps)
    except SigmaOutOfRange as exc:  # the expansion breaks down at this schedule: it calibrates nothing
        row.update(sigma_edgeworth=None, edgeworth_breaks_down=str(exc))
        return row
    row.update(
        sigma_edgeworth=sigma,
        less_noise_than_rdp=1 - sigma / row["sigma_rdp"],
        less_noise_than_pld=1 - sigma / row["sigma_pld"],
        pld_epsilon_of_edgeworth_sigma=pld_epsilon(delta, q, sigma, steps),
    )
    return row


def claim(cfg, n_train: int, n_simulate: int) -> dict:
    target, delta = cfg.design.target_epsilon, cfg.design.delta
    q_train = cfg.train.batch_size / n_train
    q_sim = cfg.simulation.devices_per_round * cfg.simulation.local_batch_size / n_simulate
    schedules = {
        "train": calibrations(target, delta, q_train, cfg.train.epochs * max(1, round(1 / q_train))),
        "simulate": calibrations(target, delta, q_sim, cfg.simulation.rounds),
    }
    grid = [calibrations(target, delta, q, e * round(1 / q)) for q in GRID_Q for e in GRID_EPOCHS]
    savings = [r["less_noise_than_rdp"] for r in grid if r["sigma_edgeworth"] is not None]
    return {
        "target_epsilon": target,
        "delta": delta,
        "schedules": schedules,
        "grid": grid,
        "edgeworth_less_noise_than_rdp_max": max(savings) if savings else None,
        "paper_less_noise_than_rdp_max": 0.056,
    }


def step_cost(cfg, repeats: int) -> dict:
    """Seconds of the top's work on one expected logical batch (``train.batch_size`` SST-2 samples in pieces of
    ``train.physical_batch_size``, sorted by length), side by side in one process: a plain step and a DP-SGD step
    (per-sample gradients, clipping, noise) of the LoRA top, and a DP-SGD step of the BitFit top. The bottom's
    forward is done once beforehand (the same messages for every variant)."""
    import copy

    import torch

    from privtune_ray.benchmarking import interleaved_timings, ratio_to
    from privtune_ray.config import LoraConfig, TrainConfig
    from privtune_ray.data.batching import collate
    from privtune_ray.designs.dp_plan import DPPlan
    from privtune_ray.designs.ewtune import DPTopServer
    from privtune_ray.drivers.train import load_task_data, physical_pieces, train_spec
    from privtune_ray.mechanisms.base import Mechanism
    from privtune_ray.models import load_split_model
    from privtune_ray.models.loading import load_tokenizer
    from privtune_ray.training.client import SplitClient
    from privtune_ray.training.server import TopServer, adapt_top, build_optimizer

    tokenizer = load_tokenizer(cfg.model.name)
    train_split, _ = load_task_data(cfg, tokenizer, train_spec(cfg))
    split = load_split_model(cfg.model.name, cfg.model.split_depth, num_labels=2)
    idx = np.random.default_rng(0).choice(len(train_split), cfg.train.batch_size, replace=False)
    pieces = physical_pieces(idx, cfg.train.physical_batch_size, train_split.lengths)
    client = SplitClient(split.bottom, Mechanism())
    messages = [client.encode(collate(train_split, p, tokenizer.pad_token_id)) for p in pieces]
    plan = DPPlan(0.015, 1, 0.75, cfg.design.clip_norm, cfg.design.delta, 3.0, 0.0, 0.0, 0.0)

    def server(trainable: str, dp: bool):
        train = TrainConfig(
            lr=cfg.train.lr,
            lora=LoraConfig(enabled=trainable == "lora"),
            trainable="bias" if trainable == "bias" else "all",
        )
        top = adapt_top(copy.deepcopy(split.top), split.family, train)
        optimizer, scheduler = build_optimizer(top, train, 1000)
        if dp:
            return DPTopServer(top, optimizer, scheduler, plan, expected_batch_size=cfg.train.batch_size)
        return TopServer(top, optimizer, scheduler)

    servers = {"lora": server("lora", False), "lora_dp": server("lora", True), "bitfit_dp": server("bias", True)}

    def one_step(s):
        def run() -> None:
            for msg in messages:
                s.accumulate(msg)
            s.step(len(idx))

        return run

    times = interleaved_timings({name: one_step(s) for name, s in servers.items()}, repeats)
    return {
        "samples": len(idx),
        "pieces": len(pieces),
        "tokens": int(sum(int(m.attention_mask.sum()) for m in messages)),
        "padded_tokens": int(sum(m.attention_mask.numel() for m in messages)),
        "threads": torch.get_num_threads(),
        **{name: ratio_to(times, name, "lora") for name in servers},
    }


def run_one(kind: str, cfg, out: Path) -> dict:
    """One ``train`` or ``simulate`` run into ``out`` (read if finished, resumed if interrupted); its record."""
    summary_path = out / "summary.json"
    if not summary_path.exists():
        if kind == "train":
            from privtune_ray.drivers.train import run_training as run
        else:
            from privtune_ray.drivers.simulate import run_simulation as run
        run(cfg, out, resume=(out / "config.yaml").exists(), log=print)
    summary = json.loads(summary_path.read_text())
    dp = summary["dp_sgd"]
    return {
        "seed": cfg.seed,
        "accuracy": summary["utility"],
        "pld_epsilon": dp["epsilon_pld"],
        "edgeworth_epsilon": dp["epsilon_edgeworth"],
        "noise_multiplier": dp["noise_multiplier"],
        "calibrated_with": dp["calibrated_with"],
        "sample_rate": dp["sample_rate"],
        "steps": dp["steps"],
        "expected_batch_size": dp.get("expected_batch_size"),
        "run": str(out),
    }


def aggregate(runs: list[dict], delta: float, setting: str) -> dict:
    acc = np.array([r["accuracy"] for r in runs])
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
        "seeds": len(runs),
        "pld_epsilon": max(r["pld_epsilon"] for r in runs),
        "edgeworth_epsilon": max(r["edgeworth_epsilon"] for r in runs),
        "delta": delta,
        "noise_multiplier": runs[0]["noise_multiplier"],
        "setting": setting,
        "runs": runs,
    }


def setting_of(cfg, kind: str) -> str:
    t = cfg.train
    top = f"LoRA r={t.lora.r}" if t.lora.enabled else ("BitFit" if t.trainable == "bias" else "full top")
    common = f"m={cfg.model.split_depth}, {top}, lr={t.lr:g}, C={cfg.design.clip_norm:g}, sigma by {cfg.design.calibrate_with}"
    if kind == "train":
        return f"{common}, expected batch {t.batch_size}, {t.epochs} epochs"
    sim = cfg.simulation
    return (
        f"{common}, {sim.devices} devices, {sim.devices_per_round} x {sim.local_batch_size} expected per round, "
        f"{sim.rounds} rounds"
    )


def merge(paths: list[str]) -> dict:
    """One result from files measured in parts (stops, machines): ``claim`` and ``step_cost`` from the first file that
    has them, each kind's runs per arm from every file (one run per seed; one setting per kind and arm), re-aggregated;
    ``merged_from`` records each file's git revision and time."""
    from privtune_ray.errors import ConfigError

    parts = [(path, json.loads(Path(path).read_text())) for path in paths]
    results: dict = {"benchmark": "ewtune", "merged_from": [], "seeds": []}
    runs: dict = {}  # (kind, arm) -> {seed: run}
    settings: dict = {}  # (kind, arm) -> (setting, delta)
    for path, part in parts:
        results["merged_from"].append(
            {"file": path, "git": part.get("git"), "measured_at": part.get("measured_at"), "seeds": part.get("seeds")}
        )
        for key in ("config", "overrides", "claim", "step_cost"):
            if key in part and key not in results:
                results[key] = part[key]
        for kind in TARGETS:
            for arm, record in (part.get(kind) or {}).get("arms", {}).items():
                known = settings.setdefault((kind, arm), (record["setting"], record["delta"]))
                if known != (record["setting"], record["delta"]):
                    raise ConfigError(f"{path}: {kind} {arm} ran {record['setting']!r}, another part {known[0]!r}")
                for run in record["runs"]:
                    if run["seed"] in runs.setdefault((kind, arm), {}):
                        raise ConfigError(f"{path}: {kind} {arm} seed {run['seed']} is in two parts: merge one")
                    runs[(kind, arm)][run["seed"]] = run
    for kind in TARGETS:
        arms = {}
        for (k, arm), by_seed in runs.items():
            if k == kind:
                setting, delta = settings[(kind, arm)]
                arms[arm] = aggregate([by_seed[s] for s in sorted(by_seed)], delta, setting)
        if arms:
            results[kind] = summarise_kind(kind, arms)
            results["seeds"] = sorted(set(results["seeds"]) | {r["seed"] for r in arms[next(iter(arms))]["runs"]})
    results["complete"] = complete(results)
    return results


def complete(results: dict) -> bool:
    """Every kind of the issue (``train``, ``simulate``) measured on at least 2 seeds."""
    return all(kind in results and results[kind]["seeds"] >= 2 for kind in TARGETS)


def summarise_kind(kind: str, arms: dict) -> dict:
    """A kind's record: the ``pld`` arm's numbers (the bound) on top, every arm, the target checked."""
    main_arm = arms.get("pld") or next(iter(arms.values()))
    return {
        **{k: v for k, v in main_arm.items() if k != "runs"},
        "arms": arms,
        "target_accuracy": TARGETS[kind],
        "target_met": main_arm["accuracy_mean"] >= TARGETS[kind] and main_arm["pld_epsilon"] <= 3.0 * 1.001,
    }


def main(argv=None) -> int:
    from privtune_ray.checks import check_config
    from privtune_ray.designs.dp_plan import check_dp_dataset
    from privtune_ray.designs.params import EWTuneParams
    from privtune_ray.errors import PrivtuneError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "simulations" / "sst2_ewtune.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", choices=["train", "simulate"], default=["train", "simulate"])
    parser.add_argument("--arms", nargs="+", choices=["pld", "edgeworth"], default=["pld"])
    parser.add_argument("--claim-only", action="store_true", help="only the accountants' calibration (no training)")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed DP steps per variant (0: skip)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--runs-dir", default="runs/ewtune")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ewtune.json"))
    parser.add_argument(
        "--merge", nargs="+", metavar="FILE", help="combine result files measured in parts into --out (runs nothing)"
    )
    args = parser.parse_args(argv)
    if args.merge:
        try:
            results = merge(args.merge)
        except (OSError, ValueError, KeyError) as exc:
            print(f"bench_ewtune: error: cannot merge {args.merge}: {exc}", file=sys.stderr)
            return 2
        write_results(args.out, results)
        return 0
    try:
        base = load_config(args.config, args.set)
        configs = {}
        for kind in args.only:
            for arm in args.arms:
                for seed in args.seeds:
                    extra = [f"seed={seed}", f"design.calibrate_with={arm}"]
                    extra += ["design.allow_understated_epsilon=true"] if arm == "edgeworth" else []
                    cfg = load_config(args.config, args.set + extra)
                    check_config(cfg)
                    configs[(kind, arm, seed)] = cfg
        n = devices_train_size(base)
        check_dp_dataset(EWTuneParams.of(base.design), n, base.train.batch_size, "train.batch_size")  # δ < 1/N, q ≤ 1
        calibrated = claim(base, n, n)
    except PrivtuneError as exc:
        print(f"bench_ewtune: error: {exc}", file=sys.stderr)
        return 2
    results: dict = {
        "benchmark": "ewtune",
        "config": os.path.relpath(args.config),
        "overrides": args.set,
        "seeds": args.seeds,
    }
    results["claim"] = calibrated
    if args.step_repeats:
        results["step_cost"] = step_cost(base, args.step_repeats)
    if not args.claim_only:
        for kind in args.only:
            arms = {}
            for arm in args.arms:
                runs = [
                    run_one(kind, configs[(kind, arm, s)], Path(args.runs_dir) / f"{kind}-{arm}-seed{s}")
                    for s in args.seeds
                ]
                first = configs[(kind, arm, args.seeds[0])]
                arms[arm] = aggregate(runs, first.design.delta, setting_of(first, kind))
            results[kind] = summarise_kind(kind, arms)
    results["complete"] = complete(results)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
