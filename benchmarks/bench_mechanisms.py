"""Device-side cost of the privacy mechanisms, PrivTune's one-off graph build, and σ calibration.

Measured in one process, on the same cores (MiniLM, m=2, defaults of MechanismConfig):
  * each mechanism's perturb() on one 32 × 64 batch, as a ratio to the bottom forward of that batch
    (target for PrivTune: ≤ 0.5×);
  * the PrivTune token graph for the full 30,522-token vocabulary, built from scratch (target ≤ 60 s);
  * σ calibration for a target ε by the Edgeworth accountant (target ≤ 1 s), with the PLD ε at that σ.

    python benchmarks/bench_mechanisms.py [--out benchmarks/results/mechanisms.json]
"""

from __future__ import annotations

import os
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from privtune_ray.accounting import calibrate_sigma, edgeworth_epsilon, pld_epsilon
from privtune_ray.benchmarking import (
    device_bench_args,
    full_sst2_batch,
    interleaved_timings,
    ratio_to,
    write_results,
)
from privtune_ray.config import MechanismConfig
from privtune_ray.mechanisms.params import PrivTuneParams
from privtune_ray.mechanisms.privtune import PrivTune
from privtune_ray.mechanisms.privtune_graph import build_token_graph
from privtune_ray.mechanisms.registry import MECHANISMS, build_mechanism
from privtune_ray.models import resolve_model


def main() -> None:
    args = device_bench_args(__doc__.split("\n")[0], "benchmarks/results/mechanisms.json")
    tokenizer, split, data, batch = full_sst2_batch(args.model, args.m)

    # The one-off graph build, from scratch (build_token_graph neither reads nor writes the cache).
    start = time.perf_counter()
    graph = build_token_graph(split.bottom, tokenizer)
    graph_s = time.perf_counter() - start
    mechanisms = {}
    for name in MECHANISMS:
        cfg = MechanismConfig(name=name)
        if name == "privtune":
            mech = PrivTune(
                graph, split.bottom, tokenizer.all_special_ids, PrivTuneParams.of(cfg), tokenizer.pad_token_id
            )
        else:
            mech = build_mechanism(cfg, split, tokenizer, resolve_model(args.model))
        mech.fit(data)
        mechanisms[name] = mech

    h = split.bottom(batch.input_ids, batch.attention_mask)
    times = interleaved_timings(
        {
            "bottom_forward": lambda: split.bottom(batch.input_ids, batch.attention_mask),
            **{
                name: partial(mech.perturb, h, batch.attention_mask, batch.input_ids)
                for name, mech in mechanisms.items()
            },
        },
        args.repeats,
    )
    bottom_s = float(np.median(times["bottom_forward"]))
    per_mechanism = {name: ratio_to(times, name, "bottom_forward") for name in mechanisms}

    start = time.perf_counter()
    q, steps, delta, target = 2000 / 60000, 600, 1e-5, 3.0
    sigma = calibrate_sigma(target, delta, q, steps)
    calibration_s = time.perf_counter() - start

    results = {
        "benchmark": "mechanisms",
        "model": args.model,
        "split_depth": args.m,
        "threads": args.threads,
        "batch": list(batch.input_ids.shape),
        "bottom_forward_s": bottom_s,
        "mechanisms": per_mechanism,
        "privtune_ratio_target": 0.5,
        "graph_build_s": graph_s,
        "graph_build_target_s": 60,
        "graph_vocab_size": graph.vocab_size,
        "calibration": {
            "q": q,
            "steps": steps,
            "delta": delta,
            "target_epsilon": target,
            "sigma": sigma,
            "edgeworth_epsilon_at_sigma": edgeworth_epsilon(delta, q, sigma, steps),
            "pld_epsilon_at_sigma": pld_epsilon(delta, q, sigma, steps),
            "seconds": calibration_s,
            "target_s": 1.0,
        },
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
