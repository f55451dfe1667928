"""Config checks that need a feature registry: names only a registry knows.

:func:`privtune_ray.config.load_config` checks the schema, the types and the ranges without importing any feature
package; :func:`check_config` then checks every name against its registry (dataset, partitioner, mechanism,
attacks, design; the design then checks its own keys, ``Design.check``). Each failure is one :class:`~privtune_ray.errors.ConfigError` line naming the key and the fix. Every
command that runs something calls it right after loading its config (``cli.py``, the run drivers' ``prepare``).
"""

from __future__ import annotations

from .attacks import ATTACKS
from .config import Config, require
from .data.partition import PARTITIONERS
from .data.registry import DATASETS
from .designs import check_design
from .mechanisms import MECHANISMS


def check_config(cfg: Config) -> None:
    """Raise :class:`~privtune_ray.errors.ConfigError` for the first name in ``cfg`` that no registry holds."""
    require(
        cfg.data.dataset in DATASETS,
        "data.dataset",
        f"unknown dataset {cfg.data.dataset!r}; choose one of {sorted(DATASETS)}",
    )
    require(
        cfg.mechanism.name in MECHANISMS,
        "mechanism.name",
        f"unknown mechanism {cfg.mechanism.name!r}; choose one of {sorted(MECHANISMS)}",
    )
    _check_attacks(cfg)
    require(
        cfg.simulation.partition in PARTITIONERS,
        "simulation.partition",
        f"choose one of {sorted(PARTITIONERS)}",
    )
    check_design(cfg)


def _check_attacks(cfg: Config) -> None:
    attack = cfg.attack
    for name in attack.names:
        require(
            name == "auto" or name in ATTACKS,
            "attack.names",
            f"unknown attack {name!r}; choose from {sorted(ATTACKS)} or 'auto'",
        )
    if attack.aux_dataset is not None:
        require(
            attack.aux_dataset in DATASETS,
            "attack.aux_dataset",
            f"unknown dataset {attack.aux_dataset!r}; choose one of {sorted(DATASETS)}",
        )


__all__ = ["check_config"]
