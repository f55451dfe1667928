"""The accountants by name, after Opacus' ``accountants/registry.py``: one class per accountant, one interface
(``base.Accountant``, Opacus' ``IAccountant``), ε in nats for the Poisson-subsampled Gaussian.

* ``edgeworth``: the Edgeworth expansion (EW-Tune's; an approximation, not a bound);
* ``pld``: dp-accounting's privacy-loss distributions (an upper bound; the reference);
* ``rdp``: dp-accounting's Rényi DP (a looser bound);
* ``prv``: Opacus' PRV accountant.
"""

from __future__ import annotations

from .accountants import EdgeworthAccountant, PLDAccountant, PRVAccountant, RDPAccountant
from .base import Accountant

ACCOUNTANTS: dict[str, type[Accountant]] = {
    "edgeworth": EdgeworthAccountant,
    "pld": PLDAccountant,
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
}


def create_accountant(name: str, **params) -> Accountant:
    """A new accountant ``name`` with no step yet; ``params`` go to its class (``order`` for edgeworth,
    ``interval`` in nats for pld)."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}")
    return ACCOUNTANTS[name](**params)
