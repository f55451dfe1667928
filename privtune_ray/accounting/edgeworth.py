"""Edgeworth accountant for the Poisson-subsampled Gaussian mechanism (Wang et al., arXiv 2206.04236).

No library ships one, so it is written here: the analysis (this module's functions) and, in ``accountants.py``,
``EdgeworthAccountant`` behind Opacus' accountant interface (``IAccountant``: ``step(noise_multiplier=σ,
sample_rate=q)``, ``get_epsilon(delta)``), like Opacus' RDP and PRV accountants.

One step releases a sample with probability q and adds N(0, σ²) noise; with μ = 1/σ its privacy-loss
log-likelihood ratio is

    ℓ(x) = log(1 − q + q·exp(μx − μ²/2))      (nats)

evaluated under the null P = N(0, 1) (giving X) and the alternative Q = (1−q)·N(0,1) + q·N(μ,1) (giving Y).
The first four cumulants κ_1..κ_4 of X and Y are computed by Gauss–Hermite quadrature; T steps (or any
history of heterogeneous steps) compose by adding cumulants. The CDF of the sum is approximated by the
Edgeworth expansion in z = (s − κ_1)/√κ_2 with γ_1 = κ_3/κ_2^{3/2}, γ_2 = κ_4/κ_2²:

    order 1:  F(s) ≈ Φ(z) − φ(z)·γ_1/6·He_2(z)
    order 2:  F(s) ≈ Φ(z) − φ(z)·[γ_1/6·He_2(z) + γ_2/24·He_3(z) + γ_1²/72·He_5(z)]

and δ(ε) = (1 − F_Y(ε)) − e^ε·(1 − F_X(ε)). ε(δ) is its inverse, found by a guarded root search (the
largest ε with δ(ε) above the target, then Brent's method). This accounts for the remove direction
(Q against P) only. It is an approximation, not a bound: always report the PLD ε beside it
(:func:`privtune_ray.accounting.reference.pld_epsilon`).

Where it breaks down (measured against dp-accounting's PLD on a 1e-4 grid, δ = 1e-5, q ∈ {0.001, 0.01, 0.03},
σ ∈ {0.6, 0.8, 1, 2}, T ∈ {100, 1000, 10000}): of T losses only about q·T are non-zero, so at small q·T and small σ
the sum is a spike near 0 plus a rare heavy tail, which a CLT-style expansion cannot follow. Order 2 is more than
10 % below PLD in 9 of 36 rows (order 1: 11), all at σ ≤ 0.8 with q·T ≤ 10 (−10 % to −52 %); at σ ≥ 1 it is within
−7 % / +9 %. At q·T = 0.1, σ = 0.6 its δ(0) falls below δ, claiming (0, δ)-DP where PLD gives ε = 0.78: such a
claim for q < 1 raises :class:`EdgeworthBreakdown`. Breakdown is not one interval in σ (q = 0.0019, T = 120: finite
ε at σ ≤ 0.40, 65 % below PLD; breakdown at 0.42–0.48; finite again from 0.50), so :func:`calibrate_sigma` searches
only above the largest σ where it breaks down.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr

from ..errors import PrivtuneError
from .validation import (
    SigmaOutOfRange,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
)

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(160)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()  # E_{N(0,1)}[f] ≈ Σ w_i f(x_i)


@dataclass(frozen=True)
class Cumulants:
    """κ_1..κ_4 of a privacy-loss random variable (nats, nats², nats³, nats⁴). They add under composition."""

    k1: float
    k2: float
    k3: float
    k4: float

    def __add__(self, other: Cumulants) -> Cumulants:
        return Cumulants(self.k1 + other.k1, self.k2 + other.k2, self.k3 + other.k3, self.k4 + other.k4)

    def __mul__(self, steps: int) -> Cumulants:
        return Cumulants(self.k1 * steps, self.k2 * steps, self.k3 * steps, self.k4 * steps)


ZERO = Cumulants(0.0, 0.0, 0.0, 0.0)


def privacy_loss(x: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """ℓ(x) = log(1 − q + q·exp(μx − μ²/2)), μ = 1/σ, computed stably."""
    mu = 1.0 / sigma
    t = mu * x - mu * mu / 2
    if q == 1.0:
        return t
    return np.logaddexp(np.log1p(-q), np.log(q) + t)


def _cumulants(values: np.ndarray, weights: np.ndarray) -> Cumulants:
    mean = float(np.dot(weights, values))
    c = values - mean
    m2, m3, m4 = (float(np.dot(weights, c**p)) for p in (2, 3, 4))
    return Cumulants(mean, m2, m3, m4 - 3 * m2 * m2)


@lru_cache(maxsize=4096)
def step_cumulants(q: float, sigma: float) -> tuple[Cumulants, Cumulants]:
    """Cumulants of ℓ under P = N(0,1) (X) and Q = (1−q)N(0,1) + qN(μ,1) (Y) for one step."""
    mu = 1.0 / sigma
    under_p = privacy_loss(_NODES, q, sigma)
    shifted = privacy_loss(_NODES + mu, q, sigma)
    x = _cumulants(under_p, _WEIGHTS)
    y = _cumulants(np.concatenate([under_p, shifted]), np.concatenate([(1 - q) * _WEIGHTS, q * _WEIGHTS]))
    return x, y


def edgeworth_sf(s: np.ndarray, c: Cumulants, order: int) -> np.ndarray:
    """1 − F(s), the survival function of the Edgeworth expansion of order 1 or 2, clipped to [0, 1]."""
    sd = np.sqrt(c.k2)
    z = (np.asarray(s, dtype=float) - c.k1) / sd
    g1, g2 = c.k3 / sd**3, c.k4 / c.k2**2
    phi = np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    correction = g1 / 6 * (z * z - 1)
    if order == 2:
        correction = correction + g2 / 24 * (z**3 - 3 * z) + g1 * g1 / 72 * (z**5 - 10 * z**3 + 15 * z)
    return np.clip(ndtr(-z) + phi * correction, 0.0, 1.0)


def _delta(eps: float | np.ndarray, x: Cumulants, y: Cumulants, order: int) -> np.ndarray:
    eps = np.asarray(eps, dtype=float)
    sf_x = edgeworth_sf(eps, x, order)
    with np.errstate(over="ignore"):
        value = edgeworth_sf(eps, y, order) - np.exp(eps) * sf_x
    return np.clip(np.nan_to_num(value, nan=0.0, neginf=0.0), 0.0, 1.0)


class EdgeworthBreakdown(PrivtuneError, ValueError):
    """The expansion claims (0, δ)-DP, i.e. δ(0) ≤ δ, for a subsampled mechanism (some q < 1, finite σ)."""


def _epsilon(delta: float, history: list[tuple[float, float, int]], order: int, eps_max: float = 500.0) -> float:
    """ε(δ) (nats) of a history of (σ, q, steps); raises :class:`EdgeworthBreakdown` where δ(0) ≤ δ and some q < 1."""
    x, y = composed_cumulants(history)
    if x.k2 <= 0:  # no steps
        return 0.0
    f = lambda e: float(_delta(e, x, y, order)) - delta
    if f(0.0) <= 0:
        if all(q == 1.0 for _, q, _ in history):  # ℓ is Gaussian: the expansion is exact, and so is ε = 0
            return 0.0
        releases = sum(q * steps for _, q, steps in history)
        raise EdgeworthBreakdown(
            f"the Edgeworth expansion (order {order}) claims (0, {delta:g})-DP at q·T = {releases:.3g} expected "
            f"releases per sample, a privacy loss too rare for it to represent: use the PLD accountant (pld_epsilon)"
        )
    grid = np.concatenate([[0.0], np.geomspace(1e-3, eps_max, 400)])
    above = np.flatnonzero(_delta(grid, x, y, order) > delta)
    last = int(above[-1])
    if last == len(grid) - 1:
        return float("inf")
    return float(brentq(f, grid[last], grid[last + 1], xtol=1e-10, rtol=1e-10))


def composed_cumulants(history: list[tuple[float, float, int]]) -> tuple[Cumulants, Cumulants]:
    x_total, y_total = ZERO, ZERO
    for sigma, q, steps in history:
        x, y = step_cumulants(float(q), float(sigma))
        x_total, y_total = x_total + x * steps, y_total + y * steps
    return x_total, y_total


def edgeworth_delta(eps: float, q: float, sigma: float, steps: int, order: int = 2) -> float:
    """δ(ε) after ``steps`` Poisson-subsampled Gaussian steps (order-1 or order-2 expansion)."""
    check_sample_rate(q)
    check_noise_multiplier(sigma)
    check_steps(steps)
    x, y = composed_cumulants([(sigma, q, steps)])
    return float(_delta(eps, x, y, order))


def edgeworth_epsilon(delta: float, q: float, sigma: float, steps: int, order: int = 2) -> float:
    """ε(δ) after ``steps`` Poisson-subsampled Gaussian steps (nats).

    Raises :class:`EdgeworthBreakdown` where the expansion claims (0, δ)-DP for q < 1 (see the module docstring)."""
    check_delta(delta)
    check_sample_rate(q)
    check_noise_multiplier(sigma)
    check_steps(steps)
    return _epsilon(delta, [(sigma, q, steps)], order)


def calibrate_sigma(
    target_epsilon: float,
    delta: float,
    q: float,
    steps: int,
    order: int = 2,
    sigma_range: tuple[float, float] = (0.3, 100.0),
) -> float:
    """The smallest noise multiplier σ in ``sigma_range`` whose Edgeworth ε(δ) (nats) is at most ``target_epsilon``.

    ε is evaluated on a grid of 200 log-spaced σ, then Brent's method (in log σ) refines the first crossing. The
    expansion holds only above the largest σ where it breaks down (:class:`EdgeworthBreakdown`; small σ at small
    q·T, not always in one interval); below that σ even a finite ε is no estimate, so the search starts there.
    Raises :class:`SigmaOutOfRange` (a ConfigError) when the answer is not inside the range: ``unreachable``
    (ε(hi) > target), ``met_at_lo`` (ε(lo) ≤ target) or ``breakdown`` (the expansion breaks down at hi, or the
    smallest σ where it holds already meets the target: it never reaches the target, so the PLD accountant has to
    calibrate).
    """
    check_epsilon(target_epsilon)
    check_delta(delta)
    check_sample_rate(q)
    check_steps(steps)
    lo, hi = sigma_range
    where = f"q={q:g}, steps={steps}, delta={delta:g}"

    def epsilon(log_sigma: float) -> float:  # +inf where the expansion breaks down
        try:
            return edgeworth_epsilon(delta, q, float(np.exp(log_sigma)), steps, order)
        except EdgeworthBreakdown:
            return float("inf")

    logs = np.linspace(np.log(lo), np.log(hi), 200)
    eps = np.array([epsilon(x) for x in logs])
    if np.isinf(eps[-1]):
        raise SigmaOutOfRange(
            f"the Edgeworth expansion breaks down at sigma = {hi:g}, the largest noise multiplier searched (q·T = "
            f"{q * steps:.3g} expected releases per sample; {where}): calibrate with the PLD accountant",
            "breakdown",
            hi,
        )
    if eps[-1] > target_epsilon:
        raise SigmaOutOfRange(
            f"target epsilon {target_epsilon:g} is unreachable with a noise multiplier up to {hi:g} (Edgeworth epsilon "
            f"{eps[-1]:.4g} there; {where}): raise the target epsilon, lower the sample rate or the steps",
            "unreachable",
            hi,
            float(eps[-1]),
        )
    broken = np.flatnonzero(np.isinf(eps))
    if broken.size:  # bisect for the smallest σ above the last breakdown, and search above it
        a, b = logs[broken[-1]], logs[broken[-1] + 1]
        while b - a > 1e-6:
            a, b = ((a + b) / 2, b) if np.isinf(epsilon((a + b) / 2)) else (a, (a + b) / 2)
        keep = logs > b
        logs, eps = np.concatenate([[b], logs[keep]]), np.concatenate([[epsilon(b)], eps[keep]])
        if eps[0] <= target_epsilon:
            raise SigmaOutOfRange(
                f"the Edgeworth expansion breaks down below sigma = {np.exp(b):.4g} (q·T = {q * steps:.3g} expected "
                f"releases per sample), where its epsilon {eps[0]:.4g} is still below the target {target_epsilon:g} "
                f"({where}): calibrate with the PLD accountant",
                "breakdown",
                float(np.exp(b)),
                float(eps[0]),
            )
    elif eps[0] <= target_epsilon:
        raise SigmaOutOfRange(
            f"target epsilon {target_epsilon:g} is met already at sigma = {lo:g}, the smallest noise multiplier searched "
            f"(Edgeworth epsilon {eps[0]:.4g}; {where}): lower the target epsilon, or calibrate with the PLD accountant",
            "met_at_lo",
            lo,
            float(eps[0]),
        )
    j = int(np.argmax(eps <= target_epsilon))  # the first σ that meets the target (j ≥ 1)
    return float(np.exp(brentq(lambda x: epsilon(x) - target_epsilon, logs[j - 1], logs[j], xtol=1e-6)))
