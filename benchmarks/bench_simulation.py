"""The simulation engine: Ray vs in-process throughput, worker scaling, memory at 10,000 devices, the clock.

Every simulation runs in a fresh subprocess (``python -m privtune_ray.cli simulate``), so peak memory is
per run and Ray starts clean; runs that are compared alternate (A, B, A, B, ...) so a slow spell of the
machine hits both sides of a ratio. Throughput is samples the top model trained on per second of the round
loop (``summary.json``: train_samples / train_wall_s; model loading and actor start-up excluded).

  * throughput: the same rounds (MiniLM m = 2, 8 devices × 16 SST-2 samples a round) in-process (all cores)
    and on a local Ray (1 device worker, 1 top replica, each on all cores, one after the other), and on Ray
    with prefetch (devices of round r+1 run while the top trains on r: 1 + 2 threads on the same cores);
  * scaling: Ray with 1 and with 2 device workers on the same cores, under PrivTune (device-heavy);
  * memory: the same rounds with 10 and with 10,000 virtual devices (in-process: one process to measure);
  * clock: a run with jitter-free tiers, every device's simulated times recomputed by hand from its row.

    python benchmarks/bench_simulation.py [--rounds 20] [--repeats 2] [--out benchmarks/results/simulation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from privtune_ray.benchmarking import write_results
from privtune_ray.config import load_config

CONFIG = str(Path(__file__).parents[1] / "simulations" / "sst2_devices.yaml")
PEAK = "import resource; print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def simulate(out: Path, overrides: list[str]) -> dict:
    """One run in a fresh process; its summary plus the driver's peak RSS (MiB)."""
    code = f"import sys; from privtune_ray.cli import main; rc = main(sys.argv[1:]); {PEAK}; sys.exit(rc)"
    args = ["simulate", CONFIG, "--out", str(out), *sum((["--set", o] for o in overrides), [])]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"simulate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["driver_peak_rss_mb"] = float(proc.stdout.rsplit("PEAK_RSS_MB", 1)[1].split()[0])
    return summary


def throughput(s: dict) -> float:
    return s["train_samples"] / s["train_wall_s"]


