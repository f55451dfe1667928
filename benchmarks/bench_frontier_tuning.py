"""The frontier's tuning budget (issue 15, lever d): the best setting of the top's training per mechanism, over seeds.

Two sweeps: ``simulations/sst2_frontier_tuning.yaml`` tries the same settings (LoRA or full fine-tuning, lr) for
every mechanism at seed 0 (equal tuning budget); ``simulations/sst2_frontier_tuned.yaml`` runs each mechanism's best
at seeds 1 and 2. Per mechanism the result holds the tuning table, the best setting's dev accuracy over the 3 seeds
(mean ± std) and its ASR.

The ASR comes from the frontier's own points (``--asr-from``, ``benchmarks/results/frontier_head_mean.json``: the
same m, η, seeds, with the adaptive and static attack suites): what the cloud trains does not change what the
devices upload, so the attacks see the same messages. The tuning sweeps run the nearest-neighbour attack only, and
its ASR at each seed is checked against the frontier's (``knn_asr_matches``).

    python benchmarks/bench_frontier_tuning.py [--measure-only] [--out benchmarks/results/frontier_tuned.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

from analysis.tables import load_sweep as load_table  # noqa: E402
from privtune_ray.benchmarking import write_results  # noqa: E402
from privtune_ray.cli import main as cli  # noqa: E402

SETTING = ["train.lora.enabled", "train.lr"]
KNN = "eia_knn_l2:asr_top1"
PAPER_DROP = 3.33


def _label(row) -> str:
    return f"{'lora' if row['train.lora.enabled'] else 'full'} lr={row['train.lr']:g}"


def summarise(tuning: pd.DataFrame, seeds: pd.DataFrame, frontier: dict, frontier_knn: pd.DataFrame | None) -> dict:
    tuning = tuning.assign(setting=tuning.apply(_label, axis=1))
    seeds = seeds.assign(setting=seeds.apply(_label, axis=1)) if not seeds.empty else seeds
    out: dict = {"tuning": {}, "best": {}}
    for mechanism, part in tuning.groupby("mechanism", sort=False):
        out["tuning"][mechanism] = {row["setting"]: row["utility"] for _, row in part.iterrows()}
        best = part.loc[part["utility"].idxmax()]
        rows = pd.concat(
            [
                part[part["setting"] == best["setting"]],
                seeds[(seeds["mechanism"] == mechanism) & (seeds["setting"] == best["setting"])]
                if not seeds.empty
                else part.iloc[:0],
            ]
        )
        acc = rows.set_index("seed")["utility"].sort_index()
        knn = rows.set_index("seed")[KNN].sort_index()
        entry = {
            "setting": best["setting"],
            "seeds": len(acc),
            "utility_per_seed": acc.to_dict(),
            "utility_mean": float(acc.mean()),
            "utility_std": float(acc.std()) if len(acc) > 1 else None,
            "knn_asr_per_seed": knn.to_dict(),
        }
        reference = frontier.get(mechanism, {})
        entry["asr_from_frontier"] = {
            attacker: {
                "max_eia_asr": ref["max_eia_asr"],
                "max_eia_asr_std": ref["max_eia_asr_std"],
                "seeds": ref["seeds"],
            }
            for attacker, ref in reference.items()
        }
        if frontier_knn is not None:
            theirs = frontier_knn[frontier_knn["mechanism"] == mechanism].set_index("seed")[KNN]
            common = [s for s in knn.index if s in theirs.index]
            same = all(math.isclose(knn[s], theirs[s], abs_tol=1e-9) for s in common)
            entry["knn_asr_matches"] = same if common else None  # None: no seed to check against
            entry["knn_asr_checked_seeds"] = common
        out["best"][mechanism] = entry
        eta = best.get("mechanism.eta")
        label = ", ".join(x for x in (None if pd.isna(eta) else f"eta={eta:g}", best["setting"]) if x)
        out[mechanism] = {  # the layout (as frontier.json): per attacker model
            attacker: {
                "utility_mean": entry["utility_mean"],
                "utility_std": entry["utility_std"],
                "max_eia_asr": asr["max_eia_asr"],
                "max_eia_asr_std": asr["max_eia_asr_std"],
                "meets_bound": asr["max_eia_asr"] <= 0.10,
                "seeds": entry["seeds"],
                "setting": label,
            }
            for attacker, asr in entry["asr_from_frontier"].items()
        }
    best = out["best"]
    none, pt, dchi = (best.get(k, {}) for k in ("none", "privtune", "dchi"))
    if none and pt:
        spread = max(v for v in (pt.get("utility_std"), dchi.get("utility_std")) if v is not None) if dchi else None
        out["targets"] = {
            "privtune_utility": pt["utility_mean"],
            "privtune_max_eia_asr_adaptive": pt["asr_from_frontier"].get("adaptive", {}).get("max_eia_asr"),
            "undefended_utility": none["utility_mean"],
            "drop_points": 100 * (none["utility_mean"] - pt["utility_mean"]),
            "paper_drop_points": PAPER_DROP,
            "adaptive_target_80pct_met": pt["utility_mean"] >= 0.80,
            "privtune_minus_dchi_points": 100 * (pt["utility_mean"] - dchi["utility_mean"]) if dchi else None,
            "seeds_spread_points": None if spread is None else 100 * spread,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tuning-dir", default="runs/sst2-frontier-tuning")
    parser.add_argument("--seeds-dir", default="runs/sst2-frontier-tuned")
    parser.add_argument("--asr-from", default="benchmarks/results/frontier_head_mean.json")
    parser.add_argument("--measure-only", action="store_true", help="summarise the points already finished")
    parser.add_argument("--out", default="benchmarks/results/frontier_tuned.json")
    args = parser.parse_args()
    if not args.measure_only:
        for config, out in [
            ("simulations/sst2_frontier_tuning.yaml", args.tuning_dir),
            ("simulations/sst2_frontier_tuned.yaml", args.seeds_dir),
        ]:
            rc = cli(["sweep", config, "--out", out])
            if rc != 0:
                return rc
    if not (Path(args.tuning_dir) / "sweep.csv").is_file():
        print(
            f"bench_frontier_tuning: no sweep.csv in {args.tuning_dir}: run it first (drop --measure-only)",
            file=sys.stderr,
        )
        return 2
    frontier = json.loads(Path(args.asr_from).read_text())
    tuning = load_table(Path(args.tuning_dir))
    seeds_csv = Path(args.seeds_dir) / "sweep.csv"
    seeds = load_table(Path(args.seeds_dir)) if seeds_csv.is_file() else pd.DataFrame()
    frontier_dirs = [Path(d) for d in frontier.get("sweeps", []) if (Path(d) / "sweep.csv").is_file()]
    frontier_knn = pd.concat([load_table(d) for d in frontier_dirs], ignore_index=True) if frontier_dirs else None
    results = {
        "benchmark": "frontier_tuning",
        "sweeps": [args.tuning_dir, args.seeds_dir],
        "configs": ["simulations/sst2_frontier_tuning.yaml", "simulations/sst2_frontier_tuned.yaml"],
        "asr_from": args.asr_from,
        **summarise(
            tuning, seeds, {k: frontier[k] for k in ("none", "privtune", "dchi") if k in frontier}, frontier_knn
        ),
    }
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
