"""The privacy–utility frontier (issue 15): run (or resume) the frontier sweep, then write its targets.

For each mechanism (``privtune``, ``dchi``) and attacker model (``adaptive``, ``static``): the setting of best mean
SST-2 dev accuracy over seeds whose mean max EIA ASR top-1 is at most 10 %, with the seeds' std, beside the
undefended ``none``; the targets of the issue are checked against them and written as measured, met or not.

    python benchmarks/bench_frontier.py [--sweep-dir runs/sst2-frontier ...] [--config simulations/sst2_frontier.yaml]
        [--set key=value ...] [--measure-only] [--out benchmarks/results/frontier.json]

The sweep is resumable: rerunning the command runs only the points not yet finished (``--measure-only`` runs
none and summarises what is there).
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
sys.path.insert(0, str(Path(__file__).parents[1]))  # the analysis package beside privtune_ray

from analysis.seeds import frontier_over_seeds, over_seeds  # noqa: E402
from analysis.tables import load_sweep as load_table  # noqa: E402
from privtune_ray.benchmarking import write_results  # noqa: E402
from privtune_ray.cli import main as cli  # noqa: E402

BOUND = 0.10
PAPER_DROP = 3.33  # points: PrivTune's reported utility drop at 10 % ASR (RoBERTa, SST)


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def sweep_base(sweep_dir: Path) -> dict:
    """What a sweep's base config holds that its points' settings do not name: the split depth, the top's training
    (steps, lr, LoRA, head pooling) and the attacks (from its ``sweep.json``; empty where there is none)."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return {}
    base = json.loads(path.read_text())["base"]
    model, train, attack = base.get("model", {}), base.get("train", {}), base.get("attack", {})
    return {
        "model.split_depth": model.get("split_depth"),
        **{f"train.{k}": train[k] for k in ("max_steps", "lr", "head_pooling", "lora") if k in train},
        "attack.names": attack.get("names"),
    }


def summarise(sweep_dirs: list[Path]) -> dict:
    """The frontier over the points of one or more sweep directories (e.g. one per split depth)."""
    table = pd.concat([load_table(d) for d in sweep_dirs], ignore_index=True)
    best = frontier_over_seeds(table, BOUND)
    out: dict = {}
    for mechanism, part in best.groupby("mechanism"):
        out[mechanism] = {
            row["attacker"]: {
                "utility_mean": _clean(row["utility_mean"]),
                "utility_std": _clean(row["utility_std"]),
                "max_eia_asr": _clean(row["max_eia_asr"]),
                "max_eia_asr_std": _clean(row["max_eia_asr_std"]),
                "meets_bound": bool(row["meets_bound"]),
                "seeds": int(row["seeds"]),
                "setting": row["setting"],
            }
            for _, row in part.iterrows()
        }
    reference = out.get("none", {})
    undefended = next(iter(reference.values()), {}).get("utility_mean")
    targets = {}
    for attacker, pt in out.get("privtune", {}).items():
        dchi = out.get("dchi", {}).get(attacker, {})
        stds = [x.get("utility_std") for x in (pt, dchi)]
        spread = None if any(v is None for v in stds) else max(stds)  # unmeasured with one seed
        targets[attacker] = {
            "privtune_utility_at_10pct": pt["utility_mean"] if pt["meets_bound"] else None,
            "adaptive_target_80pct_met": attacker == "adaptive" and pt["meets_bound"] and pt["utility_mean"] >= 0.80,
            "drop_points": None if undefended is None else 100 * (undefended - pt["utility_mean"]),
            "paper_drop_points": PAPER_DROP,
            "privtune_minus_dchi_points": (
                100 * (pt["utility_mean"] - dchi["utility_mean"]) if dchi and pt["meets_bound"] else None
            ),
            "seeds_spread_points": None if spread is None else 100 * spread,
            "privtune_beats_dchi_beyond_spread": (
                None
                if spread is None or not (dchi and pt["meets_bound"])
                else bool(pt["utility_mean"] - dchi["utility_mean"] > spread)
            ),
        }
    settings = over_seeds(table)
    fewest = int(settings["seeds"].min()) if not settings.empty else 0
    return {
        "min_seeds_per_setting": fewest,
        "complete": fewest >= 3,  # the protocol: at least 3 seeds for every setting
        **out,
        "undefended_utility": undefended,
        "targets": targets,
        "bound": BOUND,
        "settings": [{k: _clean(v) for k, v in r.items()} for r in settings.to_dict("records")],
        "points": len(table),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="simulations/sst2_frontier.yaml")
    parser.add_argument(
        "--sweep-dir",
        action="append",
        help="a sweep directory (repeatable: the frontier over several, e.g. one per split depth; "
        "default runs/sst2-frontier)",
    )
    parser.add_argument("--set", action="append", default=[], help="key=value for the sweep's base config")
    parser.add_argument("--measure-only", action="store_true", help="summarise the points already finished")
    parser.add_argument("--out", default="benchmarks/results/frontier.json")
    args = parser.parse_args()
    dirs = args.sweep_dir or ["runs/sst2-frontier"]
    missing = [d for d in dirs if not (Path(d) / "sweep.csv").is_file()]
    if args.measure_only and missing:
        print(
            f"bench_frontier: no sweep.csv in {', '.join(missing)}: run the sweep first (drop --measure-only)",
            file=sys.stderr,
        )
        return 2
    if not args.measure_only:
        if len(dirs) > 1:
            parser.error("several --sweep-dir are summarised, not run: add --measure-only, or run one at a time")
        rc = cli(["sweep", args.config, "--out", dirs[0], *sum((["--set", s] for s in args.set), [])])
        if rc != 0:
            return rc
    results = {
        "benchmark": "frontier",
        "sweeps": dirs,
        "config": args.config,
        "base": {d: sweep_base(Path(d)) for d in dirs},
        **summarise([Path(d) for d in dirs]),
    }
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
