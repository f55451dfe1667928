"""Sweeps: a grid of config overrides run as parallel Ray tasks, collected into one table (``sweep.csv``)."""

from .executor import run_sweep, sweep_table
from .runner import row_from_summary, run_point
from .spec import DEFAULT_ARMS, DEFAULT_GRID, Point, SweepSpec, expand, load_sweep, parse_sweep, point_config

__all__ = [
    "DEFAULT_ARMS",
    "DEFAULT_GRID",
    "Point",
    "SweepSpec",
    "expand",
    "load_sweep",
    "parse_sweep",
    "point_config",
    "row_from_summary",
    "run_point",
    "run_sweep",
    "sweep_table",
]
