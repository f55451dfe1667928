"""The attacks' keys of the ``attack`` config section, and their names: one ``Params`` dataclass per kind of
attack, and ``ATTACK_PARAMS``, each attack's name to its dataclass (``eia_knn_*`` read no key of their own).

This module imports no torch, so that ``checks.check_config`` answers a bad name or value in about a second; the
attacks themselves (``registry.ATTACKS``) use the same dataclasses (``tests/test_config.py`` checks that the
registries agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import AttackConfig, VariantParams, require
from ..data.registry import get_spec
from ..errors import DataError

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class ProbeParams(VariantParams):
    """The probes' keys of the ``attack`` section: ``probe_epochs`` epochs of AdamW at ``probe_lr`` on minibatches of
    ``batch_size`` sentences (defaults: ``config.AttackConfig``)."""

    probe_epochs: int
    probe_lr: float
    batch_size: int

    def validate(self, key: str) -> None:
        require(self.probe_epochs >= 1, f"{key}.probe_epochs", "must be >= 1")
        require(self.probe_lr > 0, f"{key}.probe_lr", "must be > 0")


@dataclass
class KeywordParams(ProbeParams):
    """The probe's keys, and the sensitive words: ``keyword_list`` when given, else the ``keywords`` whole-word
    tokens chosen on the auxiliary data (defaults: ``config.AttackConfig``)."""

    keywords: int
    keyword_list: list[str] | None

    def validate(self, key: str) -> None:
        super().validate(key)
        require(self.keywords >= 1, f"{key}.keywords", "must be >= 1")


@dataclass
class InverterParams(VariantParams):
    """The learned inverters' keys of the ``attack`` section: ``epochs`` of AdamW at ``lr`` on minibatches of
    ``batch_size`` auxiliary sentences (defaults: ``config.AttackConfig``)."""

    epochs: int
    lr: float
    batch_size: int
    inverter_layers: int | None

    def validate(self, key: str) -> None:
        require(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        require(self.lr > 0, f"{key}.lr", "must be > 0")
        require(
            self.inverter_layers is None or self.inverter_layers >= 1, f"{key}.inverter_layers", "must be >= 1 or null"
        )


@dataclass
class OptimisationParams(VariantParams):
    """eia_opt's keys of the ``attack`` section: ``opt_steps`` Adam steps at ``opt_lr`` on relaxed token logits z,
    softmax(z/T) with T = ``opt_temperature``, over the ``opt_candidates`` nearest anchors per position (defaults:
    ``config.AttackConfig``)."""

    opt_steps: int
    opt_candidates: int
    opt_lr: float
    opt_temperature: float

    def validate(self, key: str) -> None:
        require(self.opt_steps >= 0, f"{key}.opt_steps", "must be >= 0")
        require(self.opt_candidates >= 1, f"{key}.opt_candidates", "must be >= 1")
        for name in ("opt_lr", "opt_temperature"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")


@dataclass
class BiSRParams(InverterParams, OptimisationParams):
    """eia_bisr's keys: the large inverter's (``epochs``, ``lr``, ...), the refinement's (``opt_*``) and
    ``bisr_prior``, the weight λ of the inverter's prior against the noise law (defaults: ``config.AttackConfig``)."""

    bisr_prior: float

    def validate(self, key: str) -> None:
        InverterParams.validate(self, key)
        OptimisationParams.validate(self, key)
        require(self.bisr_prior >= 0, f"{key}.bisr_prior", "must be >= 0")


@dataclass
class SelfTrainParams(InverterParams):
    """eia_selftrain's keys: the large inverter's, then ``selftrain_rounds`` rounds of pseudo-labelling the victims'
    uploads at confidence ≥ ``selftrain_confidence`` and ``selftrain_epochs`` epochs of fitting on them beside the
    public text (defaults: ``config.AttackConfig``)."""

    selftrain_rounds: int
    selftrain_confidence: float
    selftrain_epochs: int

    def validate(self, key: str) -> None:
        super().validate(key)
        require(self.selftrain_rounds >= 1, f"{key}.selftrain_rounds", "must be >= 1")
        require(0 < self.selftrain_confidence < 1, f"{key}.selftrain_confidence", "must be in (0, 1)")
        require(self.selftrain_epochs >= 1, f"{key}.selftrain_epochs", "must be >= 1")


ATTACK_PARAMS: dict[str, type[VariantParams]] = {
    "eia_knn_l2": VariantParams,
    "eia_knn_cosine": VariantParams,
    "eia_mlp": InverterParams,
    "eia_transformer": InverterParams,
    "eia_transformer_large": InverterParams,
    "eia_bisr": BiSRParams,
    "eia_selftrain": SelfTrainParams,
    "eia_opt": OptimisationParams,
    "aia_probe": ProbeParams,
    "aia_keyword": KeywordParams,
    "aia_label": ProbeParams,
    "gm_label": ProbeParams,  # the surrogate of the top adapter is fitted like a probe
}

# The strong inverters (a full-vocabulary decoder, refinement, self-training): run when named or with "all" in
# attack.names, not with "auto" (the quick set the tests and the cheap configs use).
STRONG_ATTACKS = frozenset({"eia_transformer_large", "eia_bisr", "eia_selftrain"})

# Attacks on the gradients a device returns (GradientContext), not on its uploads: the suite leaves them out.
GRADIENT_ATTACKS = frozenset({"gm_label"})

__all__ = [
    "ATTACK_PARAMS",
    "BiSRParams",
    "SelfTrainParams",
    "GRADIENT_ATTACKS",
    "STRONG_ATTACKS",
    "InverterParams",
    "KeywordParams",
    "OptimisationParams",
    "ProbeParams",
]


def parse_corpus(entry: str) -> tuple[str, str]:
    """``"dataset:split"`` (or ``"dataset"``: its train split) of ``attack.aux_corpora`` -> (dataset, split)."""
    dataset, _, split = entry.partition(":")
    return dataset.strip(), (split.strip() or "train")


def aux_from_training(cfg: Config) -> bool:
    """Whether the attacker's auxiliary sentences come from the victims' own training split (``attack.aux_dataset``
    and ``aux_split`` name it): they are then carved out of it, so the devices never send them."""
    return (cfg.attack.aux_dataset or cfg.data.dataset, cfg.attack.aux_split) == (
        cfg.data.dataset,
        cfg.data.train_split,
    )


def check_aux_fits(n_aux: int | None, n_train: int) -> None:
    """A carve-out of ``n_aux`` sentences (None: all) must leave the devices some of the ``n_train`` training
    sentences."""
    n_aux = n_train if n_aux is None else n_aux
    require(
        n_aux < n_train,
        "attack.aux_samples",
        f"{n_aux} auxiliary sentences would take the whole training split ({n_train} sentences) and leave the "
        f"devices nothing: lower attack.aux_samples or set attack.aux_split/aux_dataset to other data",
    )


def probe_attributes(cfg: AttackConfig, dataset: str) -> tuple[str, ...]:
    """The private attributes ``aia_probe`` targets; an error if the dataset lacks one that is asked for."""
    available = get_spec(dataset).attributes
    wanted = tuple(cfg.attributes) if cfg.attributes is not None else available
    missing = [a for a in wanted if a not in available]
    if missing or ("aia_probe" in cfg.names and not wanted):
        raise DataError(
            f"attack aia_probe needs a private attribute, and dataset {dataset!r} has "
            f"{', '.join(available) if available else 'none'}{' (asked for: ' + ', '.join(missing) + ')' if missing else ''}: "
            f"attack blog (gender, age_group) or trustpilot (gender, born_before_1960), or drop aia_probe from attack.names"
        )
    return wanted
