"""Privacy accounting: the Edgeworth accountant (ours) and the field libraries' PLD, RDP and PRV accountants."""

from .edgeworth import EdgeworthAccountant, calibrate_sigma, edgeworth_delta, edgeworth_epsilon
from .reference import epsilon_of_event, pld_epsilon, prv_epsilon, rdp_epsilon

__all__ = ["EdgeworthAccountant", "calibrate_sigma", "edgeworth_delta", "edgeworth_epsilon", "epsilon_of_event",
           "pld_epsilon", "prv_epsilon", "rdp_epsilon"]  # fmt: skip
