"""EIA-KNN cost: one 32 × 64 batch against the full vocabulary in one batched GEMM, beside the bottom forward.

python benchmarks/bench_attacks.py [--out benchmarks/results/attacks.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from privtune_ray.attacks.knn_inversion import nearest_tokens
from privtune_ray.benchmarking import (
    device_bench_args,
    full_sst2_batch,
    interleaved_timings,
    ratio_to,
    write_results,
)
from privtune_ray.models import resolve_model
from privtune_ray.models.anchors import load_or_build_anchors


def main() -> None:
    args = device_bench_args(__doc__.split("\n")[0], "benchmarks/results/attacks.json")
    tokenizer, split, data, batch = full_sst2_batch(args.model, args.m)
    anchors = load_or_build_anchors(split.bottom, tokenizer, resolve_model(args.model))
    sq_norms = anchors.pow(2).sum(-1)
    h = split.bottom(batch.input_ids, batch.attention_mask)
    rows = h.reshape(-1, h.shape[-1])  # all 2,048 positions of the batch

    times = interleaved_timings(
        {
            "bottom_forward": lambda: split.bottom(batch.input_ids, batch.attention_mask),
            "knn_l2": lambda: nearest_tokens(rows, anchors, 5, "l2", sq_norms),
            "knn_cosine": lambda: nearest_tokens(rows, anchors, 5, "cosine"),
        },
        args.repeats,
    )
    results = {
        "benchmark": "attacks",
        "model": args.model,
        "split_depth": args.m,
        "threads": args.threads,
        "batch": list(batch.input_ids.shape),
        "vocab_size": int(anchors.shape[0]),
        "bottom_forward_s": float(np.median(times["bottom_forward"])),
        **{name: ratio_to(times, name, "bottom_forward") for name in ("knn_l2", "knn_cosine")},
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
