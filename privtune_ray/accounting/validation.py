"""Range checks shared by the accountants and mechanisms: one clear error per bad parameter."""

from __future__ import annotations

import math

from ..errors import ConfigError


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_delta(delta: float) -> None:
    if not (_finite(delta) and 0.0 < delta < 1.0):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}; typical values are 1e-5 or 1/(number of samples)")


def check_epsilon(epsilon: float) -> None:
    if not (_finite(epsilon) and epsilon > 0.0):
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon!r}")


def check_noise_multiplier(sigma: float) -> None:
    if not (_finite(sigma) and sigma > 0.0):
        raise ConfigError(f"noise multiplier sigma must be > 0, got {sigma!r}")


def check_sample_rate(q: float) -> None:
    if not (_finite(q) and 0.0 < q <= 1.0):
        raise ConfigError(f"sample rate q must be in (0, 1], got {q!r}")


def check_steps(steps: int) -> None:
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"number of steps must be an integer >= 1, got {steps!r}")


def check_eta(eta: float) -> None:
    if not (_finite(eta) and eta > 0.0):
        raise ConfigError(f"d_chi privacy parameter eta must be > 0, got {eta!r}; larger eta means less noise")


class SigmaOutOfRange(ConfigError):
    """σ's calibration has no answer inside its search range [lo, hi]. ``reason``: "unreachable" (ε at hi is
    above the target), "met_at_lo" (ε at lo is already at most the target) or "breakdown" (the Edgeworth
    expansion breaks down below ``sigma`` while its ε there is still at most the target). ``sigma``: the σ where
    the search stopped; ``epsilon``: the ε there (nats; None when there is none)."""

    def __init__(self, message: str, reason: str, sigma: float, epsilon: float | None = None):
        super().__init__(message)
        self.reason, self.sigma, self.epsilon = reason, sigma, epsilon
