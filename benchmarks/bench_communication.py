"""Bytes one training step sends up, per wire format, and what quantising costs on the device.

One 32 × 64 SST-2 batch of the longest sentences (1,820 real tokens of 2,048 rows) through MiniLM's bottom
(m=2) and PrivTune, serialised as the Message a device uploads (real rows only): fp32 h̃, and h̃ as 8-bit and 4-bit per-row codes (``design.bits``). Also the time of the 8-bit
quantisation as a ratio to the bottom forward of the same batch, and its mean absolute error against fp32.
EW-Tune uploads what plain split learning does (its DP acts on the cloud's update), so its bytes are the fp32 row.

``padding``: bytes per sample of the upload on real SST-2 batching, only the real rows packed (what is sent)
against every B × L row (what was sent before padding rows were dropped: + (B·L − N)·d·4 bytes of fp32 h̃), for
training batches (32, length-bucketed, the whole train split), simulate's device batches (16, unbucketed) and
evaluation batches (128, bucketed, the dev split). Sizes depend on the shapes alone, so h̃ is zeros there.

``designs``: bytes per training step and channel of the same batch for PrivTune (one upload) and the three
GuardedTuning designs at m = 2 with one adapter block per end, fp32, 8-bit and 4-bit, each measured from the
payloads of one real step of the protocol (online: A1 up, A2 down, ∂ℓ/∂A2 up, ∂ℓ/∂A1 down; gradfree: A1 up, A2
down; offline: nothing per step, its one-time download and upload beside). One client, as in the papers: the
adapter synchronisation of a many-device simulation comes on top (``simulate`` records it as adapter_up/down).

``synchronised_per_round``: what a many-device run moves each way per device-round besides the activations:
GuardedTuning's two adapter blocks (online, offline) or A_t alone (gradfree), against federated fine-tuning of the whole top above the
frozen bottom (blocks m+1..L, pooler, head: what FedAvg of the top would synchronise), in serialised bytes.

``per_sample``: bytes per training sample, per design, format and channel (the step's bytes ÷ its 32 samples), and
with the synchronisation of a device-round of 16 samples (``sst2_designs.yaml``), both ways, added.

    python benchmarks/bench_communication.py [--out benchmarks/results/communication.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from privtune_ray.benchmarking import (
    device_bench_args,
    full_sst2_batch,
    interleaved_timings,
    ratio_to,
    write_results,
)
from privtune_ray.config import MechanismConfig
from privtune_ray.mechanisms.registry import build_mechanism
from privtune_ray.message import CHANNELS
from privtune_ray.models import resolve_model
from privtune_ray.quantisation import dequantise, quantise, quantised_bytes
from privtune_ray.training.client import SplitClient


def main() -> None:
    args = device_bench_args(__doc__.split("\n")[0], "benchmarks/results/communication.json")
    tokenizer, split, data, batch = full_sst2_batch(args.model, args.m)
    mechanism = build_mechanism(MechanismConfig(name="privtune"), split, tokenizer, resolve_model(args.model), seed=0)
    mechanism.fit(data)
    formats = {}
    for bits in (None, 8, 4):
        msg = SplitClient(split.bottom, mechanism, bits=bits).encode(batch)
        formats["fp32" if bits is None else f"{bits}-bit"] = {
            "bytes_per_step": len(msg.to_bytes()),
            "hidden_bytes_formula": _real_rows(msg) * 4
            if bits is None
            else quantised_bytes((_real_rows(msg) // msg.hidden.shape[-1], msg.hidden.shape[-1]), bits),
        }
    for row in formats.values():
        row["ratio_to_fp32"] = row["bytes_per_step"] / formats["fp32"]["bytes_per_step"]

    with torch.no_grad():
        hidden = split.bottom(batch.input_ids, batch.attention_mask)
    times = interleaved_timings(
        {
            "bottom_forward": lambda: split.bottom(batch.input_ids, batch.attention_mask),
            "quantise_8bit": lambda: quantise(hidden, 8),
        },
        args.repeats,
    )
    error = {f"{b}-bit": float((dequantise(quantise(hidden, b)) - hidden).abs().mean()) for b in (8, 4)}
    designs = {"privtune": {f: {"act_up": row["bytes_per_step"]} for f, row in formats.items()}}
    guarded, guarded_sync = guarded_step_bytes(split, batch, args.model)
    designs.update(guarded)
    from privtune_ray.designs.guarded import module_bytes

    synchronised = {  # per device-round, each way: what a many-device run synchronises besides the activations
        **{f"guarded_{design}": n for design, n in guarded_sync.items()},
        "federated_full_top": module_bytes(split.top),
    }
    hidden_size = int(hidden.shape[-1])
    write_results(
        args.out,
        {
            "benchmark": "communication",
            "model": args.model,
            "split_depth": args.m,
            "batch": list(batch.input_ids.shape),
            "mechanism": "privtune",
            "threads": args.threads,
            "formats": formats,
            "quantise_8bit_ratio_to_bottom_forward": ratio_to(times, "quantise_8bit", "bottom_forward"),
            "mean_abs_error": error,
            "mean_abs_hidden": float(hidden.abs().mean()),
            "designs": designs,
            "synchronised_per_round": synchronised,
            "per_sample": per_sample(designs, synchronised, int(batch.input_ids.shape[0]), LOCAL_BATCH),
            "padding": padding_bytes(tokenizer, hidden_size),
        },
    )


LOCAL_BATCH = 16  # samples per device-round in simulations/sst2_designs.yaml


def per_sample(designs: dict, synchronised: dict, batch_size: int, local_batch: int) -> dict:
    """Bytes per training sample, per design and wire format: each channel of a step ÷ the batch's samples, their
    sum (``activations``), and with a many-device run's synchronisation, both ways, ÷ the ``local_batch`` samples
    of a device-round (``with_sync``: online and offline sync both adapters, gradfree A_t, plain split nothing).
    ``federated_full_top``: FedAvg of the whole top, both ways, per sample of a device-round (its activations stay
    on the device)."""
    sync = {d: synchronised.get(f"guarded_{d}", 0) for d in designs}
    table: dict = {}
    for design, formats in designs.items():
        name = "split" if design == "privtune" else design
        table[name] = {}
        for fmt, row in formats.items():
            channels = {k: v / batch_size for k, v in row.items() if k in CHANNELS}
            acts = sum(channels.values())
            table[name][fmt] = {
                **channels,
                "activations": acts,
                "with_sync": acts + 2 * sync.get(name, 0) / local_batch,
            }
    table["federated_full_top"] = {"fp32": {"with_sync": 2 * synchronised["federated_full_top"] / local_batch}}
    return table


def _real_rows(msg) -> int:
    """Values of h̃ that travel: N real rows × d."""
    return int(msg.attention_mask.sum()) * int(msg.hidden.shape[-1])


def padding_bytes(tokenizer, hidden_size: int) -> dict:
    """Upload bytes per sample, packed real rows vs all B × L rows, per batching of SST-2 (fp32, d = hidden_size)."""
    import numpy as np

    from privtune_ray.data import batch_indices, collate, load_split, tokenize_split
    from privtune_ray.message import Message

    train = tokenize_split(load_split("sst2", "train"), tokenizer, 64)
    dev = tokenize_split(load_split("sst2", "dev"), tokenizer, 64)
    settings = {
        "train_32_bucketed": (train, batch_indices(train.lengths, 32, shuffle=True, bucketing=True, seed=0)),
        "simulate_16_unbucketed": (train, batch_indices(train.lengths, 16, shuffle=True, bucketing=False, seed=0)),
        "eval_128_bucketed": (dev, batch_indices(dev.lengths, 128, shuffle=False, bucketing=True)),
    }
    out = {}
    for name, (data, batches) in settings.items():
        packed = padded = samples = with_padding = 0
        for idx in batches:
            batch = collate(data, idx, tokenizer.pad_token_id)
            B, L = batch.input_ids.shape
            n = int(batch.attention_mask.sum())
            size = len(Message(torch.zeros(B, L, hidden_size), batch.attention_mask, batch.labels).to_bytes())
            packed += size
            padded += size + (B * L - n) * hidden_size * 4
            samples += B
            with_padding += int((batch.attention_mask == 0).any(dim=1).sum())
        out[name] = {
            "samples": samples,
            "bytes_per_sample_packed": packed / samples,
            "bytes_per_sample_all_rows": padded / samples,
            "ratio": packed / padded,
            "samples_with_padding_rows": with_padding / samples,
            "batches": len(batches),
            "mean_tokens": float(np.mean(data.lengths)),
        }
    return out


def guarded_step_bytes(split, batch, model_name: str) -> tuple[dict, dict]:
    """Per channel, per wire format: the bytes of one step of each GuardedTuning design (and offline's one-time);
    and what each design synchronises each way per device-round in a many-device run (online and offline both
    adapters, gradfree A_t only)."""
    from privtune_ray.config import Config, DesignConfig, ModelConfig, TrainConfig
    from privtune_ray.designs.guarded import (
        Blocks,
        ClientAdapters,
        GuardedClient,
        MiddleServer,
        guarded_layout,
        module_bytes,
    )
    from privtune_ray.models import load_task_model
    from privtune_ray.models.split import depth_of
    from privtune_ray.training.server import build_optimizer

    task_model = load_task_model(model_name, num_labels=2)
    cfg = Config(model=ModelConfig(name=model_name, split_depth=split.m), design=DesignConfig(name="online"))
    layout = guarded_layout(cfg, depth_of(task_model))
    out = {}
    for design in ("online", "gradfree", "offline"):
        out[design] = {}
        for bits, fmt in ((None, "fp32"), (8, "8-bit"), (4, "4-bit")):
            adapters = ClientAdapters(task_model, layout, "classification")
            if design == "offline":
                emulator = Blocks(task_model, layout.emulator)
                out[design][fmt] = {
                    "per_step": 0,
                    "once_down": module_bytes(split.bottom) + module_bytes(emulator) + module_bytes(adapters),
                    "once_up": module_bytes(adapters),
                }
                continue
            client = GuardedClient(design, split.bottom, adapters, 0.5, bits)
            middle = Blocks(task_model, layout.middle).requires_grad_(design == "online")
            server = MiddleServer(
                middle, *build_optimizer(middle, TrainConfig(), 10), trains=design == "online", bits=bits
            )
            a1 = client.upload(batch)
            a2 = server.forward(0, a1, train=True)
            _, grad_up, _ = client.top_step(batch, a2)
            row = {"act_up": len(a1), "act_down": len(a2)}
            if grad_up is not None:
                row.update(grad_up=len(grad_up), grad_down=len(server.backward(0, grad_up)))
            out[design][fmt] = {**row, "per_step": sum(row.values())}
    adapters = ClientAdapters(task_model, layout, "classification")
    sync = {"online": module_bytes(adapters), "offline": module_bytes(adapters), "gradfree": module_bytes(adapters.top)}
    return out, sync


if __name__ == "__main__":
    main()
