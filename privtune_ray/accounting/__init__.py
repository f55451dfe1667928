"""Privacy accounting: the Edgeworth accountant (ours) and the field libraries' PLD, RDP and PRV accountants.

``registry.ACCOUNTANTS`` / :func:`create_accountant`: one class per accountant behind Opacus' interface;
the functions (``pld_epsilon``, ``calibrate_sigma`` ...) answer one (q, σ, T) at a time.
"""

from .base import Accountant
from .edgeworth import EdgeworthAccountant, EdgeworthBreakdown, calibrate_sigma, edgeworth_delta, edgeworth_epsilon
from .reference import (
    PLDAccountant,
    PRVAccountant,
    RDPAccountant,
    calibrate_sigma_pld,
    calibrate_sigma_rdp,
    epsilon_of_event,
    pld_epsilon,
    prv_epsilon,
    rdp_epsilon,
)
from .registry import ACCOUNTANTS, create_accountant
from .validation import SigmaOutOfRange

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "EdgeworthAccountant",
    "EdgeworthBreakdown",
    "PLDAccountant",
    "PRVAccountant",
    "RDPAccountant",
    "SigmaOutOfRange",
    "calibrate_sigma",
    "calibrate_sigma_pld",
    "calibrate_sigma_rdp",
    "create_accountant",
    "edgeworth_delta",
    "edgeworth_epsilon",
    "epsilon_of_event",
    "pld_epsilon",
    "prv_epsilon",
    "rdp_epsilon",
]
