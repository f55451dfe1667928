"""Edgeworth accountant for the Poisson-subsampled Gaussian mechanism (Wang et al., arXiv 2206.04236).

No library ships one, so it is written here behind Opacus' accountant interface (``IAccountant``:
``step(noise_multiplier=σ, sample_rate=q)``, ``get_epsilon(delta)``), like Opacus' RDP and PRV accountants.

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
(Q against P) only. In EW-Tune's regime the order-1 ε can understate the PLD ε (SPEC §5): always report
the PLD ε beside it (:func:`privtune_ray.accounting.reference.pld_epsilon`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from opacus.accountants.accountant import IAccountant
from scipy.optimize import brentq
from scipy.special import ndtr

from .validation import check_delta, check_epsilon, check_noise_multiplier, check_sample_rate, check_steps

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(160)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()  # E_{N(0,1)}[f] ≈ Σ w_i f(x_i)


@dataclass(frozen=True)
class Cumulants:
    """κ_1..κ_4 of a privacy-loss random variable (nats, nats², nats³, nats⁴). They add under composition."""

    k1: float
    k2: float
    k3: float
    k4: float

    def __add__(self, other: "Cumulants") -> "Cumulants":
        return Cumulants(self.k1 + other.k1, self.k2 + other.k2, self.k3 + other.k3, self.k4 + other.k4)

    def __mul__(self, steps: int) -> "Cumulants":
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


def _delta(eps: np.ndarray, x: Cumulants, y: Cumulants, order: int) -> np.ndarray:
    eps = np.asarray(eps, dtype=float)
    sf_x = edgeworth_sf(eps, x, order)
    with np.errstate(over="ignore"):
        value = edgeworth_sf(eps, y, order) - np.exp(eps) * sf_x
    return np.clip(np.nan_to_num(value, nan=0.0, neginf=0.0), 0.0, 1.0)


def _epsilon(delta: float, x: Cumulants, y: Cumulants, order: int, eps_max: float = 500.0) -> float:
    if x.k2 <= 0:
        return 0.0
    f = lambda e: float(_delta(e, x, y, order)) - delta  # noqa: E731
    if f(0.0) <= 0:
        return 0.0
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
    check_sample_rate(q), check_noise_multiplier(sigma), check_steps(steps)
    x, y = composed_cumulants([(sigma, q, steps)])
    return float(_delta(eps, x, y, order))


def edgeworth_epsilon(delta: float, q: float, sigma: float, steps: int, order: int = 2) -> float:
    """ε(δ) after ``steps`` Poisson-subsampled Gaussian steps (nats)."""
    check_delta(delta), check_sample_rate(q), check_noise_multiplier(sigma), check_steps(steps)
    x, y = composed_cumulants([(sigma, q, steps)])
    return _epsilon(delta, x, y, order)


def calibrate_sigma(
    target_epsilon: float,
    delta: float,
    q: float,
    steps: int,
    order: int = 2,
    sigma_range: tuple[float, float] = (0.3, 100.0),
) -> float:
    """The smallest noise multiplier σ in ``sigma_range`` whose Edgeworth ε(δ) is at most ``target_epsilon``."""
    check_epsilon(target_epsilon), check_delta(delta), check_sample_rate(q), check_steps(steps)
    lo, hi = sigma_range

    def excess(log_sigma: float) -> float:
        return edgeworth_epsilon(delta, q, float(np.exp(log_sigma)), steps, order) - target_epsilon

    if excess(np.log(hi)) > 0:
        from ..errors import ConfigError

        raise ConfigError(
            f"target epsilon {target_epsilon} is unreachable with a noise multiplier up to {hi} "
            f"(q={q}, steps={steps}, delta={delta}): raise the target epsilon, lower the sample rate or the steps"
        )
    if excess(np.log(lo)) <= 0:
        return lo
    return float(np.exp(brentq(excess, np.log(lo), np.log(hi), xtol=1e-6)))


class EdgeworthAccountant(IAccountant):
    """Opacus-style accountant: ``step(noise_multiplier=σ, sample_rate=q)`` per step, ``get_epsilon(delta)``."""

    def __init__(self, order: int = 2):
        if order not in (1, 2):
            raise ValueError(f"Edgeworth order must be 1 or 2, got {order}")
        self.order = order
        self.history: list[tuple[float, float, int]] = []  # (σ, q, steps), as Opacus keeps it

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        check_noise_multiplier(noise_multiplier), check_sample_rate(sample_rate)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history.pop()
            self.history.append((sigma, q, steps + num_steps))
        else:
            self.history.append((noise_multiplier, sample_rate, num_steps))

    def get_epsilon(self, delta: float, **kwargs) -> float:
        check_delta(delta)
        x, y = composed_cumulants(self.history)
        return _epsilon(delta, x, y, self.order)

    def __len__(self) -> int:
        return sum(steps for _, _, steps in self.history)

    @classmethod
    def mechanism(cls) -> str:
        return "edgeworth"


