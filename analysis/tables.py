"""Find result directories under a folder and load them as pandas tables.

A sweep directory holds ``sweep.csv`` (its ``points/`` belong to it and are not searched); a run holds
``summary.json``, whose ``command`` says whether it is a train run (with ``metrics.csv``) or a simulation (with
``devices.csv``; a train run, one device on the same engine, holds one too).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from privtune_ray.sweep.runner import ROW_KEYS
from privtune_ray.sweep.spec import SHORT_KEYS

from .style import REFERENCE, format_value

SWEEP_CSV = "sweep.csv"
SUMMARY = "summary.json"
# Override columns that define the design, not the privacy setting.
DESIGN_KEYS = ("mechanism.name", "model.split_depth")
ASR = ":asr_top1"
ADVANTAGE = ":advantage"


def _discover(root: str | Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {"sweep": [], "simulation": [], "train": []}
    if not Path(root).is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        here, files = Path(dirpath), set(filenames)
        dirnames.sort()
        if SWEEP_CSV in files:
            found["sweep"].append(here)
            dirnames[:] = [d for d in dirnames if d != "points"]
        if SUMMARY not in files:
            continue
        if _command(here) == "train" or ("metrics.csv" in files and "devices.csv" not in files):
            found["train"].append(here)
        elif "devices.csv" in files:
            found["simulation"].append(here)
    return found


def _command(run: Path) -> str | None:
    """The command a run's summary names (``train`` runs hold the engine's ``devices.csv`` too)."""
    try:
        return json.loads((run / SUMMARY).read_text()).get("command")
    except (OSError, ValueError):
        return None


def find_sweeps(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a ``sweep.csv``."""
    return _discover(root)["sweep"]


def find_simulations(root: str | Path) -> list[Path]:
    """Every simulation run directory under ``root``, outside sweeps' ``points/``."""
    return _discover(root)["simulation"]


def find_train_runs(root: str | Path) -> list[Path]:
    """Every single-process train run directory under ``root``, outside sweeps' ``points/``."""
    return _discover(root)["train"]


def _read_sweep(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    table = pd.read_csv(path / SWEEP_CSV if path.is_dir() else path)
    for column in ROW_KEYS:
        if column not in table.columns:
            table[column] = pd.NA if column in ("status", "mechanism", "point", "error", "run_dir") else float("nan")
    # Simulation summaries carry no split_depth and older rows may lack the mechanism: take the overrides.
    for column, override in (("mechanism", "mechanism.name"), ("split_depth", "model.split_depth")):
        if override in table.columns:
            table[column] = table[column].combine_first(table[override])
    return table


def load_sweep(path: str | Path) -> pd.DataFrame:
    """The finished points (``status == done``) of a sweep directory (or its ``sweep.csv``), index reset."""
    table = _read_sweep(path)
    return table[table["status"] == "done"].reset_index(drop=True)


def failed_points(path: str | Path) -> pd.DataFrame:
    """The points of a sweep that failed: ``point``, ``error`` and the point's overrides."""
    table = _read_sweep(path)
    failed = table[table["status"] != "done"]
    return failed[["point", "error", *override_columns(table)]].reset_index(drop=True)


def override_columns(table: pd.DataFrame) -> list[str]:
    """The swept config keys (columns after the fixed ones, before the per-attack ones)."""
    return [c for c in table.columns if c not in ROW_KEYS and ":" not in c]


def eia_columns(table: pd.DataFrame) -> list[str]:
    """Per-attack inversion columns ``eia_*:asr_top1`` (ASR top-1 in [0, 1])."""
    return [c for c in table.columns if c.endswith(ASR)]


def aia_columns(table: pd.DataFrame) -> list[str]:
    """Per-attack attribute columns ``*:advantage`` (accuracy above the majority baseline, in [-1, 1])."""
    return [c for c in table.columns if c.endswith(ADVANTAGE)]


def privacy_parameter(table: pd.DataFrame, mechanism: str) -> str | None:
    """The override column holding ``mechanism``'s privacy parameter (e.g. ``mechanism.eta``), or None.

    Candidates are override columns other than the mechanism's name and split depth that are set for its
    rows; one qualifies if it varies across them or is left unset for other mechanisms. Among those, a
    ``mechanism.*`` key wins (over e.g. a swept ``seed``), then a varying one, then the first in column order.
    The reference ``none`` has no privacy parameter.
    """
    if "mechanism" not in table.columns or mechanism == REFERENCE:
        return None
    mine = table["mechanism"] == mechanism
    ranked = []
    for order, column in enumerate(c for c in override_columns(table) if c not in DESIGN_KEYS):
        values = table.loc[mine, column]
        if values.isna().all():
            continue
        varies = values.nunique(dropna=True) > 1
        specific = bool(table.loc[~mine, column].isna().any())
        if varies or specific:
            ranked.append((not column.startswith("mechanism."), not varies, order, column))
    return min(ranked)[-1] if ranked else None


def setting(row: pd.Series, parameter: str | None, extras: bool = True) -> str:
    """A point's privacy setting as ``eta=10`` or ``sigma=0.5`` (the sweep's short key names), or ``""``;
    with ``extras``, followed by the point's other swept keys (``eta=4, proxy_head=True``)."""
    keys = [parameter] if parameter is not None else []
    if extras:
        fixed = {"mechanism.name", "model.split_depth", parameter}
        keys += [k for k in row.index if "." in k and ":" not in k and k not in ROW_KEYS and k not in fixed]
    return ", ".join(f"{short_key(k)}={format_value(row[k])}" for k in keys if not pd.isna(row.get(k)))


def short_key(key: str) -> str:
    """A config key as point slugs name it: ``mechanism.noise_multiplier`` → ``sigma``, else its last part."""
    return SHORT_KEYS.get(key) or key.rsplit(".", 1)[-1]


def depth_label(depth: Any) -> str:
    """``m=2`` for a split depth; ``m=per tier`` when the rows carry none (simulations set it per tier)."""
    return "m=per tier" if pd.isna(depth) else f"m={int(depth)}"


def mechanisms(table: pd.DataFrame) -> list[str]:
    """The mechanisms in a table, the reference (``none``) first, the rest sorted."""
    names = sorted({str(m) for m in table["mechanism"].dropna()})
    return sorted(names, key=lambda m: m != REFERENCE)


@dataclass
class SimulationRun:
    """One simulation run directory: its summary and per-device / per-round / evaluation tables."""

    path: Path
    summary: dict[str, Any]
    devices: pd.DataFrame
    rounds: pd.DataFrame
    evals: pd.DataFrame | None

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run directory's ``summary.json`` as a dict."""
    return json.loads((Path(path) / SUMMARY).read_text())


def load_simulation(path: str | Path) -> SimulationRun:
    """A simulation run directory (``eval.csv`` is optional)."""
    path = Path(path)
    evals = path / "eval.csv"
    return SimulationRun(
        path,
        load_summary(path),
        pd.read_csv(path / "devices.csv"),
        pd.read_csv(path / "rounds.csv"),
        pd.read_csv(evals) if evals.exists() else None,
    )
