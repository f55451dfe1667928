"""The simulation engine: Ray vs in-process throughput, worker scaling, memory at 10,000 devices, the clock.

Every simulation runs in a fresh subprocess (``python -m privtune_ray.cli simulate``), so peak memory is
per run and Ray starts clean; runs that are compared alternate (A, B, A, B, ...) so a slow spell of the
machine hits both sides of a ratio. Throughput is samples the top model trained on per second of the round
loop (``summary.json``: train_samples / train_wall_s; model loading and actor start-up excluded).

  * throughput: the same rounds (MiniLM m = 2, 8 devices × 16 SST-2 samples a round) in-process (all cores)
    and on a local Ray (1 device worker, 1 top replica, each on all cores, one after the other), and on Ray
    with prefetch (devices of round r+1 run while the top trains on r: 1 + 2 threads on the same cores);
  * where Ray's time goes (Linux): each run's median round split into device compute, top accumulate, top step
    (measured inside the worker and replica) and the rest (the driver and the messages); and, over a window of
    the round loop read from /proc, the compute threads' CPU seconds, their seconds waiting for a core (run-queue
    wait: preempted or woken late) and context switches, and every other process's CPU seconds (Ray's daemons);
  * scaling: Ray with 1 and with 2 device workers on the same cores, under PrivTune (device-heavy);
  * memory: the same rounds with 10 and with 10,000 virtual devices (in-process: one process to measure);
  * clock: a run with jitter-free tiers, every device's simulated times recomputed by hand from its row.

    python benchmarks/bench_simulation.py [--rounds 20] [--repeats 3] [--only throughput ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from privtune_ray.benchmarking import git_revision, write_results
from privtune_ray.config import load_config

CONFIG = str(Path(__file__).parents[1] / "simulations" / "sst2_devices.yaml")
PEAK = "import resource; print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def simulate(out: Path, overrides: list[str], profile: bool = False) -> dict:
    """One run in a fresh process; its summary plus the driver's peak RSS (MiB) and, with ``profile``, the
    processes' CPU over a window of its round loop (:func:`window_profile`)."""
    code = f"import sys; from privtune_ray.cli import main; rc = main(sys.argv[1:]); {PEAK}; sys.exit(rc)"
    args = ["simulate", CONFIG, "--out", str(out), *sum((["--set", o] for o in overrides), [])]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    window = window_profile(proc, out) if profile else None
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"simulate failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["driver_peak_rss_mb"] = float(stdout.rsplit("PEAK_RSS_MB", 1)[1].split()[0])
    if window is not None:
        summary["window"] = window
    summary["phases"] = round_phases(out)
    return summary


def round_phases(run: Path, skip: int = 2) -> dict[str, float]:
    """Median seconds of a round (the first ``skip`` warm-up rounds left out): its wall clock, the device compute
    and top accumulate measured inside the worker and replica, the top's step, and the rest (driver, messages)."""
    rounds, dev = pd.read_csv(run / "rounds.csv"), pd.read_csv(run / "devices.csv")
    wall = rounds["wall_s"].diff().fillna(rounds["wall_s"].iloc[0]).to_numpy()
    parts = {
        "device_compute_s": rounds["device_compute_s"].to_numpy(),
        "top_accumulate_s": dev.groupby("round")["top_s"].sum().reindex(rounds["round"]).to_numpy(),
        "top_step_s": rounds["top_step_s"].to_numpy(),
    }
    parts["rest_s"] = wall - sum(parts.values())
    return {k: float(np.median(v[skip:])) for k, v in {"round_wall_s": wall, **parts}.items()}


def _ticks(pid: str) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _name(pid: str) -> str:
    """A process's short name: its executable, or its Python module or script (``driver`` for ``python -c``)."""
    cmd = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if not cmd[0]:
        return "kernel"
    if "python" not in comm:
        return comm
    for i, arg in enumerate(cmd[1:-1], start=1):
        if arg == "-m":
            return cmd[i + 1]
        if arg == "-c":
            return "driver"
        if arg.endswith(".py"):
            return Path(arg).name
    return comm


