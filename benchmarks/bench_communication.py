"""Bytes one training step sends up, per wire format, and what quantising costs on the device.

One full 32 × 64 SST-2 batch through MiniLM's bottom (m=2) and PrivTune, serialised as the Message a device
uploads: fp32 h̃, and h̃ as 8-bit and 4-bit per-row codes (``design.bits``). Also the time of the 8-bit
quantisation as a ratio to the bottom forward of the same batch, and its mean absolute error against fp32.
EW-Tune uploads what plain split learning does (its DP acts on the cloud's update), so its bytes are the fp32 row.

    python benchmarks/bench_communication.py [--out benchmarks/results/communication.json]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from privtune_ray.benchmarking import interleaved_timings, ratio_to, write_results  # noqa: E402
from privtune_ray.config import MechanismConfig  # noqa: E402
from privtune_ray.data import collate, load_split, tokenize_split  # noqa: E402
from privtune_ray.designs.quantisation import dequantise, quantise, quantised_bytes  # noqa: E402
from privtune_ray.mechanisms import build_mechanism  # noqa: E402
from privtune_ray.models import load_split_model, load_tokenizer, resolve_model  # noqa: E402
from privtune_ray.training.client import SplitClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/communication.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    split = load_split_model(args.model, args.m, num_labels=2)
    data = tokenize_split(load_split("sst2", "train", max_samples=20000, seed=0), tokenizer, 64)
    batch = collate(data, np.argsort(-data.lengths, kind="stable")[:32], tokenizer.pad_token_id)  # a full 32 × 64
    mechanism = build_mechanism(MechanismConfig(name="privtune"), split, tokenizer, resolve_model(args.model), seed=0)
    mechanism.fit(data)
    formats = {}
    for bits in (None, 8, 4):
        msg = SplitClient(split.bottom, mechanism, bits=bits).encode(batch)
        formats["fp32" if bits is None else f"{bits}-bit"] = {
            "bytes_per_step": len(msg.to_bytes()),
            "hidden_bytes_formula": msg.hidden.numel() * 4 if bits is None else quantised_bytes(tuple(msg.hidden.shape), bits),
        }  # fmt: skip
    for name, row in formats.items():
        row["ratio_to_fp32"] = row["bytes_per_step"] / formats["fp32"]["bytes_per_step"]

    with torch.no_grad():
        hidden = split.bottom(batch.input_ids, batch.attention_mask)
    times = interleaved_timings({
        "bottom_forward": lambda: split.bottom(batch.input_ids, batch.attention_mask),
        "quantise_8bit": lambda: quantise(hidden, 8),
    }, args.repeats)  # fmt: skip
    error = {f"{b}-bit": float((dequantise(quantise(hidden, b)) - hidden).abs().mean()) for b in (8, 4)}
    write_results(args.out, {
        "benchmark": "communication", "model": args.model, "split_depth": args.m, "batch": list(batch.input_ids.shape),
        "mechanism": "privtune", "threads": args.threads, "formats": formats,
        "quantise_8bit_ratio_to_bottom_forward": ratio_to(times, "quantise_8bit", "bottom_forward"),
        "mean_abs_error": error, "mean_abs_hidden": float(hidden.abs().mean()),
    })  # fmt: skip


if __name__ == "__main__":
    main()