def alternate(tmp: Path, runs: dict[str, list[str]], repeats: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name, overrides in runs.items():
            results[name].append(simulate(tmp / f"{name}-{rep}", overrides))
            print(f"{name} #{rep}: {throughput(results[name][-1]):.1f} samples/s", flush=True)
    return results


def clock_check(run: Path) -> dict:
    """Recompute each device's simulated seconds from its row (jitter-free tiers) and the round's FCFS queue."""
    cfg = load_config(run / "config.yaml")
    tiers = {t.name: t for t in cfg.simulation.tiers}
    dev = pd.read_csv(run / "devices.csv")
    rounds = pd.read_csv(run / "rounds.csv").set_index("round")
    errors = []
    for r, rows in dev.groupby("round"):
        start, free, done = rounds.loc[r, "sim_start_s"], rounds.loc[r, "sim_start_s"], []
        for _, row in rows.assign(a=rows["sim_arrival_s"]).sort_values("a").iterrows():
            t = tiers[row["tier"]]
            down = t.latency_ms / 1000 + row["bytes_down"] * 8 / (t.downlink_mbps * 1e6)
            if row["status"] == "dropped":
                errors.append(abs(row["sim_download_s"] - down))
                continue
            compute = (row["compute_s"] + row["mechanism_s"]) * t.compute_factor
            up = t.latency_ms / 1000 + row["bytes_up"] * 8 / (t.uplink_mbps * 1e6)
            arrival = start + down + compute + up
            begin = max(arrival, free)  # one replica: first come, first served
            free = begin + row["top_s"]
            done.append(free)
            errors += [
                abs(row[k] - v)
                for k, v in (
                    ("sim_download_s", down),
                    ("sim_compute_s", compute),
                    ("sim_upload_s", up),
                    ("sim_arrival_s", arrival),
                    ("sim_top_start_s", begin),
                    ("sim_top_end_s", free),
                )
            ]
        if done:  # no deadline here: the round closes with its last arrival, before its last top step ends
            errors.append(abs(rounds.loc[r, "sim_end_s"] - (max(done) + rounds.loc[r, "top_step_s"])))
    return {"rows_checked": int(len(dev)), "values_checked": len(errors), "max_abs_error_s": float(max(errors))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/simulation.json")
    args = parser.parse_args()
    base = [
        f"simulation.rounds={args.rounds}",
        "simulation.devices_per_round=8",
        "simulation.local_batch_size=16",
        "simulation.eval_every=null",
        "data.max_eval_samples=128",
        "simulation.checkpoint_every=1000",
        "simulation.tiers=[{name: laptop}]",
    ]
    ray = ["simulation.backend=ray", "simulation.device_workers=1"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pair = alternate(
            tmp,
            {
                "inprocess": base,
                "ray": base + ray,
                "ray_prefetch": base + ray + ["simulation.prefetch=true", "simulation.worker_threads=1"],
            },
            args.repeats,
        )
        ratios = [throughput(r) / throughput(i) for i, r in zip(pair["inprocess"], pair["ray"])]
        prefetch_ratios = [throughput(r) / throughput(i) for i, r in zip(pair["inprocess"], pair["ray_prefetch"])]

        privtune = base + ray + ["mechanism.name=privtune", "simulation.worker_cpus=0.5"]
        scale = alternate(
            tmp, {"workers1": privtune, "workers2": privtune + ["simulation.device_workers=2"]}, args.repeats
        )

        few_data = [
            "simulation.local_batch_size=4",
            "simulation.partition=iid",
        ]  # 10,000 devices hold ~6.7 samples each
        mem = alternate(
            tmp,
            {
                "devices10": base + few_data + ["simulation.devices=10"],
                "devices10000": base + few_data + ["simulation.devices=10000"],
            },
            1,
        )

        clock_run = tmp / "clock"
        simulate(
            clock_run,
            [
                "simulation.rounds=5",
                "simulation.devices=50",
                "simulation.eval_every=null",
                "data.max_eval_samples=64",
                "simulation.partition=iid",
            ]
            + [
                "simulation.tiers=[{name: a, compute_factor: 4, uplink_mbps: 5, downlink_mbps: 20, latency_ms: 80}, "
                "{name: b, latency_ms: 20, uplink_mbps: 40, downlink_mbps: 80, dropout: 0.1}]"
            ],
        )
        clock = clock_check(clock_run)

    peak10, peak10k = mem["devices10"][0]["driver_peak_rss_mb"], mem["devices10000"][0]["driver_peak_rss_mb"]
    results = {
        "benchmark": "simulation",
        "setup": {
            "model": "all-MiniLM-L6-v2",
            "split_depth": 2,
            "rounds": args.rounds,
            "devices_per_round": 8,
            "local_batch_size": 16,
            "cores": os.cpu_count(),
            "repeats": args.repeats,
        },
        "throughput_samples_per_s": {name: [throughput(s) for s in runs] for name, runs in pair.items()},
        "ray_over_inprocess": {"per_pair": ratios, "median": float(np.median(ratios)), "target": ">= 0.8"},
        "ray_prefetch_over_inprocess": {"per_pair": prefetch_ratios, "median": float(np.median(prefetch_ratios))},
        "scaling_privtune_samples_per_s": {
            "device_workers_1": [throughput(s) for s in scale["workers1"]],
            "device_workers_2": [throughput(s) for s in scale["workers2"]],
            "ratio_2_over_1": float(
                np.median([throughput(b) / throughput(a) for a, b in zip(scale["workers1"], scale["workers2"])])
            ),
        },
        "memory_peak_rss_mb": {
            "devices_10": peak10,
            "devices_10000": peak10k,
            "ratio": peak10k / peak10,
            "target": "<= 1.2",
            "note": "in-process backend: the driver holds coordinator, worker and replica",
        },
        "clock_validation": clock,
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
