"""GuardedTuning on its worst channel: online alpha = 32 and offline alpha = 0.5, each a `privtune-ray simulate` of the
sweep's setting (``simulations/sst2_guarded_defences.yaml``: 100 devices, 120 rounds of 8 x 16, m = 2, its attacker:
1,000 public sentences, 2 epochs), scored on every channel that leaves a device: the uploads A1 (top-1 ASR of the
inversion attacks, per tier) and the adapter update ∇A_b of one local batch (``eia_update``'s token recall, the share
of the batch's distinct tokens in the recovered bag; a bag-of-words score, easier than positional top-1).

    python benchmarks/bench_guarded_channels.py [--seeds 0 1] [--runs runs/guarded-channels] [--collect]
        [--out benchmarks/results/guarded_channels.json]

``--collect`` summarises the runs already under ``--runs`` without running any.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1]))

from privtune_ray.benchmarking import write_results  # noqa: E402

CONFIG = "simulations/sst2_guarded_defences.yaml"
SETTINGS = {"online": 32.0, "offline": 0.5}  # the design's dCor weight alpha: online's under guarded.json's bound
# The sweep's attacker carves 1,000 public sentences out of SST-2's training split, and 902 of them lie inside a
# device's phrase (dropped: the victims' own text): 98 would be left. SST-2's unlabelled test split is added as public
# text, so the uploads' attacks fit on about 1,900 sentences (attack_setup in each summary says how many).
PUBLIC_TEXT = ["attack.aux_corpora=[sst2:test]"]


def run_key(design: str, seed: int) -> str:
    return f"{design}-dcor{SETTINGS[design]}-seed{seed}"


def measure(runs: Path, design: str, seed: int, threads: int | None) -> None:
    out = runs / run_key(design, seed)
    sets = [f"design.name={design}", f"design.dcor_weight={SETTINGS[design]}", f"seed={seed}", *PUBLIC_TEXT]
    sets += [f"train.threads={threads}"] if threads else []
    cmd = [sys.executable, "-m", "privtune_ray.cli", "simulate", CONFIG, "--out", str(out)]
    subprocess.run(cmd + [a for s in sets for a in ("--set", s)], check=True)


def point(summary: dict) -> dict:
    """One run's channels: the uploads' best top-1 ASR (worst tier), the update attack's recall, the label attack."""
    attacks = summary.get("attacks") or {}
    update = attacks.get("eia_update") or {}
    return {
        "utility": summary["utility"],
        "uploads_max_eia_asr_top1": summary.get("max_eia_asr_top1"),
        "uploads_by_tier": summary.get("attack_by_depth"),
        "update_token_recall": update.get("token_recall"),
        "update_chance_recall": update.get("chance_recall"),
        "update_bag_precision": update.get("bag_precision"),
        "label_attack_acc": (attacks.get("gm_label") or {}).get("accuracy"),
        "max_token_recovery": summary.get("max_token_recovery"),
        "worst_channel": summary.get("worst_channel"),
        "aux_sentences": (summary.get("attack_setup") or {}).get("aux_sentences"),
    }


def mean_std(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarise(runs: Path, seeds: list[int]) -> dict:
    designs = {}
    for design in SETTINGS:
        per_seed = {}
        for seed in seeds:
            path = runs / run_key(design, seed) / "summary.json"
            if path.is_file():
                per_seed[seed] = point(json.loads(path.read_text()))
        keys = ("utility", "uploads_max_eia_asr_top1", "update_token_recall", "max_token_recovery")
        designs[f"{design} (dcor_weight={SETTINGS[design]:g})"] = {
            "seeds": per_seed,
            **{k: mean_std([p[k] for p in per_seed.values()]) for k in keys},
        }
    return {"config": CONFIG, "overrides": PUBLIC_TEXT, "runs": str(runs), "designs": designs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", default="runs/guarded-channels")
    parser.add_argument("--threads", type=int, help="torch threads per simulation (train.threads)")
    parser.add_argument("--collect", action="store_true", help="summarise the runs under --runs, run none")
    parser.add_argument("--out", default="benchmarks/results/guarded_channels.json")
    args = parser.parse_args()
    runs = Path(args.runs)
    if not args.collect:
        for seed in args.seeds:
            for design in SETTINGS:
                measure(runs, design, seed, args.threads)
    write_results(args.out, summarise(runs, args.seeds))


if __name__ == "__main__":
    main()
