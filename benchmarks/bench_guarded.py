"""GuardedTuning that guards (issue 17): the defence sweep, summarised per design into ``guarded.json``.

The sweep is ``simulations/sst2_guarded_defences.yaml`` (resumable; 2 seeds): per design, one factor at a time, the
dCor weight α, the bits of every cut, the adapter depth a, 4× the rounds and online's label defence, beside
undefended split learning at the same budget. Per setting (over seeds): utility (SST-2 dev accuracy), the max
EIA ASR on A1 over every inversion attack (nearest-neighbour, learned, optimisation), the attribute probes' max
advantage, each attack's own number (``by_attack``), gradient matching's label accuracy and the majority class's
(online), bytes per sample over every channel, and the label-DP ε where the label defence is on. Per design, ``best`` is the setting of smallest
utility loss whose max EIA ASR on A1 is at most 50 % (offline sends nothing per sample: no ASR): the loss against
undefended split learning at the same budget (rounds), the issue's targets checked against it; a setting whose rounds
split learning did not run at comes after every measured one (then by utility), its drop left ``None``.

    python benchmarks/bench_guarded.py [--sweep runs/sst2-guarded-defences] [--measure-only]
        [--out benchmarks/results/guarded.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

from analysis.tables import aia_columns, eia_columns, load_sweep, override_columns  # noqa: E402
from privtune_ray.benchmarking import write_results  # noqa: E402

CONFIG = "simulations/sst2_guarded_defences.yaml"
ASR_BOUND = 0.50  # max EIA ASR on A1 (the bound for online, offline and gradfree)
UTILITY_DROP = 0.03  # online: at most 3 points below undefended split learning
LABEL_MARGIN = 0.10  # gradient matching at most 10 points above the majority class ...
LABEL_COST = 0.02  # ... at at most 2 points of utility


def _setting(row: pd.Series, keys: list[str]) -> str:
    """The point's overrides other than the design and the seed, e.g. ``dcor_weight=2, bits=8`` (``default``)."""
    parts = []
    for key in keys:
        value = row.get(key)
        if key in ("seed", "design.name", "mechanism.name") or value is None or pd.isna(value):
            continue
        parts.append(f"{key.split('.')[-1]}={value:g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}")
    return ", ".join(parts) or "default"


def _point_extras(run_dir: str) -> dict:
    """What the sweep row does not carry: gradient matching's accuracy and majority, the label-DP ε."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    gm = (summary.get("attacks") or {}).get("gm_label") or {}
    label_dp = (summary.get("guarded") or {}).get("label_dp") or {}
    return {
        "label_attack_acc": gm.get("accuracy"),
        "majority": gm.get("majority_accuracy"),
        "label_dp_epsilon": label_dp.get("epsilon"),
    }


def _mean_std(values: pd.Series) -> tuple[float | None, float | None]:
    values = values.dropna()
    if values.empty:
        return None, None
    return float(values.mean()), float(values.std()) if len(values) > 1 else None


def _loss(record: dict, references: dict) -> float | None:
    """The utility lost against undefended split learning at the record's own rounds; None where that did not run."""
    ref = references.get(record["rounds"])
    return None if ref is None else ref["utility_mean"] - record["utility_mean"]


def _rank(record: dict, references: dict) -> tuple[bool, float, float]:
    """Sort key: the loss (``_loss``), then the utility (higher first); an unmeasured loss after every measured one."""
    loss = _loss(record, references)
    return loss is None, loss or 0.0, -record["utility_mean"]


