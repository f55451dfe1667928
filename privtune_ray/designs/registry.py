"""The designs by config name (``DESIGNS``).

A new design is one new file (a :class:`~privtune_ray.designs.base.Design` subclass), one line below and one
in ``params.DESIGN_PARAMS``.
"""

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


def design_for(cfg: Config, command: str) -> Design:
    """The design ``cfg.design`` names, its config checked for ``command`` (train | simulate | attack)."""
    design = design_class(cfg)(cfg)
    design.validate(command)
    return design


__all__ = ["DESIGNS", "design_class", "design_for"]
