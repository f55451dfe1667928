"""Training designs behind one interface (``base.Design``), registered by name in ``DESIGNS``.

* ``split.py``: split learning; the mechanism protects h (``design: split``).
* ``ewtune.py``: EW-Tune, DP-SGD on the top model with Edgeworth- or PLD-calibrated noise (``design: ewtune``).
* ``guarded/``: GuardedTuning's ``online``, ``gradfree`` and ``offline`` designs.
* ``quantisation.py``: b-bit per-row quantisation of what crosses a cut (``design.bits``).
* ``dcor.py``: distance correlation, GuardedTuning's decorrelation regulariser.
* ``params.py``: the designs' keys and their checks (no torch: config checks read it); ``registry.py``: the designs.
"""

from .params import DESIGN_PARAMS, check_design

__all__ = ["DESIGN_PARAMS", "check_design"]
