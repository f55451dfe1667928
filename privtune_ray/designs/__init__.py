"""Fine-tuning designs beside plain split learning and what they share.

* ``ewtune.py``: EW-Tune, DP-SGD on the top model with Edgeworth-calibrated noise (``design: ewtune``).
* ``quantisation.py``: b-bit per-row quantisation of what crosses a cut (``design.bits``).
* ``dcor.py``: distance correlation, GuardedTuning's decorrelation regulariser.

Import the modules themselves (``from privtune_ray.designs.ewtune import ...``): the message format uses the
quantiser, so this package imports nothing eagerly.
"""
