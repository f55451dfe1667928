"""``privtune-ray simulate``: the engine (``engine.py``) on the configured population of virtual devices."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config
from .engine import SIMULATE, Coordinator, Setup, prepare, prepare_public_top, run_engine, start_attacks, start_backend


def run_simulation(
    cfg: Config, out: str | os.PathLike | None = None, resume: bool = False, log=print, hooks=None
) -> Path:
    """Rounds over ``cfg.simulation``'s population; returns the run directory."""
    return run_engine(cfg, out, resume, log, hooks, SIMULATE)


__all__ = ["Coordinator", "Setup", "prepare", "prepare_public_top", "run_simulation", "start_attacks", "start_backend"]
