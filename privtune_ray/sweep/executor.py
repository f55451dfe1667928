"""Run a sweep's points as parallel Ray tasks (or one after another, ``executor: local``) into one directory.

    DIR/sweep.json          the base config, the sweep spec, every point, provenance
    DIR/sweep.csv           one row per finished point, rewritten as each one finishes
    DIR/points/<slug>/      each point's own run directory (config.yaml, summary.json, ...)
    DIR/points/<slug>.log   its log

Running the same command again resumes: finished points are read back, interrupted ones resume from their
checkpoint, and points added to the grid since are run. A different base config in DIR is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..runs import git_revision, make_output_dir, package_versions, write_atomic
from .runner import ROW_KEYS, read_row, run_point
from .spec import Point, SweepSpec, point_config


def sweep_table(points: list[Point], rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows in point order: the fixed columns, then the point's overrides, then one column per attack."""
    records = [{**rows[p.slug], **p.overrides} for p in points if p.slug in rows]
    override_keys = list(dict.fromkeys(k for p in points for k in p.overrides))
    attack_keys = sorted({k for r in records for k in r if ":" in k})
    columns = [*ROW_KEYS, *(k for k in override_keys if k not in ROW_KEYS), *attack_keys]
    return pd.DataFrame(records, columns=columns)


def _record(out: Path, base: dict[str, Any], spec: SweepSpec, points: list[Point]) -> list[Point]:
    """Write ``sweep.json``; returns every point the directory holds (earlier runs' first, then the new ones)."""
    meta_path = out / "sweep.json"
    known: list[Point] = []
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())
        if previous.get("base") != json.loads(json.dumps(base)):
            raise ConfigError(
                f"{str(out)!r} holds a sweep of another base config: choose another --out, or run the same config "
                f"(only the grid may grow) to resume it"
            )
        if previous.get("spec", {}).get("runner", spec.runner) != spec.runner:
            raise ConfigError(
                f"{str(out)!r} holds a sweep run by {previous['spec']['runner']!r}, not {spec.runner!r}: "
                f"choose another --out"
            )
        known = [Point(i, p["slug"], p["overrides"]) for i, p in enumerate(previous.get("points", []))]
    slugs = {p.slug for p in known}
    every = known + [
        Point(len(known) + i, p.slug, p.overrides) for i, p in enumerate(q for q in points if q.slug not in slugs)
    ]
    write_atomic(
        meta_path,
        json.dumps(
            {
                "base": base,
                "spec": asdict(spec),
                "points": [{"slug": p.slug, "overrides": p.overrides} for p in every],
                "versions": package_versions(),
                "git": git_revision(),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
            default=str,
        ),
    )
    return every


def _exit_with(parent: int, poll_s: float = 1.0) -> None:
    """Pool-worker initializer: a daemon thread ends this worker once ``parent`` (the sweep's driver) is gone.

    A driver stopped by SIGTERM or SIGKILL never shuts its pool down, and its spawned workers would go on
    running their points at full CPU. A worker's own run is checkpointed, so the next ``sweep`` resumes it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="privtune-ray-parent-watch", daemon=True).start()


def _run_local(base, spec: SweepSpec, points: list[Point], out: Path, finished) -> None:
    """``executor: local``: in this process, or ``local_workers`` spawned subprocesses sharing the cores."""
    if spec.local_workers == 1:
        for point in points:
            finished(point, run_point(point_config(base, point), out / "points" / point.slug, spec.runner))
        return
    threads = max(1, (os.cpu_count() or 1) // spec.local_workers)
    with ProcessPoolExecutor(
        spec.local_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with,
        initargs=(os.getpid(),),
    ) as pool:
        pending = {
            pool.submit(run_point, point_config(base, p), out / "points" / p.slug, spec.runner, threads): p
            for p in points
        }
        for future in as_completed(pending):
            point = pending[future]
            try:
                row = future.result()
            except Exception as exc:  # a crashed subprocess fails its point only
                row = {"point": point.slug, "status": "failed", "error": f"{exc.__class__.__name__}: {exc}"}
            finished(point, row)


def run_sweep(base: dict[str, Any], spec: SweepSpec, points: list[Point], out: str | Path, log=print) -> Path:
    """Run every point (see the module doc); returns ``out``. Rows reach ``sweep.csv`` as points finish."""
    out = Path(out).resolve()  # absolute: Ray workers (on other nodes too) write the points' directories
    if spec.executor == "ray":
        _check_gpus(base, spec)
    make_output_dir(out / "points")
    every = _record(out, base, spec, points)
    table_path = out / "sweep.csv"
    # Points of earlier runs of this directory that are not in this run stay in the table.
    current = {p.slug for p in points}
    earlier = {p.slug: read_row(out / "points" / p.slug) for p in every if p.slug not in current}
    rows = {slug: row for slug, row in earlier.items() if row is not None}
    done_now = []

    def finished(point: Point, row: dict[str, Any]) -> None:
        rows[point.slug] = row
        done_now.append(point.slug)
        write_atomic(table_path, sweep_table(every, rows).to_csv(index=False))
        numbers = [
            f"{label} {row[key]:.4f}"
            for label, key in (("utility", "utility"), ("max EIA ASR", "max_eia_asr_top1"))
            if isinstance(row.get(key), (int, float))
        ]
        done = ", ".join(numbers) or "done" if row["status"] == "done" else f"FAILED ({row['error']})"
        log(f"privtune-ray: [{len(done_now)}/{len(points)}] {point.slug}: {done}")

    log(f"privtune-ray: sweep of {len(points)} points ({spec.runner}, {spec.executor}) into {out}")
    if spec.executor == "local":
        _run_local(base, spec, points, out, finished)
        return out

    import ray

    from ..simulation.backend import connect_ray

    connect_ray(spec.address)
    task = ray.remote(num_cpus=spec.cpus_per_point, num_gpus=spec.gpus_per_point)(run_point)
    threads = max(1, int(spec.cpus_per_point))
    pending = {
        task.remote(point_config(base, p), str(out / "points" / p.slug), spec.runner, threads): p for p in points
    }
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # short waits: Ctrl-C stops the sweep
            if not ready:
                continue
            point = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as exc:  # a crashed task (e.g. out of memory) fails its point only
                row = {
                    "point": point.slug,
                    "status": "failed",
                    "error": f"{exc.__class__.__name__}: {exc}".splitlines()[0],
                }
            finished(point, row)
    except KeyboardInterrupt:
        for ref in pending:  # no task goes on writing into a point a rerun will resume
            ray.cancel(ref, force=True)
        raise
    return out


def _check_gpus(base: dict[str, Any], spec: SweepSpec) -> None:
    """Ray hides GPUs from a task that asks for none: a point whose top wants one must ask for a share."""
    device = (base.get("train") or {}).get("device", "cpu")
    if device in ("cuda", "auto") and spec.gpus_per_point == 0:
        raise ConfigError(
            f"train.device={device!r} but Ray gives each point no GPU: set sweep.gpus_per_point "
            f"(e.g. --set sweep.gpus_per_point=0.25), or run with --executor local"
        )
