"""(Re)write tests/golden/records.json: run every case of tests/test_equality.py and keep its deterministic fields.

Run it with the code whose behaviour is the reference (the commit before a refactor), e.g. from a worktree of it:
    git worktree add /tmp/golden-src <commit>
    cd /tmp/golden-src && HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/tmp/golden-src \
        <project>/.venv/bin/python <project>/tests/golden/record.py --out <project>/tests/golden/records.json
(the worktree finds the data as ../shared/data beside it, or pass PRIVTUNE_DATA_DIR). Each case runs --runs times
(default 2); a field whose values differ between the runs is dropped and listed, so what is kept is reproducible.
Only fields that do not depend on measured time are candidates (FIELDS, SUMMARY_KEYS, MEASURED below).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# CSV columns recorded where a run has them (patterns: re.fullmatch)
FIELDS = {
    "devices.csv": [
        "round",
        "device",
        "tier",
        "depth",
        "status",
        "samples",
        "tokens",
        "bytes_.*",
        "releases",
        "epsilon.*",
        "eta_per_unit",
    ],
    "rounds.csv": [
        "round",
        "online",
        "selected",
        "ok",
        "dropped",
        "late",
        "samples",
        "loss",
        "lr",
        "bytes_up",
        "bytes_down",
        "samples_total",
        ".*epsilon.*",
        ".*spent.*",
    ],
    "eval.csv": ["rounds_done", "step", "split", "depth", "accuracy", "loss", "samples", "devices", "bytes_.*"],
    "metrics.csv": ["step", "epoch", "loss", "lr", "samples", "tokens", "bytes_.*", "epsilon.*"],
}
# summary.json: the top-level keys recorded (every leaf below them, as a dotted path)
SUMMARY_KEYS = [
    "name",
    "dataset",
    "model",
    "split_depth",
    "mechanism",
    "design",
    "seed",
    "privacy",
    "devices",
    "tiers",
    "rounds",
    "steps",
    "epochs",
    "dev_accuracy",
    "dev_loss",
    "dev_by_depth",
    "dev_samples",
    "utility",
    "utility_metric",
    "train_samples",
    "train_split_size",
    "sent_samples",
    "tokens",
    "bytes_up",
    "bytes_down",
    "bytes_up_per_sample",
    "bytes_up_eval",
    "bytes_down_eval",
    "bytes_by_channel",
    "dropped",
    "late",
    "rollbacks",
    "max_releases",
    "trainable_params",
    "lora",
    "dp_sgd",
    "guarded",
]
# never recorded, wherever they appear: measured seconds and rates, processes, paths, clocks
MEASURED = re.compile(r"(^|[._])(wall|pid|worker|threads|run_dir|finished_at|started_at|path|host)([._]|$)|_s$|_per_s$")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _leaves(child, f"{prefix}.{key}").items()}
    if isinstance(node, list) and any(isinstance(x, (dict, list)) for x in node):
        return {k: v for i, child in enumerate(node) for k, v in _leaves(child, f"{prefix}.{i}").items()}
    return {prefix: node}


def collect(run: Path) -> dict[str, Any]:
    """The candidate fields of a run directory: {"<file>:<column or dotted path>": value}."""
    fields: dict[str, Any] = {}
    for file, patterns in FIELDS.items():
        if not (run / file).is_file():
            continue
        frame = pd.read_csv(run / file)
        for column in frame.columns:
            if any(re.fullmatch(p, column) for p in patterns) and not MEASURED.search(column):
                fields[f"{file}:{column}"] = [_plain(v) for v in frame[column].tolist()]
    summary = json.loads((run / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        if key in summary:
            for path, value in _leaves(summary[key], key).items():
                if not MEASURED.search(path):
                    fields[f"summary.json:{path}"] = value
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "records.json"))
    parser.add_argument(
        "--runs", type=int, default=2, help="runs per case; fields that differ between them are dropped"
    )
    parser.add_argument("--case", action="append", help="only these cases (the others are kept from --out)")
    args = parser.parse_args(argv)

    # the cases and the comparison are the test's own (tests/test_equality.py)
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_equality import CASES, run_case, same

    import privtune_ray

    source = Path(privtune_ray.__file__).resolve().parents[1]
    print(f"recording with privtune_ray from {source}", flush=True)
    out = Path(args.out)
    records = json.loads(out.read_text()) if args.case and out.is_file() else {"cases": {}}
    dropped: dict[str, list[str]] = records.get("dropped", {})
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        for name in args.case or list(CASES):
            started = time.perf_counter()
            runs = [collect(run_case(name, Path(tmp) / f"{name}-{i}")) for i in range(args.runs)]
            first = runs[0]
            unstable = sorted(f for f in first if any(f not in r or not same(first[f], r[f]) for r in runs[1:]))
            records["cases"][name] = {f: v for f, v in first.items() if f not in unstable}
            dropped[name] = unstable
            print(
                f"{name}: {len(records['cases'][name])} fields, dropped as not reproducible: {unstable or 'none'} "
                f"({(time.perf_counter() - started) / args.runs:.1f} s a run)",
                flush=True,
            )
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    records = {
        "commit": commit or None,
        "runs_per_case": args.runs,
        "dropped": dropped,
        "cases": dict(sorted(records["cases"].items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
