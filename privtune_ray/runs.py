"""A run directory: everything a run writes, as it is produced.

config.yaml     the resolved config (every key, defaults included)
env.json        seed, package versions, git revision, command line, host, start time
metrics.csv     one row per ``train.log_every`` steps, appended as training goes
eval.csv        one row per evaluation
checkpoint.pt   the latest resumable state (every ``train.checkpoint_every`` steps)
checkpoint.prev.pt  the one before it: a resume falls back to it when the latest is corrupted
summary.json    the final numbers, written when the run finishes
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .config import Config, config_from_dict, dump_config
from .errors import ConfigError

# Keys that may differ when a run is resumed: where and how fast it runs, not what it computes.
RESUMABLE_CHANGES = {"train.progress", "train.threads", "train.device"} | {
    f"simulation.{key}"
    for key in (
        "backend",
        "address",
        "device_workers",
        "worker_cpus",
        "worker_threads",
        "top_replicas",
        "replica_cpus",
        "replica_threads",
        "replica_gpus",
        "prefetch",
        "max_retries",
    )
}
PACKAGES = ("privtune-ray", "torch", "transformers", "datasets", "peft", "ray", "numpy", "pandas", "safetensors")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> dict[str, Any]:
    """The commit of the project checkout this package runs from (``None`` outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def check_output_dir(out: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, in one line and before anything is written, an output directory that names a file or that cannot be
    created (its nearest existing ancestor is a file, or is not writable)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a file, not a directory: choose a directory path")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} cannot be created: {str(ancestor)!r} is a file; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag} {str(path)!r} cannot be created: {str(ancestor)!r} is not writable; choose a path you can write"
        )


def make_output_dir(path: Path, flag: str = "--out") -> None:
    """``mkdir -p`` of an output directory; an OS refusal (a read-only or virtual file system) in one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {str(path)!r} cannot be created ({exc.strerror}): choose another path") from None


def _cell(value: Any) -> Any:
    """A CSV cell as pandas writes it: None and NaN empty, everything else as ``str`` gives it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


class RunDir:
    """Create (or reopen, to resume) a run directory and append results to it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._columns: dict[str, list[str]] = {}  # table -> its CSV header, as last written or read

    @classmethod
    def create(cls, cfg: Config, out: str | os.PathLike | None = None, resume: bool = False) -> RunDir:
        path = Path(out) if out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_output_dir(path)
        run = cls(path)
        if run.config_path.exists():
            if not resume:
                raise ConfigError(
                    f"run directory {str(path)!r} already holds a run: pass --resume to continue it, "
                    f"or choose another --out"
                )
            run._check_same_config(cfg)
            return run
        if resume:
            raise ConfigError(
                f"--resume: {str(path)!r} holds no run to resume (no config.yaml); drop --resume to start one"
            )
        make_output_dir(path)
        dump_config(cfg, run.config_path)
        run._write_json(
            "env.json",
            {
                "seed": cfg.seed,
                "versions": package_versions(),
                "git": git_revision(),
                "argv": sys.argv,
                "host": socket.gethostname(),
                "platform": platform.platform(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        return run

    def _check_same_config(self, cfg: Config) -> None:
        with self.config_path.open() as f:
            stored = config_from_dict(yaml.safe_load(f)).to_dict()
        new = cfg.to_dict()
        diffs = sorted(d for d in _flat_diff(stored, new) if d not in RESUMABLE_CHANGES)
        if diffs:
            raise ConfigError(
                f"--resume: the config differs from the one stored in {str(self.config_path)!r} at "
                f"{', '.join(diffs)}; resume with the same config, or start a new run with another --out"
            )

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def has_checkpoint(self) -> bool:
        """A checkpoint (latest or previous) is on disk: a resumed run restores from it."""
        return self.checkpoint_path.exists() or self.previous_checkpoint_path.exists()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.path / "checkpoint.prev.pt"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    # ------------------------------------------------------------------ writing

    def append(self, table: str, row: dict[str, Any]) -> None:
        """Append one row to ``<table>.csv`` (header written with the first row)."""
        self.append_rows(table, [row])

    def append_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to ``<table>.csv`` (header written with the first rows). Rows are aligned to the file's
        columns (a column they lack is left empty); a row with a column the file lacks rewrites the file with it.
        The header is kept after the first read, so a row costs one small write (a round writes two or three)."""
        if not rows:
            return
        path = self.path / f"{table}.csv"
        keys = list(dict.fromkeys(k for row in rows for k in row))
        columns = self._columns.get(table) if path.exists() else None
        if columns is None and path.exists():
            with path.open(newline="") as f:
                columns = next(csv.reader(f), [])
        if columns is not None and not set(keys) <= set(columns):  # a new column: the file is rewritten with it
            frame = pd.concat([pd.read_csv(path), pd.DataFrame(rows)], ignore_index=True)
            frame.to_csv(path, index=False)
            self._columns[table] = list(frame.columns)
            return
        fresh = columns is None
        columns = keys if columns is None else columns
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(columns)
            writer.writerows([[_cell(row.get(c)) for c in columns] for row in rows])
        self._columns[table] = columns

    def truncate(self, table: str, after_step: int, key: str = "step") -> None:
        """Drop rows with ``key > after_step`` (written after the checkpoint a resumed run restarts from)."""
        path = self.path / f"{table}.csv"
        if path.exists():
            df = pd.read_csv(path)
            df[df[key] <= after_step].to_csv(path, index=False)
            self._columns[table] = list(df.columns)

    def has_row(self, table: str, step: int, key: str = "step") -> bool:
        """Whether ``table.csv`` holds a row with ``key == step``."""
        path = self.path / f"{table}.csv"
        return path.exists() and bool((pd.read_csv(path)[key] == step).any())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically as the latest checkpoint; the latest until now becomes the previous one."""
        import torch

        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        if self.checkpoint_path.exists():
            os.replace(self.checkpoint_path, self.previous_checkpoint_path)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, log=print) -> dict[str, Any]:
        """The latest checkpoint's state; the previous one, with a warning, when the latest cannot be read. One
        clear error naming the file when neither can (the rows after the state's step are then the caller's to drop)."""
        import torch

        errors = []
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            if not path.exists():
                continue
            try:
                state = torch.load(path, weights_only=False, map_location="cpu")  # a GPU run resumes anywhere
            except Exception as exc:  # a truncated zip, a pickle error: the file is unreadable
                errors.append(f"{str(path)!r} is corrupted ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            if errors:
                log(f"privtune-ray: warning: {errors[0]}; resuming from the previous checkpoint {str(path)!r}")
            return state
        raise ConfigError(
            f"cannot resume: {'; '.join(errors) or 'no checkpoint in ' + repr(str(self.path))}: rerun without "
            f"--resume into a new --out to start fresh"
        )

    def remove_checkpoints(self) -> None:
        """The run finished (summary.json marks it): its checkpoints are no longer needed."""
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            path.unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_json("summary.json", summary)

    def write_json(self, name: str, obj: dict[str, Any]) -> None:
        """``<name>.json`` in the run directory, written atomically (a record a resumed session reads back)."""
        self._write_json(f"{name}.json", obj)

    def read_json(self, name: str) -> dict[str, Any]:
        """``<name>.json`` as written by :meth:`write_json` ({} when there is none)."""
        path = self.path / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_json(self, name: str, obj: dict[str, Any]) -> None:
        write_atomic(self.path / name, json.dumps(obj, indent=2, default=str) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: readers see the old
    file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _flat_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


@dataclass
class Totals:
    """Cumulative totals of a run, ``train`` and ``simulate`` alike (checkpointed). Seconds are measured wall
    seconds on this machine, except ``sim_time_s`` (the simulated clock); bytes are payload bytes on the wire."""

    step: int = 0  # train: optimiser steps
    epoch: int = 0  # train: the epoch in progress
    batch_in_epoch: int = 0  # train: batches of ``epoch`` already trained on
    rounds_done: int = 0  # simulate
    samples: int = 0  # samples the cloud trained on
    sent: int = 0  # simulate: samples uploaded (late ones included)
    tokens: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    device_compute_s: float = 0.0  # bottom + mechanism
    mechanism_compute_s: float = 0.0  # the mechanism's share of device_compute_s
    top_compute_s: float = 0.0  # the cloud's forward, backward and step
    comm_s: float = 0.0  # train: serialisation + deserialisation
    train_wall_s: float = 0.0  # real seconds in the training loop (all sessions of a resumed run)
    sim_time_s: float = 0.0  # simulate: the simulated clock
    dropped: int = 0
    late: int = 0
    rollbacks: int = 0
    channel_bytes: dict = field(default_factory=dict)  # simulate: bytes per channel (act_up, grad_down, ...)


@dataclass
class Summary:
    """``summary.json``: the fields every run has (``train``, ``simulate``, ``attack``; ``sweep`` and ``report`` read these
    without fallbacks), then the command's and the design's own ``details`` at the same level."""

    name: str
    command: str  # train | simulate | attack
    dataset: str
    model: str
    design: str
    mechanism: str
    defence: str  # what protects the uploads: the mechanism, or the design (+ mechanism) (Design.defence)
    split_depth: int
    seed: int
    privacy: dict[str, Any]  # the mechanism's guarantee on what was uploaded
    utility: float | None  # dev accuracy (classification) or token F1 (generation); None: nothing trained (attack)
    utility_metric: str
    dev_loss: float | None  # nats per sample
    train_samples: int
    tokens: int
    bytes_up: int
    bytes_down: int
    device_compute_s: float
    mechanism_compute_s: float
    top_compute_s: float
    train_wall_s: float
    train_samples_per_s: float
    run_dir: str
    finished_at: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        cfg: Config,
        command: str,
        defence: str,
        *,
        privacy,
        utility,
        dev_loss,
        totals: Totals,
        details,
        run_dir,
        utility_metric: str = "accuracy",
    ) -> Summary:
        t = totals
        return cls(
            cfg.name,
            command,
            cfg.data.dataset,
            cfg.model.name,
            cfg.design.name,
            cfg.mechanism.name,
            defence,
            cfg.model.split_depth,
            cfg.seed,
            privacy,
            utility,
            utility_metric,
            dev_loss,
            t.samples,
            t.tokens,
            t.bytes_up,
            t.bytes_down,
            t.device_compute_s,
            t.mechanism_compute_s,
            t.top_compute_s,
            t.train_wall_s,
            t.samples / max(t.train_wall_s, 1e-9),
            str(run_dir),
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            details,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "details"}
        return {**out, **self.details}


class RunSession:
    """What ``train`` and ``simulate`` share around their loops: the run directory, the refusal to resume a
    finished run, the checkpoints (latest + previous) and the summary that ends the run."""

    def __init__(self, run: RunDir):
        self.run = run

    @classmethod
    def open(cls, cfg: Config, out: str | os.PathLike | None, resume: bool) -> RunSession:
        run = RunDir.create(cfg, out, resume=resume)
        if resume and run.summary_path.exists():
            raise ConfigError(
                f"--resume: the run in {str(run.path)!r} has finished (summary.json exists); start a new one"
            )
        return cls(run)

    @property
    def has_checkpoint(self) -> bool:
        return self.run.has_checkpoint

    def save(self, state: dict[str, Any]) -> None:
        self.run.save_checkpoint(state)

    def load(self, log=print) -> dict[str, Any]:
        return self.run.load_checkpoint(log)

    def finish(self, summary: Summary) -> None:
        """Write ``summary.json`` (it marks the run finished) and drop the checkpoints."""
        self.run.write_summary(summary.to_dict())
        self.run.remove_checkpoints()