def _snapshot(compute: list[str]) -> tuple[dict, dict]:
    """(per thread of the ``compute`` processes: [CPU s, run-queue wait s, timeslices, voluntary and involuntary
    context switches]; per other process: (CPU s, its name)), from /proc (schedstat: nanoseconds on a core, waiting
    for one, and timeslices)."""
    threads, others = {}, {}
    for pid in compute:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                run, wait, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                status = dict(
                    line.split(":\t", 1) for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
                )
                switches = [int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"])]
                threads[tid] = [int(run) / 1e9, int(wait) / 1e9, int(slices), *switches]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid not in compute:
            with contextlib.suppress(OSError, ValueError):
                others[pid] = (_ticks(pid), _name(pid))
    return threads, others


def window_profile(proc: subprocess.Popen, out: Path, seconds: float = 15.0) -> dict | None:
    """The run's CPU over ``seconds`` of its round loop (from its third round on): the compute processes' threads
    (in-process: the driver; Ray: the device worker and top replica actors) and every other process on the host."""
    rounds = out / "rounds.csv"
    while proc.poll() is None and not (rounds.exists() and len(rounds.read_text().splitlines()) > 3):
        time.sleep(0.2)
    if proc.poll() is not None:
        return None
    import psutil

    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    actors = [str(p) for p in tree if psutil.Process(p).name().startswith(("ray::TopReplica", "ray::DeviceWorker"))]
    compute = actors or [str(proc.pid)]
    (t0, o0), start = _snapshot(compute), time.perf_counter()
    time.sleep(seconds)
    (t1, o1), elapsed = _snapshot(compute), time.perf_counter() - start
    delta = [[b - a for a, b in zip(t0[t], t1[t])] for t in t1 if t in t0]
    busy = [d for d in delta if d[0] > 0.05 * elapsed]  # the threads that compute
    idle = [d for d in delta if d[0] <= 0.05 * elapsed]  # the processes' other threads (Ray's, in an actor)
    other: dict[str, float] = {}
    for pid, (cpu, name) in o1.items():
        if pid in o0 and pid != str(os.getpid()):
            other[name] = other.get(name, 0.0) + cpu - o0[pid][0]
    return {  # per second of the window: CPU s / s (cores), waits s / s, switches / s
        "window_s": elapsed,
        "compute_threads": len(busy),
        "compute_cpu_per_s": sum(b[0] for b in busy) / elapsed,
        "compute_runqueue_wait_per_s": sum(b[1] for b in busy) / elapsed,
        "compute_timeslices_per_s": sum(b[2] for b in busy) / elapsed,
        "compute_voluntary_switches_per_s": sum(b[3] for b in busy) / elapsed,
        "compute_involuntary_switches_per_s": sum(b[4] for b in busy) / elapsed,
        "other_threads_of_the_compute_processes": {
            "threads": len(idle),
            "cpu_per_s": sum(d[0] for d in idle) / elapsed,
            "timeslices_per_s": sum(d[2] for d in idle) / elapsed,
        },
        "other_processes_cpu_per_s": {k: v / elapsed for k, v in other.items() if v > 0},
    }


def throughput(s: dict) -> float:
    return s["train_samples"] / s["train_wall_s"]


def alternate(tmp: Path, runs: dict[str, list[str]], repeats: int, profile: bool = False) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name, overrides in runs.items():
            results[name].append(simulate(tmp / f"{name}-{rep}", overrides, profile=profile))
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


PARTS = ("throughput", "scaling", "memory", "clock")


def where_time_goes(runs: list[dict]) -> dict:
    """Medians over one backend's runs of :func:`round_phases` and of the window's CPU accounts."""
    out: dict = {k: float(np.median([r["phases"][k] for r in runs])) for k in runs[0]["phases"]}
    windows = [r["window"] for r in runs if r.get("window")]
    if windows:
        for key in windows[0]:
            if key.startswith("compute_") and key != "compute_threads":
                out[key] = float(np.median([w[key] for w in windows]))
        inner = [w["other_threads_of_the_compute_processes"] for w in windows]
        out["other_threads_of_the_compute_processes"] = {
            k: float(np.median([t[k] for t in inner])) for k in ("cpu_per_s", "timeslices_per_s")
        }
        other = [w["other_processes_cpu_per_s"] for w in windows]
        medians = {n: float(np.median([o.get(n, 0.0) for o in other])) for n in {n for o in other for n in o}}
        out["other_processes_cpu_per_s"] = dict(
            sorted(((n, round(v, 4)) for n, v in medians.items() if v >= 1e-3), key=lambda kv: -kv[1])
        )
        out["other_processes_cpu_per_s_total"] = float(np.median([sum(o.values()) for o in other]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run")
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
    results: dict = {
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
    }
    parts: dict = {}  # each part's git revision and time (a part not rerun keeps its last measurement)
    if Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        parts = old.get("parts") or {p: {"git": old.get("git"), "measured_at": old.get("measured_at")} for p in PARTS}
        results = {**old, **results}
    for part in args.only:
        parts[part] = {"git": git_revision(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results["parts"] = parts
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if "throughput" in args.only:
            pair = alternate(
                tmp,
                {
                    "inprocess": base,
                    "ray": base + ray,
                    "ray_prefetch": base + ray + ["simulation.prefetch=true", "simulation.worker_threads=1"],
                },
                args.repeats,
                profile=sys.platform.startswith("linux"),
            )
            ratios = [throughput(r) / throughput(i) for i, r in zip(pair["inprocess"], pair["ray"])]
            prefetch = [throughput(r) / throughput(i) for i, r in zip(pair["inprocess"], pair["ray_prefetch"])]
            results["throughput_samples_per_s"] = {name: [throughput(s) for s in runs] for name, runs in pair.items()}
            results["ray_over_inprocess"] = {
                "per_pair": ratios,
                "median": float(np.median(ratios)),
                "target": ">= 0.95",
            }
            results["ray_vs_inprocess_median"] = float(np.median(ratios))
            results["ray_prefetch_over_inprocess"] = {"per_pair": prefetch, "median": float(np.median(prefetch))}
            results["where_the_time_goes"] = {
                "note": "per round (s) and per second of the round loop (CPU s / s); medians over the runs",
                "inprocess": where_time_goes(pair["inprocess"]),
                "ray": where_time_goes(pair["ray"]),
            }

        if "scaling" in args.only:
            privtune = base + ray + ["mechanism.name=privtune", "simulation.worker_cpus=0.5"]
            scale = alternate(
                tmp, {"workers1": privtune, "workers2": privtune + ["simulation.device_workers=2"]}, args.repeats
            )
            results["scaling_privtune_samples_per_s"] = {
                "device_workers_1": [throughput(s) for s in scale["workers1"]],
                "device_workers_2": [throughput(s) for s in scale["workers2"]],
                "ratio_2_over_1": float(
                    np.median([throughput(b) / throughput(a) for a, b in zip(scale["workers1"], scale["workers2"])])
                ),
            }

        if "memory" in args.only:
            few_data = [
                "simulation.local_batch_size=4",
                "simulation.partition=iid",
            ]  # 10,000 devices: ~6.7 samples each
            mem = alternate(
                tmp,
                {
                    "devices10": base + few_data + ["simulation.devices=10"],
                    "devices10000": base + few_data + ["simulation.devices=10000"],
                },
                1,
            )
            peak10, peak10k = mem["devices10"][0]["driver_peak_rss_mb"], mem["devices10000"][0]["driver_peak_rss_mb"]
            results["memory_peak_rss_mb"] = {
                "devices_10": peak10,
                "devices_10000": peak10k,
                "ratio": peak10k / peak10,
                "target": "<= 1.2",
                "note": "in-process backend: the driver holds coordinator, worker and replica",
            }

        if "clock" in args.only:
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
            results["clock_validation"] = clock_check(clock_run)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
