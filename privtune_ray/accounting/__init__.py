"""Privacy accounting: the Edgeworth accountant (ours) and the field libraries' PLD, RDP and PRV accountants."""

from .edgeworth import EdgeworthAccountant, EdgeworthBreakdown, calibrate_sigma, edgeworth_delta, edgeworth_epsilon
from .reference import calibrate_sigma_pld, epsilon_of_event, pld_epsilon, prv_epsilon, rdp_epsilon
from .validation import SigmaOutOfRange

__all__ = [
    "EdgeworthAccountant",
    "EdgeworthBreakdown",
    "SigmaOutOfRange",
    "calibrate_sigma",
    "calibrate_sigma_pld",
    "edgeworth_delta",
    "edgeworth_epsilon",
    "epsilon_of_event",
    "pld_epsilon",
    "prv_epsilon",
    "rdp_epsilon",
]
