"""What a sweep runs: the ``sweep:`` section of a config file, expanded into grid points.

A point is a set of ``key=value`` overrides on the base config. The points are

    product(grid) × ⋃_arm product(arm)

so shared axes (the split depth m) cross every arm, and each arm (a mechanism with its own privacy
parameter) sweeps only the keys that mean something to it. Without ``arms`` the default covers every
mechanism in :data:`DEFAULT_ARMS` over its privacy parameter; without ``grid``, m ∈ {0, 1, 2, 3}.

    sweep:
      runner: train                 # train | simulate | attack
      grid: {model.split_depth: [1, 2]}
      arms:
        - {mechanism.name: none}
        - {mechanism.name: privtune, mechanism.eta: [5, 10, 20]}
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, apply_overrides, config_from_dict, read_config_file

RUNNERS = ("train", "simulate", "attack")
EXECUTORS = ("ray", "local")

# Each mechanism's privacy parameter and the values a default sweep takes (strongest noise first where
# it matters). η is d_χ's per-unit-distance parameter; σ/λ the DP noise multipliers of the clipped rows.
DEFAULT_ARMS: dict[str, dict[str, list[Any]]] = {
    "none": {},
    "dchi": {"mechanism.eta": [2.0, 5.0, 10.0, 50.0]},
    "gaussian": {"mechanism.noise_multiplier": [0.1, 0.2, 0.5, 1.0]},
    "laplace": {"mechanism.noise_multiplier": [0.05, 0.1, 0.2, 0.5]},
    "privtune": {"mechanism.eta": [2.0, 5.0, 10.0, 50.0]},
}
# Designs other than plain split learning, each over its privacy parameter (EW-Tune: the run's target ε).
DEFAULT_DESIGN_ARMS: dict[str, dict[str, list[Any]]] = {
    "ewtune": {"design.target_epsilon": [1.0, 3.0, 8.0], "design.calibrate_with": ["pld"]},  # σ for the PLD bound
}
DEFAULT_GRID: dict[str, list[Any]] = {"model.split_depth": [0, 1, 2, 3]}
MECHANISM_KEY, DESIGN_KEY = "mechanism.name", "design.name"  # the keys that name a variant
SHORT_KEYS = {
    MECHANISM_KEY: "",
    DESIGN_KEY: "",
    "model.split_depth": "m",
    "mechanism.noise_multiplier": "sigma",
    "design.target_epsilon": "eps",
    "design.calibrate_with": "cal-",
    "seed": "seed",
    "train.warm_start.enabled": "warm",
}
NAME_KEYS = (MECHANISM_KEY, DESIGN_KEY)


@dataclass
class SweepSpec:
    """The ``sweep:`` section. ``cpus_per_point``/``gpus_per_point``: the Ray resources of one point's task;
    ``local_workers``: points run at once by ``executor: local`` (subprocesses; 1 = in this process)."""

    runner: str = "train"
    grid: dict[str, list[Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_GRID))
    arms: list[dict[str, list[Any]]] = field(default_factory=lambda: default_arms())
    executor: str = "ray"
    address: str | None = None  # ray: null = a local Ray; "auto" or host:port = a running cluster
    cpus_per_point: float = 1.0
    gpus_per_point: float = 0.0
    local_workers: int = 1

    def validate(self) -> None:
        if self.runner not in RUNNERS:
            raise ConfigError(
                f"invalid value for config key 'sweep.runner': {self.runner!r}; choose one of {', '.join(RUNNERS)}"
            )
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"invalid value for config key 'sweep.executor': {self.executor!r}; choose one of {', '.join(EXECUTORS)}"
            )
        if self.cpus_per_point <= 0 or self.gpus_per_point < 0:
            raise ConfigError(
                "invalid value for config key 'sweep.cpus_per_point'/'sweep.gpus_per_point': cpus must be > 0, gpus >= 0"
            )
        if not isinstance(self.local_workers, int) or self.local_workers < 1:
            raise ConfigError(
                f"invalid value for config key 'sweep.local_workers': {self.local_workers!r}; must be an integer >= 1"
            )
        for where, axes in [("sweep.grid", self.grid), *((f"sweep.arms[{i}]", arm) for i, arm in enumerate(self.arms))]:
            for key, values in axes.items():
                if not values:
                    raise ConfigError(f"invalid value for config key '{where}.{key}': give at least one value")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: ``overrides`` applied to the base config; ``slug`` names its directory."""

    index: int
    slug: str
    overrides: dict[str, Any]

    def override_args(self) -> list[str]:
        return [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in self.overrides.items()
        ]


