"""Training designs behind one interface (``base.Design``), registered by name in ``DESIGNS``.

* ``split.py``: split learning; the mechanism protects h (``design: split``).
* ``ewtune.py``: EW-Tune, DP-SGD on the top model with Edgeworth- or PLD-calibrated noise (``design: ewtune``).
* ``guarded/``: GuardedTuning's ``online``, ``gradfree`` and ``offline`` designs.
* ``quantisation.py``: b-bit per-row quantisation of what crosses a cut (``design.bits``).
* ``dcor.py``: distance correlation, GuardedTuning's decorrelation regulariser.

A new design is one new file (a :class:`~privtune_ray.designs.base.Design` subclass) and one line below.
"""

from ..attacks import GRADIENT_ATTACKS
from ..config import Config, require
from .base import Design
from .ewtune import EWTuneDesign
from .guarded import GradfreeDesign, OfflineDesign, OnlineDesign
from .split import SplitDesign

DESIGNS: dict[str, type[Design]] = {
    "split": SplitDesign,
    "ewtune": EWTuneDesign,
    "online": OnlineDesign,
    "gradfree": GradfreeDesign,
    "offline": OfflineDesign,
}


def design_class(cfg: Config) -> type[Design]:
    """The registered design ``cfg.design`` names; an unknown name is one line listing the known ones."""
    name = cfg.design.name
    require(name in DESIGNS, "design.name", f"unknown design {name!r}; choose one of {', '.join(DESIGNS)}")
    return DESIGNS[name]


def check_design(cfg: Config) -> None:
    """The design's name, the attacks it can face (an attack on returned gradients needs a design that returns
    them) and its own keys (:meth:`Design.check`)."""
    cls = design_class(cfg)
    for attack in cfg.attack.names:
        returning = " or ".join(n for n, d in DESIGNS.items() if d.returns_gradients)
        require(
            attack not in GRADIENT_ATTACKS or cls.returns_gradients,
            "attack.names",
            f"attack {attack!r} reads per-sample gradients, which design.name={cls.name} does not exchange: "
            f"drop {attack!r} from attack.names or use design.name={returning}",
        )
    cls(cfg).check()


def design_for(cfg: Config, command: str) -> Design:
    """The design ``cfg.design`` names, its config checked for ``command`` (train | simulate | attack)."""
    design = design_class(cfg)(cfg)
    design.validate(command)
    return design


__all__ = ["DESIGNS", "Design", "check_design", "design_class", "design_for"]
