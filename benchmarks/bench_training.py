"""Training-loop throughput of the reference split fine-tuning (MiniLM, SST-2, m=2 by default).

Measured side by side in one process, on the same cores:
  * bottom forward and top forward+backward+step on one full batch of 32 × 64 tokens;
  * the upload: payload bytes and serialisation seconds for that batch;
  * samples/s of the training loop over the same N steps of SST-2 with length bucketing and with
    plain dynamic padding (same samples, same model), and their ratio.

    python benchmarks/bench_training.py [--steps 60] [--out benchmarks/results/training.json]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from privtune_ray.benchmarking import write_results
from privtune_ray.config import TrainConfig
from privtune_ray.data import batch_indices, collate, load_split, tokenize_split
from privtune_ray.drivers.train import split_step, upload
from privtune_ray.models import load_split_model, load_tokenizer
from privtune_ray.runs import Totals
from privtune_ray.training.client import SplitClient
from privtune_ray.training.server import TopServer, build_optimizer


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="training steps per batching mode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="benchmarks/results/training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = load_tokenizer(args.model)
    n = args.steps * args.batch_size
    split = tokenize_split(load_split("sst2", "train", max_samples=n, seed=0), tokenizer, max_length=64)

    def fresh():
        torch.manual_seed(0)
        model = load_split_model(args.model, args.m, num_labels=2)
        optimizer, scheduler = build_optimizer(model.top, TrainConfig(), total_steps=10 * args.steps)
        return SplitClient(model.bottom), TopServer(model.top, optimizer, scheduler)

    # One full 32 × 64 batch: the longest SST-2 sentences, truncated to 64 tokens, padded to 64.
    client, server = fresh()
    full = collate(split, np.argsort(-split.lengths)[: args.batch_size], tokenizer.pad_token_id)
    full.input_ids = torch.nn.functional.pad(
        full.input_ids, (0, 64 - full.input_ids.shape[1]), value=tokenizer.pad_token_id
    )
    full.attention_mask = torch.nn.functional.pad(full.attention_mask, (0, 64 - full.attention_mask.shape[1]))
    msg = client.encode(full)
    counters = Totals()
    for _ in range(2):  # warm-up
        server.train_step(upload(client.encode(full), counters))
    bottom_s = _median_time(lambda: client.encode(full), 10)
    top_s = _median_time(lambda: server.train_step(msg), 5)
    serialise_s = _median_time(lambda: upload(msg, Totals()), 10)
    payload = len(msg.to_bytes())

    loops = {}
    for mode, bucketing in (("length_bucketing", True), ("dynamic_padding", False)):
        client, server = fresh()
        batches = batch_indices(split.lengths, args.batch_size, shuffle=True, bucketing=bucketing, seed=0)
        counters = Totals()
        split_step(client, server, [collate(split, batches[0], tokenizer.pad_token_id)], counters)  # warm-up
        counters = Totals()
        start = time.perf_counter()
        for idx in batches:
            split_step(client, server, [collate(split, idx, tokenizer.pad_token_id)], counters)
        seconds = time.perf_counter() - start
        loops[mode] = {
            "steps": counters.step,
            "samples": counters.samples,
            "seconds": seconds,
            "samples_per_s": counters.samples / seconds,
            "mean_padded_length": float(np.mean([split.lengths[b].max() for b in batches])),
        }

    results = {
        "benchmark": "training",
        "model": args.model,
        "split_depth": args.m,
        "threads": args.threads,
        "batch": [args.batch_size, 64],
        "bottom_forward_s": bottom_s,
        "top_forward_backward_step_s": top_s,
        "top_over_bottom": top_s / bottom_s,
        "upload_bytes": payload,
        "upload_serialise_roundtrip_s": serialise_s,
        "loop": loops,
        "bucketing_speedup": loops["length_bucketing"]["samples_per_s"] / loops["dynamic_padding"]["samples_per_s"],
        "sst2_epoch_minutes_estimate": 67349 / loops["length_bucketing"]["samples_per_s"] / 60,
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
