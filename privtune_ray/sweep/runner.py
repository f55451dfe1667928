"""One sweep point: run it (train, simulate or attack) in its own run directory and reduce it to a table row."""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config

# Columns every row has, in this order; the per-attack columns follow.
ROW_KEYS = (
    "point",
    "status",
    "mechanism",
    "split_depth",
    "utility",
    "max_eia_asr_top1",
    "max_aia_advantage",
    "epsilon",
    "eta_per_unit",
    "dp_epsilon_edgeworth",
    "dp_epsilon_pld",
    "dp_epsilon_rdp",
    "bytes_up_per_sample",
    "bytes_up",
    "bytes_down",
    "steps",
    "rounds",
    "train_wall_s",
    "sim_time_s",
    "device_compute_s",
    "top_compute_s",
    "run_dir",
    "error",
)


def _train(cfg: Config, out: Path, resume: bool, log) -> Path:
    from ..drivers.train import run_training  # the drivers load torch: `report` and `--help` read rows without it

    return run_training(cfg, out, resume=resume, log=log)


def _simulate(cfg: Config, out: Path, resume: bool, log) -> Path:
    from ..drivers.simulate import run_simulation  # (as above)

    return run_simulation(cfg, out, resume=resume, log=log)


def _attack(cfg: Config, out: Path, resume: bool, log) -> Path:
    from ..drivers.attack import run_attack_evaluation  # (as above)

    if resume:  # an attack evaluation has no checkpoint: an interrupted one is redone
        shutil.rmtree(out, ignore_errors=True)
    return run_attack_evaluation(cfg, out, log=log)


# sweep.runner -> the command a point runs: (cfg, out, resume, log) -> run directory
RUNNERS: dict[str, Callable[[Config, Path, bool, Any], Path]] = {
    "train": _train,
    "simulate": _simulate,
    "attack": _attack,
}


def row_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's ``summary.json`` as one flat row: utility = dev accuracy; ASR/advantage per attack."""
    privacy = summary.get("privacy") or {}
    row: dict[str, Any] = {
        "mechanism": summary.get("defence"),
        "split_depth": summary.get("split_depth"),
        "utility": summary.get("utility"),
        "max_eia_asr_top1": summary.get("max_eia_asr_top1"),
        "max_aia_advantage": summary.get("max_aia_advantage"),
        "epsilon": privacy.get("epsilon"),
        "eta_per_unit": privacy.get("eta_per_unit"),
        "bytes_up_per_sample": summary.get("bytes_up_per_sample"),
        "bytes_up": summary.get("bytes_up"),
        "bytes_down": summary.get("bytes_down"),
        "steps": summary.get("steps"),
        "rounds": summary.get("rounds"),
        "train_wall_s": summary.get("train_wall_s"),
        "sim_time_s": summary.get("sim_time_s"),
        "device_compute_s": summary.get("device_compute_s"),
        "top_compute_s": summary.get("top_compute_s"),
        "run_dir": summary.get("run_dir"),
    }
    sent = summary.get("sent_samples", summary.get("train_samples"))  # simulate counts late uploads too
    for channel, n_bytes in (summary.get("bytes_by_channel") or {}).items():  # simulate: what crossed, per channel
        row[f"bytes_per_sample:{channel}"] = n_bytes / sent if sent else None
    spent = (summary.get("dp_sgd") or {}).get("spent") or {}
    for accountant in ("edgeworth", "pld", "rdp"):  # EW-Tune: the DP-SGD ε spent, per accountant
        if f"epsilon_{accountant}" in spent:
            row[f"dp_epsilon_{accountant}"] = spent[f"epsilon_{accountant}"]
    for attacker, asr in (summary.get("max_eia_asr_top1_by_attacker") or {}).items():  # adaptive, static
        row[f"max_eia_asr_top1:{attacker}"] = asr
    for attack, result in (summary.get("attacks") or {}).items():
        metric = "asr_top1" if result.get("kind") == "inversion" else "advantage"
        row[f"{attack}:{metric}"] = result.get(metric)
    return row


def run_point(cfg: Config, out: str | Path, runner: str, threads: int | None = None) -> dict[str, Any]:
    """Run one point into ``out`` (resuming an interrupted run there; a finished one is only read back).

    Never raises for the point's own failure: the row says ``status: failed`` and carries the error, so one
    bad point does not end the sweep. ``threads``: torch threads when the config leaves them unset.
    """
    out = Path(out)
    summary_path = out / "summary.json"
    error = ""
    if not summary_path.exists():
        cfg.train.progress = False
        if cfg.train.threads is None and threads:
            cfg.train.threads = threads
        if cfg.simulation.backend == "ray":  # the point is itself a Ray task: its devices run in-process
            cfg.simulation.backend, cfg.simulation.address = "inprocess", None
        out.mkdir(parents=True, exist_ok=True)
        with (out.parent / f"{out.name}.log").open("a") as log_file:

            def log(line: str) -> None:
                print(line, file=log_file, flush=True)

            try:
                RUNNERS[runner](cfg, out, (out / "config.yaml").exists(), log)
            except Exception as exc:  # recorded in the row, the sweep goes on
                error = f"{exc.__class__.__name__}: {exc}"
                log(traceback.format_exc())
    return read_row(out) or {"point": out.name, "status": "failed", "error": error or "the run wrote no summary.json"}


def read_row(out: Path) -> dict[str, Any] | None:
    """The row of a finished point's run directory (None while it has no ``summary.json``)."""
    summary_path = Path(out) / "summary.json"
    if not summary_path.exists():
        return None
    row = row_from_summary(json.loads(summary_path.read_text()))
    if (
        row["split_depth"] is None and (Path(out) / "config.yaml").exists()
    ):  # a summary without it: the run's config says
        import yaml

        row["split_depth"] = yaml.safe_load((Path(out) / "config.yaml").read_text())["model"]["split_depth"]
    return {**row, "point": Path(out).name, "status": "done", "error": ""}