def default_arms() -> list[dict[str, list[Any]]]:
    mechanisms = [{MECHANISM_KEY: [name], **copy.deepcopy(grid)} for name, grid in DEFAULT_ARMS.items()]
    return mechanisms + [{DESIGN_KEY: [name], **copy.deepcopy(grid)} for name, grid in DEFAULT_DESIGN_ARMS.items()]


def _axes(raw: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must map config keys to values, e.g. {{mechanism.eta: [5, 10]}}")
    return {str(k): (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in raw.items()}


def parse_sweep(raw: dict[str, Any] | None) -> SweepSpec:
    """The ``sweep:`` section (a mapping, or None for the defaults) as a checked :class:`SweepSpec`."""
    raw = dict(raw or {})
    known = {"runner", "grid", "arms", "executor", "address", "cpus_per_point", "gpus_per_point", "local_workers"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config key 'sweep.{key}'; valid keys at sweep: {', '.join(sorted(known))}")
    spec = SweepSpec()
    if raw.get("grid", None) is not None:  # null or absent: the default grid
        spec.grid = _axes(raw.pop("grid"), "sweep.grid")
    raw.pop("grid", None)
    if raw.get("arms", None) is None:  # null or absent: the default arms
        raw.pop("arms", None)
    else:
        arms = raw.pop("arms")
        if not isinstance(arms, list):
            raise ConfigError("config key 'sweep.arms' must be a list of mappings, e.g. [{mechanism.name: none}]")
        spec.arms = [_axes(arm, f"sweep.arms[{i}]") for i, arm in enumerate(arms)] or [{}]
    for key, value in raw.items():
        setattr(spec, key, value)
    for key in ("cpus_per_point", "gpus_per_point"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key 'sweep.{key}' must be a number, got {value!r}")
        setattr(spec, key, float(value))
    spec.validate()
    return spec


def apply_grid_args(spec: SweepSpec, grid_args: list[str]) -> None:
    """``--grid key=v1,v2``: set that axis for every point (it replaces the key in the grid and in every arm)."""
    for item in grid_args:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r} must look like key=v1,v2, e.g. --grid mechanism.eta=5,10,20")
        key = key.strip()
        spec.grid[key] = [yaml.safe_load(v) for v in text.split(",")]
        for arm in spec.arms:
            arm.pop(key, None)


def _slug(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        short = SHORT_KEYS.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts) or "base")


def expand(spec: SweepSpec) -> list[Point]:
    """Every point, arms in order; within a point the mechanism's keys come first, then the others in order."""
    points: list[Point] = []
    seen: dict[str, dict[str, Any]] = {}
    for arm in spec.arms or [{}]:
        axes = {**{k: v for k, v in spec.grid.items() if k not in arm}, **arm}
        # The mechanism (or design), then its parameters: the slug reads "privtune-eta10-m2", "ewtune-eps3-cal-pld-m2".
        keys = sorted(
            axes, key=lambda k: (k not in NAME_KEYS, not k.startswith(("mechanism.", "design.")), list(axes).index(k))
        )
        for values in itertools.product(*(axes[k] for k in keys)):
            overrides = dict(zip(keys, values))
            slug = _slug(overrides)
            if slug in seen:
                if seen[slug] == overrides:
                    continue  # two arms that name the same run (e.g. `none` listed twice)
                raise ConfigError(
                    f"sweep points {seen[slug]} and {overrides} would share the directory {slug!r}: "
                    f"use values that print differently, or keys whose last parts differ"
                )
            seen[slug] = overrides
            points.append(Point(len(points), slug, overrides))
    return points


def point_config(base: dict[str, Any], point: Point) -> Config:
    """The point's full config (the base with its overrides), checked; a bad key names the point."""
    raw = copy.deepcopy(base)
    try:
        apply_overrides(raw, point.override_args(), files_resolved=True)
        raw["name"] = f"{raw.get('name', 'run')}-{point.slug}"
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"sweep point {point.slug!r}: {exc}") from None


def load_sweep(
    path: str | Path,
    overrides: list[str] | None = None,
    grid_args: list[str] | None = None,
) -> tuple[dict[str, Any], SweepSpec, list[Point]]:
    """Read a config file with an optional ``sweep:`` section; returns (base raw config, spec, points).

    ``overrides`` (``--set``) apply to the file (``sweep.*`` keys to the spec); ``grid_args`` (``--grid``) to the spec. Every point's config
    is built and checked here, before anything runs.
    """
    raw = read_config_file(path)
    apply_overrides(raw, overrides or [])  # `--set sweep.gpus_per_point=0.5` reaches the sweep section too
    spec = parse_sweep(raw.pop("sweep", None))
    apply_grid_args(spec, grid_args or [])
    points = expand(spec)
    for point in points:
        point_config(raw, point)
    return raw, spec, points
