"""Config checks that need a feature registry: names only a registry knows, and each variant's own keys.

:func:`privtune_ray.config.load_config` checks the schema, the types and the shared ranges without importing any
feature package; :func:`check_config` then checks every name against its registry (dataset, partitioner,
mechanism, attacks, design), each variant's keys by its own parameter dataclass (:func:`check_variant_keys`), and
the design's combination with the rest (``Design.check``). Each failure is one
:class:`~privtune_ray.errors.ConfigError` line naming the key and the fix. Every command that runs something calls
it right after loading its config, before anything is written (``cli.py``, the run drivers' ``prepare``).
"""

from __future__ import annotations

from typing import Any

from .attacks.params import ATTACK_PARAMS, parse_corpus
from .config import Config, VariantParams, require
from .data.partition import PARTITIONERS
from .data.public import public_source, uses_public_text
from .data.registry import DATASETS
from .designs.params import DESIGN_PARAMS, check_design
from .mechanisms.params import mechanism_names, mechanism_params_class


def check_config(cfg: Config) -> None:
    """Raise :class:`~privtune_ray.errors.ConfigError` for the first name in ``cfg`` that no registry holds."""
    require(
        cfg.data.dataset in DATASETS,
        "data.dataset",
        f"unknown dataset {cfg.data.dataset!r}; choose one of {sorted(DATASETS)}",
    )
    spec = DATASETS[cfg.data.dataset]
    for key in ("train_split", "eval_split"):
        split = getattr(cfg.data, key)
        labelled = [s for s in spec.splits if s not in spec.unlabelled]
        require(
            split not in spec.unlabelled,
            f"data.{key}",
            f"{cfg.data.dataset} split {split!r} has no labels (it is public text, e.g. for train.warm_start): "
            f"choose one of {labelled}",
        )
    require(
        mechanism_params_class(cfg.mechanism.name) is not None,
        "mechanism.name",
        f"unknown mechanism {cfg.mechanism.name!r}; choose one of {mechanism_names()}",
    )
    _check_attacks(cfg)
    require(
        cfg.simulation.partition in PARTITIONERS,
        "simulation.partition",
        f"choose one of {sorted(PARTITIONERS)}",
    )
    _check_top(cfg)
    _check_public_text(cfg)
    check_variant_keys(cfg)
    check_design(cfg)


def _check_top(cfg: Config) -> None:
    """The top's read-out and step against the task: mean pooling feeds a classifier; a U-shaped causal LM
    (the loss on the device) steps once per message."""
    require(
        cfg.train.head_pooling == "token" or cfg.model.task == "classification",
        "train.head_pooling",
        "'mean' pools a classifier's input; model.task=causal-lm needs 'token'",
    )
    require(
        cfg.train.physical_batch_size is None or not (cfg.model.task == "causal-lm" and cfg.model.lm_head == "device"),
        "train.physical_batch_size",
        "splits a batch whose loss the cloud computes; with model.lm_head=device set it to null",
    )


def _check_public_text(cfg: Config) -> None:
    ws = cfg.train.warm_start
    if uses_public_text(cfg):
        require(
            ws.dataset is None or ws.dataset in DATASETS,
            "train.warm_start.dataset",
            f"unknown dataset {ws.dataset!r}; choose one of {sorted(DATASETS)}",
        )
        public_source(cfg)  # never the training or evaluation split


def check_variant_keys(cfg: Config) -> None:
    """Every key of the ``mechanism``, ``design`` and ``attack`` sections is range-checked by the parameter
    dataclass of each variant that reads it, whichever variant the run selects (a bad value is refused even where
    this run ignores it, so that changing ``name`` alone never meets it later)."""
    sections: list[tuple[str, Any, set[type[VariantParams]]]] = [
        ("mechanism", cfg.mechanism, {c for n in mechanism_names() if (c := mechanism_params_class(n)) is not None}),
        ("design", cfg.design, set(DESIGN_PARAMS.values())),
        ("attack", cfg.attack, set(ATTACK_PARAMS.values())),
    ]
    for key, section, params in sections:
        for cls in sorted(params, key=lambda c: c.__name__):
            cls.of(section).validate(key)


def _check_attacks(cfg: Config) -> None:
    attack = cfg.attack
    for name in attack.names:
        require(
            name in ("auto", "all") or name in ATTACK_PARAMS,
            "attack.names",
            f"unknown attack {name!r}; choose from {sorted(ATTACK_PARAMS)}, 'auto' (the quick set) or 'all'",
        )
    if attack.aux_dataset is not None:
        require(
            attack.aux_dataset in DATASETS,
            "attack.aux_dataset",
            f"unknown dataset {attack.aux_dataset!r}; choose one of {sorted(DATASETS)}",
        )
    for entry in attack.aux_corpora:
        dataset, split = parse_corpus(entry)
        require(
            dataset in DATASETS,
            "attack.aux_corpora",
            f"unknown dataset {dataset!r} in {entry!r}; choose 'dataset:split' with a dataset of {sorted(DATASETS)}",
        )
        require(
            split in DATASETS[dataset].files,
            "attack.aux_corpora",
            f"{dataset!r} has no split {split!r} (in {entry!r}); its splits are {DATASETS[dataset].splits}",
        )


__all__ = ["check_config", "check_variant_keys"]
