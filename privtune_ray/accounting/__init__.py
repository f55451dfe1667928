"""Privacy accounting: the Edgeworth accountant (ours) and the field libraries' PLD, RDP and PRV accountants.

As Opacus splits ``analysis/`` from ``accountants/``: the functions (``edgeworth.py``, ``reference.py``:
``pld_epsilon``, ``calibrate_sigma`` ...) answer one (q, σ, T) at a time and import no torch;
``accountants.py`` holds one class per accountant behind Opacus' interface, ``registry.ACCOUNTANTS`` /
:func:`create_accountant` names them. The classes load on first use (PEP 562, as in ``data``), so that
``privtune-ray account`` does not import Opacus and torch.
"""

from ..lazy import lazy_getattr
from .edgeworth import EdgeworthBreakdown, calibrate_sigma, edgeworth_delta, edgeworth_epsilon
from .reference import (
    calibrate_sigma_pld,
    calibrate_sigma_rdp,
    epsilon_of_event,
    pld_epsilon,
    prv_epsilon,
    rdp_epsilon,
)
from .validation import SigmaOutOfRange

_LAZY = {
    "Accountant": "base",
    "EdgeworthAccountant": "accountants",
    "PLDAccountant": "accountants",
    "PRVAccountant": "accountants",
    "RDPAccountant": "accountants",
    "ACCOUNTANTS": "registry",
    "create_accountant": "registry",
}

__all__ = [
    *_LAZY,
    "EdgeworthBreakdown",
    "SigmaOutOfRange",
    "calibrate_sigma",
    "calibrate_sigma_pld",
    "calibrate_sigma_rdp",
    "edgeworth_delta",
    "edgeworth_epsilon",
    "epsilon_of_event",
    "pld_epsilon",
    "prv_epsilon",
    "rdp_epsilon",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
