"""Privacy mechanisms: what a device applies to its bottom output h before upload (SPEC §2).

``MECHANISMS`` maps a config name to a :class:`Mechanism` class; each reads its keys of the ``mechanism`` config
section through its own ``Params`` dataclass beside its code (peft style) and builds itself from them
(``from_params``).
"""

from __future__ import annotations

from .activation_dp import ClippedNoiseParams, GaussianActivation, LaplaceActivation
from .base import Guarantee, Mechanism
from .dchi import DChi, DChiParams
from .privtune import PrivTune, PrivTuneParams, privtune_guarantee

MECHANISMS: dict[str, type[Mechanism]] = {
    "none": Mechanism,
    "dchi": DChi,
    "gaussian": GaussianActivation,
    "laplace": LaplaceActivation,
    "privtune": PrivTune,
}


def mechanism_params(cfg):
    """The named mechanism's parameters (its ``Params`` dataclass) read from a ``MechanismConfig``, range-checked."""
    params = MECHANISMS[cfg.name].Params.of(cfg)
    params.validate("mechanism")
    return params


def build_mechanism(cfg, split, tokenizer, model_id: str, seed: int = 0) -> Mechanism:
    """The mechanism named by ``cfg.name`` (a :class:`~privtune_ray.config.MechanismConfig`)."""
    return MECHANISMS[cfg.name].from_params(mechanism_params(cfg), split, tokenizer, model_id, seed)


def config_guarantee(cfg, releases: int, max_length: int) -> Guarantee:
    """The guarantee a mechanism config gives, without loading a model (for ``privtune-ray account``)."""
    return MECHANISMS[cfg.name].guarantee_of(mechanism_params(cfg), releases, max_length)


__all__ = [
    "MECHANISMS",
    "Mechanism",
    "Guarantee",
    "ClippedNoiseParams",
    "DChi",
    "DChiParams",
    "GaussianActivation",
    "LaplaceActivation",
    "PrivTune",
    "PrivTuneParams",
    "build_mechanism",
    "config_guarantee",
    "mechanism_params",
    "privtune_guarantee",
]
