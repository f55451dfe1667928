"""Helpers shared by ``benchmarks/``: interleaved timing (ratios measured side by side) and result files."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .runs import git_revision, package_versions


def interleaved_timings(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, np.ndarray]:
    """Seconds of each function per round; every round runs all of them in turn, so a slow spell of the
    machine hits both sides of a ratio. The first round is a warm-up and is dropped."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t[1:]) for name, t in times.items()}


def ratio_to(times: dict[str, np.ndarray], name: str, reference: str) -> dict[str, float]:
    """Median seconds of ``name`` and the median of its per-round ratio to ``reference``."""
    return {
        "seconds": float(np.median(times[name])),
        "ratio_to_" + reference: float(np.median(times[name] / times[reference])),
    }


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write ``results`` with package versions, git revision and time; print them (without the provenance)."""
    results = {
        **results,
        "versions": package_versions(),
        "git": git_revision(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("versions", "git")}, indent=2))
    print(f"wrote {out}")


def device_bench_args(description: str, out: str) -> argparse.Namespace:
    """The command line the device-side benchmarks share (--model, --m, --threads, --repeats, --out); sets the
    torch threads."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def full_sst2_batch(model: str, m: int):
    """(tokenizer, split model, 20,000 tokenised SST-2 train sentences, one full 32 × 64 batch of the longest)."""
    from .data import collate, load_split, tokenize_split
    from .models import load_split_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    split = load_split_model(model, m, num_labels=2)
    data = tokenize_split(load_split("sst2", "train", max_samples=20000, seed=0), tokenizer, 64)
    batch = collate(data, np.argsort(-data.lengths, kind="stable")[:32], tokenizer.pad_token_id)
    assert batch.input_ids.shape == (32, 64), batch.input_ids.shape
    return tokenizer, split, data, batch
