"""EIA-KNN cost: one 32 × 64 batch against the full vocabulary in one batched GEMM, beside the bottom forward.

    python benchmarks/bench_attacks.py [--out benchmarks/results/attacks.json]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from privtune_ray.attacks.knn_inversion import nearest_tokens  # noqa: E402
from privtune_ray.data import collate, load_split, tokenize_split  # noqa: E402
from privtune_ray.models import load_split_model, load_tokenizer, resolve_model  # noqa: E402
from privtune_ray.models.anchors import load_or_build_anchors  # noqa: E402
from privtune_ray.benchmarking import interleaved_timings, ratio_to, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/attacks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    split = load_split_model(args.model, args.m, num_labels=2)
    anchors = load_or_build_anchors(split.bottom, tokenizer, resolve_model(args.model))
    sq_norms = anchors.pow(2).sum(-1)
    data = tokenize_split(load_split("sst2", "train", max_samples=20000, seed=0), tokenizer, 64)
    batch = collate(data, np.argsort(-data.lengths, kind="stable")[:32], tokenizer.pad_token_id)
    h = split.bottom(batch.input_ids, batch.attention_mask)
    rows = h.reshape(-1, h.shape[-1])  # all 2,048 positions of the batch

    times = interleaved_timings({
        "bottom_forward": lambda: split.bottom(batch.input_ids, batch.attention_mask),
        "knn_l2": lambda: nearest_tokens(rows, anchors, 5, "l2", sq_norms),
        "knn_cosine": lambda: nearest_tokens(rows, anchors, 5, "cosine"),
    }, args.repeats)  # fmt: skip
    results = {
        "benchmark": "attacks", "model": args.model, "split_depth": args.m, "threads": args.threads,
        "batch": list(batch.input_ids.shape), "vocab_size": int(anchors.shape[0]),
        "bottom_forward_s": float(np.median(times["bottom_forward"])),
        **{name: ratio_to(times, name, "bottom_forward") for name in ("knn_l2", "knn_cosine")},
    }  # fmt: skip
    write_results(args.out, results)


if __name__ == "__main__":
    main()
