"""Sweeps: a grid of config overrides run as parallel Ray tasks, collected into one table (``sweep.csv``).

The names load on first use (PEP 562): the CLI reads ``spec.EXECUTORS`` without importing pandas.
"""

from ..lazy import lazy_getattr

_LAZY = {
    "run_sweep": "executor",
    "sweep_table": "executor",
    "row_from_summary": "runner",
    "run_point": "runner",
    **dict.fromkeys(
        ("DEFAULT_ARMS", "DEFAULT_GRID", "Point", "SweepSpec", "expand", "load_sweep", "parse_sweep", "point_config"),
        "spec",
    ),
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
