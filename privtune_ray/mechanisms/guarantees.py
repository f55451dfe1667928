"""Each mechanism's privacy statement from its parameters alone: no model and no torch, so that
``privtune-ray account`` and the records' ε answer without loading either (the mechanisms' ``guarantee`` methods
call the same functions).

* ``none``: no privacy.
* ``dchi``: metric DP per token, ε_d(x, x') = R·η·‖h(x) − h(x')‖₂ over R releases.
* ``privtune``: metric DP per token, R·(η/s_i)·(‖h(x) − h(x')‖₂ + 2r), s_i ≥ s_min.
* ``gaussian`` / ``laplace``: (ε, δ)-DP per sample of ≤ L tokens; one release is a Gaussian mechanism of noise
  multiplier σ/(2√L) (L2 sensitivity 2C√L, noise σC) or a Laplace one of λ/(2L) (L1 sensitivity 2CL, scale λC);
  R releases composed by dp-accounting's PLD (ε in nats), the RDP ε beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import VariantParams
from .params import ClippedNoiseParams, DChiParams, PrivTuneParams, mechanism_names, mechanism_params_class


@dataclass
class Guarantee:
    """A mechanism's privacy statement.

    kind: ``none``; ``(eps,delta)-dp`` per sample (ε in nats, from dp-accounting's PLD accountant, with the
    RDP ε beside it); or ``metric-dp`` per token: P[M(x)=y] ≤ exp(ε_d(x,x'))·P[M(x')=y] with ε_d given
    by ``statement``, ``eta_per_unit`` the worst-case multiplier of ‖h(x)−h(x')‖₂ over all releases.
    """

    kind: str
    statement: str
    releases: int = 1
    epsilon: float | None = None
    delta: float | None = None
    epsilon_rdp: float | None = None
    eta_per_unit: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def none_guarantee(p: VariantParams, releases: int = 1, max_length: int = 64) -> Guarantee:
    return Guarantee(kind="none", statement="no privacy: h is uploaded as computed", releases=releases)


def dchi_guarantee(p: DChiParams, releases: int = 1, max_length: int = 64) -> Guarantee:
    return Guarantee(
        kind="metric-dp",
        statement=f"per token: eps(x, x') = {releases}*{p.eta:g}*||h(x) - h(x')||_2 over {releases} release(s)",
        releases=releases,
        eta_per_unit=releases * p.eta,
        params={"eta": p.eta},
    )


def privtune_params(p: PrivTuneParams) -> dict[str, Any]:
    """The parameters a PrivTune statement records (the mechanism's own, or the config's where none was built)."""
    return {
        "eta": p.eta,
        "radius": p.radius,
        "s_min": p.s_min,
        "k": p.k,
        "n_hops": p.n_hops,
        "pgd_steps": p.pgd_steps,
        "lambda_s": p.lambda_s,
        "lambda_d": p.lambda_d,
        "importance": p.importance,
    }


def privtune_guarantee(
    p: PrivTuneParams, releases: int = 1, params: dict | None = None, proxy_used: bool = False
) -> Guarantee:
    """Per token and release: exp((η/s_i)·(‖h(x)−h(x')‖₂ + 2r)), s_i ≥ s_min; R releases add up."""
    return Guarantee(
        kind="metric-dp",
        statement=(
            f"per token: eps(x, x') = {releases}*({p.eta:g}/s_i)*(||h(x) - h(x')||_2 + 2*{p.radius:g}), "
            f"s_i >= s_min = {p.s_min:g}, over {releases} release(s)"
        ),
        releases=releases,
        eta_per_unit=releases * p.eta / p.s_min,
        params={
            **(params or privtune_params(p)),
            "prediction_consistency": "proxy head" if proxy_used else "skipped (no proxy head)",
        },
    )


def clipped_noise_guarantee(kind: str, p: ClippedNoiseParams, releases: int = 1, max_length: int = 64) -> Guarantee:
    """``kind`` gaussian or laplace: the (ε, δ) of ``releases`` releases of a sample of ≤ ``max_length`` tokens."""
    import dp_accounting

    from ..accounting.reference import composed_epsilons

    if kind == "gaussian":
        event = dp_accounting.GaussianDpEvent(p.noise_multiplier / (2 * math.sqrt(max_length)))
    else:
        event = dp_accounting.LaplaceDpEvent(p.noise_multiplier / (2 * max_length))
    eps, eps_rdp = composed_epsilons(event, releases, p.delta)
    return Guarantee(
        kind="(eps,delta)-dp",
        statement=f"per sample (<= {max_length} tokens), {releases} release(s): ({eps:.4g}, {p.delta:g})-DP "
        f"(PLD; RDP gives {eps_rdp:.4g})",
        releases=releases,
        epsilon=eps,
        delta=p.delta,
        epsilon_rdp=eps_rdp,
        params={"noise_multiplier": p.noise_multiplier, "clip_norm": p.clip_norm, "delta": p.delta},
    )


GUARANTEES: dict[str, Callable[[Any, int, int], Guarantee]] = {
    "none": none_guarantee,
    "dchi": dchi_guarantee,
    "privtune": lambda p, releases, max_length: privtune_guarantee(p, releases, proxy_used=p.proxy_head),
    "gaussian": lambda p, releases, max_length: clipped_noise_guarantee("gaussian", p, releases, max_length),
    "laplace": lambda p, releases, max_length: clipped_noise_guarantee("laplace", p, releases, max_length),
}


def config_guarantee(cfg, releases: int, max_length: int) -> Guarantee:
    """The guarantee a ``MechanismConfig`` gives, without a model (``privtune-ray account``, the records' ε): a
    built-in's from :data:`GUARANTEES`, a mechanism registered at run time from its class's ``params_guarantee``."""
    params_class = mechanism_params_class(cfg.name)
    if params_class is None:
        raise KeyError(f"unknown mechanism {cfg.name!r}; choose one of {mechanism_names()}")
    params = params_class.of(cfg)
    params.validate("mechanism")
    if cfg.name in GUARANTEES:
        return GUARANTEES[cfg.name](params, releases, max_length)
    from .registry import MECHANISMS

    return MECHANISMS[cfg.name].params_guarantee(params, releases, max_length)


__all__ = [
    "GUARANTEES",
    "Guarantee",
    "clipped_noise_guarantee",
    "config_guarantee",
    "dchi_guarantee",
    "privtune_guarantee",
]
