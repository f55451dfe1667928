"""The accountants behind the one interface (``base.Accountant``, Opacus' ``IAccountant``), as Opacus keeps its
``accountants/`` beside its ``analysis/``: each class keeps the (σ, q, steps) history and asks the analysis functions
of ``edgeworth.py`` (ours) and ``reference.py`` (dp-accounting, Opacus) for ε. Importing this module imports no
torch: only the PRV accountant's ``get_epsilon`` imports Opacus.
"""

from __future__ import annotations

import dp_accounting

from .base import Accountant
from .edgeworth import _epsilon
from .reference import PLD_INTERVAL, epsilon_of_event, subsampled_gaussian_event
from .validation import check_delta


class EdgeworthAccountant(Accountant):
    """Opacus-style accountant: ``step(noise_multiplier=σ, sample_rate=q)`` per step, ``get_epsilon(delta)``."""

    def __init__(self, order: int = 2):
        if order not in (1, 2):
            raise ValueError(f"Edgeworth order must be 1 or 2, got {order}")
        super().__init__()
        self.order = order

    def get_epsilon(self, delta: float, **kwargs) -> float:
        """ε(δ) of the history (nats); raises :class:`EdgeworthBreakdown` where the expansion claims (0, δ)-DP."""
        check_delta(delta)
        return _epsilon(delta, self.history, self.order)

    @classmethod
    def mechanism(cls) -> str:
        return "edgeworth"


class _DpAccountingAccountant(Accountant):
    """The history as one dp-accounting event (each (σ, q, T) entry self-composed, the entries composed)."""

    kind = "pld"

    def __init__(self, interval: float = PLD_INTERVAL):
        super().__init__()
        self.interval = interval

    def event(self) -> dp_accounting.DpEvent:
        events = [subsampled_gaussian_event(q, sigma, steps) for sigma, q, steps in self.history]
        if not events:
            raise ValueError("no step to account for: call step() first")
        return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)

    def get_epsilon(self, delta: float, **kwargs) -> float:
        """ε(δ) (nats) of every step so far."""
        return epsilon_of_event(self.event(), delta, self.kind, self.interval)

    @classmethod
    def mechanism(cls) -> str:
        return cls.kind


class PLDAccountant(_DpAccountingAccountant):
    """dp-accounting's privacy-loss distributions on a grid of ``interval`` nats: an upper bound on ε
    (:func:`pld_epsilon` after T equal steps)."""

    kind = "pld"


class RDPAccountant(_DpAccountingAccountant):
    """dp-accounting's Rényi-DP accountant (:func:`rdp_epsilon` after T equal steps; looser than PLD)."""

    kind = "rdp"

    def __init__(self) -> None:
        super().__init__()


class PRVAccountant(Accountant):
    """Opacus' PRV accountant (its ``get_epsilon(delta, eps_error=0.01)``; :func:`prv_epsilon` after T equal steps),
    with ``len`` counting steps and the history checked and merged as the other accountants keep it. Opacus (and
    torch) load on the first ``get_epsilon``."""

    def get_epsilon(self, delta: float, eps_error: float = 0.01, **kwargs) -> float:
        from opacus.accountants import PRVAccountant as OpacusPRVAccountant

        check_delta(delta)
        if not self.history:
            raise ValueError("no step to account for: call step() first")
        opacus = OpacusPRVAccountant()
        opacus.history = list(self.history)
        return float(opacus.get_epsilon(delta, eps_error=eps_error, **kwargs))

    @classmethod
    def mechanism(cls) -> str:
        return "prv"
