"""The mechanisms' keys of the ``mechanism`` config section: one ``Params`` dataclass per mechanism (peft's
``config.py`` beside its ``model.py``), and ``MECHANISM_PARAMS``, each mechanism's name to its dataclass.

This module imports no torch, so that ``checks.check_config`` answers a bad value in about a second; the
mechanisms themselves (``registry.MECHANISMS``) use the same dataclasses (``tests/test_config.py`` checks that the
two registries agree).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..config import VariantParams, require


@dataclass
class DChiParams(VariantParams):
    """``mechanism.eta``: η of d_χ noise, per unit of L2 distance (mean noise radius d/η)."""

    eta: float

    def validate(self, key: str) -> None:
        require(self.eta > 0, f"{key}.eta", "must be > 0 (larger eta means less noise)")


@dataclass
class ClippedNoiseParams(VariantParams):
    """Rows clipped to norm C = ``clip_norm`` (L2 for gaussian, L1 for laplace), then noise of scale
    ``noise_multiplier``·C (σ of Gaussian, λ of Laplace); ``delta``: δ of the (ε, δ) statement."""

    noise_multiplier: float
    clip_norm: float
    delta: float

    def validate(self, key: str) -> None:
        require(self.noise_multiplier > 0, f"{key}.noise_multiplier", "must be > 0")
        require(self.clip_norm > 0, f"{key}.clip_norm", "must be > 0")
        require(0 < self.delta < 1, f"{key}.delta", "must be in (0, 1), e.g. 1e-5")


@dataclass
class PrivTuneParams(VariantParams):
    """PrivTune's keys of the ``mechanism`` section (defaults: ``config.MechanismConfig``)."""

    eta: float  # η, per unit of L2 distance
    k: int  # neighbours per token in the k-NN token graph
    n_hops: int  # n: the target comes from the ring N_n(v)
    candidates: int  # ring members kept per token (nearest to its anchor)
    radius: float  # r, bound on ‖δ_i‖₂
    s_min: float  # smallest noise scale (most important tokens)
    pgd_steps: int  # K
    pgd_step_size: float  # α, as a fraction of r
    lambda_s: float
    lambda_d: float
    lambda_p: float  # weight of prediction consistency when proxy_head is on
    proxy_head: bool
    importance: bool  # off: w = 0 for every token, s_i = 1
    importance_samples: int | None  # device samples used for importance (None: all)
    cache_dir: str | None  # token-graph cache (None: $PRIVTUNE_CACHE_DIR or ~/.cache/privtune-ray)

    def validate(self, key: str) -> None:
        require(self.eta > 0, f"{key}.eta", "must be > 0 (larger eta means less noise)")
        require(self.k >= 1, f"{key}.k", "must be >= 1 (and below the vocabulary size)")
        require(self.n_hops >= 1, f"{key}.n_hops", "must be >= 1")
        require(self.candidates >= 1, f"{key}.candidates", "must be >= 1")
        require(self.radius >= 0, f"{key}.radius", "must be >= 0")
        require(0 < self.s_min <= 1, f"{key}.s_min", "must be in (0, 1]")
        require(self.pgd_steps >= 0, f"{key}.pgd_steps", "must be >= 0")
        require(self.pgd_step_size > 0, f"{key}.pgd_step_size", "must be > 0")
        for name in ("lambda_s", "lambda_d", "lambda_p"):
            require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        require(
            self.importance_samples is None or self.importance_samples > 0,
            f"{key}.importance_samples",
            "must be > 0 or null",
        )


MECHANISM_PARAMS: dict[str, type[VariantParams]] = {
    "none": VariantParams,  # reads no key
    "dchi": DChiParams,
    "gaussian": ClippedNoiseParams,
    "laplace": ClippedNoiseParams,
    "privtune": PrivTuneParams,
}


def mechanism_params_class(name: str) -> type[VariantParams] | None:
    """The parameter dataclass of mechanism ``name``: a built-in's from :data:`MECHANISM_PARAMS` (no torch), else
    the ``Params`` of a class registered in ``registry.MECHANISMS`` at run time (a mechanism added outside this
    package, one class and one registry line; its registry is loaded by then). None: no such mechanism."""
    if name in MECHANISM_PARAMS:
        return MECHANISM_PARAMS[name]
    registry = sys.modules.get("privtune_ray.mechanisms.registry")
    mechanisms = getattr(registry, "MECHANISMS", {})
    return mechanisms[name].Params if name in mechanisms else None


def mechanism_names() -> list[str]:
    """Every mechanism a config may name: the built-ins and any registered at run time."""
    registry = sys.modules.get("privtune_ray.mechanisms.registry")
    return sorted(set(MECHANISM_PARAMS) | set(getattr(registry, "MECHANISMS", {})))


__all__ = [
    "MECHANISM_PARAMS",
    "mechanism_names",
    "mechanism_params_class",
    "ClippedNoiseParams",
    "DChiParams",
    "PrivTuneParams",
]
