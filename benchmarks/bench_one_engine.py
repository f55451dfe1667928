"""`privtune-ray train` on the one engine against the single-process loop it replaced, side by side in one run.

The same config, the same batches, the same cores: the engine's one-device train at this checkout, and the training
loop at ``--base`` (a revision before the engine, checked out into a temporary git worktree), alternated
``--repeats`` times, each run in a fresh process with ``train.threads`` threads. Samples/s is the summary's
``train_samples_per_s`` (samples trained on / seconds of the training loop: set-up, the final evaluation and the
attack are outside it) and, steady, the median of ``metrics.csv``'s windows of ``--log-every`` steps after the
first (the first holds one-time costs: PrivTune's device fits its importance in its first round on the engine,
before the loop started on the old one). The ratios are engine / loop per config (medians of the repeats); the
target is >= 0.95.

    python benchmarks/bench_one_engine.py [--base e00e9d1] [--steps 60] [--repeats 3] [--threads 1]
        [--out benchmarks/results/one_engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

from privtune_ray.benchmarking import write_results

ROOT = Path(__file__).parents[1]
BASE = "e00e9d1"  # the last revision whose `train` ran the single-process loop for classification
# The headline's split (m = 4, MiniLM, SST-2) undefended and with PrivTune at the 10 % bound's eta.
CONFIGS = {
    "none": ["mechanism.name=none"],
    "privtune": ["mechanism.name=privtune", "mechanism.eta=5.0"],
}
CONFIG = "simulations/sst2_frontier_tuning.yaml"


def train(code_root: Path, out: Path, overrides: list[str]) -> dict:
    """One `privtune-ray train` run with the package at ``code_root``, in a fresh process; its summary."""
    args = ["train", str(ROOT / CONFIG), "--out", str(out), *sum((["--set", o] for o in overrides), [])]
    data = os.environ.get("PRIVTUNE_DATA_DIR", str(ROOT.parent / "shared" / "data"))  # the base tree has none beside it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code_root), "PRIVTUNE_DATA_DIR": data}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from privtune_ray.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=code_root,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"train at {code_root} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    windows = pd.read_csv(out / "metrics.csv")["samples_per_s"].tolist()[1:]
    summary["steady_samples_per_s"] = statistics.median(windows) if windows else float("nan")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default="benchmarks/results/one_engine.json")
    args = parser.parse_args()
    common = [
        f"train.max_steps={args.steps}",
        f"train.threads={args.threads}",
        "train.progress=false",
        f"train.log_every={args.log_every}",
        "train.eval_every=null",
        "attack.enabled=false",
        "train.warm_start.enabled=false",
        "data.max_eval_samples=64",
    ]
    results: dict = {"config": CONFIG, "base": args.base, "steps": args.steps, "threads": args.threads, "points": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
        try:
            for name in args.configs:
                rates: dict[str, list[float]] = {"engine": [], "loop": []}
                steady: dict[str, list[float]] = {"engine": [], "loop": []}
                checks: dict[str, list] = {"engine": [], "loop": []}
                for r in range(args.repeats):
                    for which, code_root in (("loop", base_tree), ("engine", ROOT)):
                        summary = train(code_root, Path(tmp) / f"{name}-{which}-{r}", common + CONFIGS[name])
                        rates[which].append(summary["train_samples_per_s"])
                        steady[which].append(summary["steady_samples_per_s"])
                        checks[which].append((summary["train_samples"], summary["bytes_up"]))
                        print(
                            f"{name} {which} repeat {r}: {summary['train_samples_per_s']:.2f} samples/s, steady "
                            f"{summary['steady_samples_per_s']:.2f}",
                            flush=True,
                        )
                median = {k: statistics.median(v) for k, v in rates.items()}
                median_steady = {k: statistics.median(v) for k, v in steady.items()}
                results["points"][name] = {
                    "samples_per_s": rates,
                    "median_samples_per_s": median,
                    "ratio_engine_to_loop": median["engine"] / median["loop"],
                    "steady_samples_per_s": steady,
                    "steady_ratio_engine_to_loop": median_steady["engine"] / median_steady["loop"],
                    # the same batches: samples trained on and bytes uploaded agree run for run
                    "same_samples_and_bytes": checks["engine"] == checks["loop"],
                }
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
