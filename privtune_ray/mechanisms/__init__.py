"""Privacy mechanisms: what a device applies to its bottom output h before upload (SPEC §2).

``MECHANISMS`` maps a config name to a builder ``(cfg, split, tokenizer, model_id, seed) -> Mechanism``.
"""

from __future__ import annotations

from collections.abc import Callable

from .activation_dp import GaussianActivation, LaplaceActivation
from .base import Guarantee, Mechanism
from .dchi import DChi
from .privtune import PrivTune, PrivTuneParams, privtune_guarantee
from .privtune_graph import load_or_build_token_graph


def privtune_params(cfg) -> PrivTuneParams:
    """The PrivTune parameters of a :class:`~privtune_ray.config.MechanismConfig`."""
    return PrivTuneParams(
        eta=cfg.eta,
        radius=cfg.radius,
        s_min=cfg.s_min,
        pgd_steps=cfg.pgd_steps,
        pgd_step_size=cfg.pgd_step_size,
        lambda_s=cfg.lambda_s,
        lambda_d=cfg.lambda_d,
        lambda_p=cfg.lambda_p,
        proxy_head=cfg.proxy_head,
        importance=cfg.importance,
        importance_samples=cfg.importance_samples,
    )


def _privtune(cfg, split, tokenizer, model_id: str, seed: int) -> PrivTune:
    graph = load_or_build_token_graph(
        split.bottom, tokenizer, model_id, cfg.k, cfg.n_hops, cfg.candidates, cfg.cache_dir
    )
    return PrivTune(
        graph, split.bottom, tokenizer.all_special_ids, privtune_params(cfg), pad_id=tokenizer.pad_token_id, seed=seed
    )


def config_guarantee(cfg, releases: int, max_length: int) -> Guarantee:
    """The guarantee a mechanism config gives, without loading a model (for ``privtune-ray account``)."""
    if cfg.name == "privtune":
        params = privtune_params(cfg)
        params.validate()
        return privtune_guarantee(params, releases, proxy_used=cfg.proxy_head)
    return MECHANISMS[cfg.name](cfg, None, None, "", 0).guarantee(releases, max_length)


MECHANISMS: dict[str, Callable[..., Mechanism]] = {
    "none": lambda cfg, split, tokenizer, model_id, seed: Mechanism(seed),
    "dchi": lambda cfg, split, tokenizer, model_id, seed: DChi(cfg.eta, seed),
    "gaussian": lambda cfg, split, tokenizer, model_id, seed: GaussianActivation(
        cfg.noise_multiplier, cfg.clip_norm, cfg.delta, seed
    ),
    "laplace": lambda cfg, split, tokenizer, model_id, seed: LaplaceActivation(
        cfg.noise_multiplier, cfg.clip_norm, cfg.delta, seed
    ),
    "privtune": _privtune,
}


def build_mechanism(cfg, split, tokenizer, model_id: str, seed: int = 0) -> Mechanism:
    """The mechanism named by ``cfg.name`` (a :class:`~privtune_ray.config.MechanismConfig`)."""
    return MECHANISMS[cfg.name](cfg, split, tokenizer, model_id, seed)


__all__ = [
    "MECHANISMS",
    "Mechanism",
    "Guarantee",
    "DChi",
    "GaussianActivation",
    "LaplaceActivation",
    "PrivTune",
    "PrivTuneParams",
    "build_mechanism",
    "config_guarantee",
    "privtune_params",
]