def summarise(table: pd.DataFrame) -> dict:
    """Per design and setting the mean and spread over seeds; per design the best setting under the ASR bound."""
    keys = override_columns(table)
    eia = eia_columns(table)
    table = table.assign(
        design=table["design.name"] if "design.name" in table else "split",
        setting=table.apply(lambda r: _setting(r, keys), axis=1),
        max_eia_asr_a1=table[eia].max(axis=1) if eia else float("nan"),
        bytes_per_sample=table[[c for c in table.columns if c.startswith("bytes_per_sample:")]].sum(axis=1),
    )
    extras = pd.DataFrame([_point_extras(d) for d in table["run_dir"]], index=table.index)
    table = pd.concat([table, extras], axis=1)
    designs: dict = {}
    for (design, setting), part in table.groupby(["design", "setting"], sort=False):
        utility, utility_std = _mean_std(part["utility"])
        asr, asr_std = _mean_std(part["max_eia_asr_a1"])
        rounds = part["simulation.rounds"].dropna() if "simulation.rounds" in part else pd.Series([], dtype=float)
        designs.setdefault(design, {})[setting] = {
            "rounds": int(rounds.iloc[0]) if len(rounds) else None,  # None: the config's own (the common budget)
            "utility_mean": utility,
            "utility_std": utility_std,
            "max_eia_asr_a1": asr,
            "max_eia_asr_a1_std": asr_std,
            "max_aia_advantage": _mean_std(part["max_aia_advantage"])[0] if "max_aia_advantage" in part else None,
            "by_attack": {  # each attack on A1, mean over seeds: inversion ASR top-1, attribute advantage
                c: _mean_std(part[c])[0] for c in eia + aia_columns(table) if part[c].notna().any()
            },
            "label_attack_acc": _mean_std(part["label_attack_acc"])[0],
            "majority": _mean_std(part["majority"])[0],
            "label_dp_epsilon": _mean_std(part["label_dp_epsilon"])[0],
            "bytes_per_sample": _mean_std(part["bytes_per_sample"])[0],
            "seeds": sorted(int(s) for s in part["seed"]),
            "per_seed": {
                int(r["seed"]): {"utility": r["utility"], "max_eia_asr_a1": r["max_eia_asr_a1"]}
                for _, r in part.iterrows()
            },
        }
    out: dict = {"settings": designs, "asr_bound": ASR_BOUND}
    # undefended split learning at each budget (rounds) it ran: a setting is compared only with the one at its own
    references = {r["rounds"]: r for r in designs.get("split", {}).values()}
    reference = references.get(None)
    for design, settings in designs.items():
        if design == "split":
            continue
        ok = {
            s: r
            for s, r in settings.items()
            if r["utility_mean"] is not None and (r["max_eia_asr_a1"] is None or r["max_eia_asr_a1"] <= ASR_BOUND)
        }
        best_setting = min(ok, key=lambda s: _rank(ok[s], references)) if ok else None
        best = ok[best_setting] if best_setting else None
        frontier = sorted(
            ((s, r["utility_mean"], r["max_eia_asr_a1"]) for s, r in settings.items() if r["utility_mean"] is not None),
            key=lambda t: -t[1],
        )
        out[design] = {  # the layout
            **{
                k: (best or {}).get(k)
                for k in ("utility_mean", "utility_std", "label_attack_acc", "majority", "bytes_per_sample")
            },
            "max_eia_asr_a1": (best or {}).get("max_eia_asr_a1"),
            "setting": best_setting,
            "meets_asr_bound": best is not None,
            "frontier": [{"setting": s, "utility_mean": u, "max_eia_asr_a1": a} for s, u, a in frontier],
        }
        drop = None if best is None else _loss(best, references)
        if drop is not None:
            out[design]["utility_drop_vs_split_points"] = 100 * drop
            if design == "online":
                out[design]["target_met"] = drop <= UTILITY_DROP
        elif best is not None:  # no split learning at that budget: the drop is not measured, not guessed
            out[design]["utility_drop_vs_split_points"] = None
            out[design]["no_split_reference_at_rounds"] = best["rounds"]
            if design == "online":
                out[design]["target_met"] = None
    online = designs.get("online", {})
    defended = {s: r for s, r in online.items() if r["label_dp_epsilon"] is not None}
    if defended:
        rows = []
        for setting, r in defended.items():
            base = online.get(", ".join(p for p in setting.split(", ") if not p.startswith("grad_up_")) or "default")
            cost = None if base is None else base["utility_mean"] - r["utility_mean"]
            rows.append(
                {
                    "setting": setting,
                    "label_attack_acc": r["label_attack_acc"],
                    "majority": r["majority"],
                    "label_dp_epsilon": r["label_dp_epsilon"],
                    "utility_cost_points": None if cost is None else 100 * cost,
                    "target_met": (
                        r["label_attack_acc"] is not None
                        and r["label_attack_acc"] - r["majority"] <= LABEL_MARGIN
                        and cost is not None
                        and cost <= LABEL_COST
                    ),
                }
            )
        out["online_label_defence"] = rows
    if reference is not None:
        out["split"] = {k: reference[k] for k in ("utility_mean", "utility_std", "bytes_per_sample")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", default="runs/sst2-guarded-defences")
    parser.add_argument("--measure-only", action="store_true", help="summarise the points already finished")
    parser.add_argument("--out", default="benchmarks/results/guarded.json")
    args = parser.parse_args()
    if not args.measure_only:
        from privtune_ray.cli import main as cli

        rc = cli(["sweep", CONFIG, "--out", args.sweep])
        if rc != 0:
            return rc
    if not (Path(args.sweep) / "sweep.csv").is_file():
        print(
            f"bench_guarded: no sweep.csv in {args.sweep}: run the sweep first (drop --measure-only)", file=sys.stderr
        )
        return 2
    table = load_sweep(args.sweep)
    planned = len(json.loads((Path(args.sweep) / "sweep.json").read_text())["points"])
    results = {"benchmark": "guarded", "config": CONFIG, "sweep": args.sweep, "points": len(table), "planned": planned}
    results.update(summarise(table))
    results["complete"] = len(table) == planned and all(  # every planned point ran, each setting on >= 2 seeds
        len(r["seeds"]) >= 2 for s in results["settings"].values() for r in s.values()
    )
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
