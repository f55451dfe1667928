"""The mechanisms by config name (``MECHANISMS``), and how a config builds one."""

from __future__ import annotations

from .activation_dp import GaussianActivation, LaplaceActivation
from .base import Mechanism
from .dchi import DChi
from .guarantees import Guarantee, config_guarantee, privtune_guarantee
from .params import ClippedNoiseParams, DChiParams, PrivTuneParams
from .privtune import PrivTune

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
