"""Reference accountants from the field libraries (never re-implemented here).

* :func:`pld_epsilon`, :func:`rdp_epsilon`: Google's dp-accounting (privacy-loss distributions; Rényi DP).
* :func:`prv_epsilon`: Opacus' PRV accountant.

All for T-fold self-composition of the Poisson-subsampled Gaussian (sample rate q, noise multiplier σ),
add-or-remove-one neighbouring, ε in nats.
"""

from __future__ import annotations

import logging

import dp_accounting
from dp_accounting import pld, rdp

from .validation import check_delta, check_noise_multiplier, check_sample_rate, check_steps


def subsampled_gaussian_event(q: float, sigma: float, steps: int) -> dp_accounting.DpEvent:
    check_sample_rate(q), check_noise_multiplier(sigma), check_steps(steps)
    event = dp_accounting.GaussianDpEvent(sigma)
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    return dp_accounting.SelfComposedDpEvent(event, steps)


def epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str = "pld") -> float:
    """ε(δ) of any dp-accounting event with the PLD (default) or RDP accountant."""
    check_delta(delta)
    if accountant == "pld":
        acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    elif accountant == "rdp":
        acc = rdp.RdpAccountant()
    else:
        raise ValueError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
    # dp-accounting logs a warning for each Rényi order whose series does not converge (it drops that order).
    level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return float(acc.compose(event).get_epsilon(delta))
    finally:
        logging.getLogger("absl").setLevel(level)


def pld_epsilon(delta: float, q: float, sigma: float, steps: int) -> float:
    return epsilon_of_event(subsampled_gaussian_event(q, sigma, steps), delta, "pld")


def rdp_epsilon(delta: float, q: float, sigma: float, steps: int) -> float:
    return epsilon_of_event(subsampled_gaussian_event(q, sigma, steps), delta, "rdp")


def prv_epsilon(delta: float, q: float, sigma: float, steps: int) -> float:
    from opacus.accountants import PRVAccountant

    check_delta(delta), check_sample_rate(q), check_noise_multiplier(sigma), check_steps(steps)
    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta))
