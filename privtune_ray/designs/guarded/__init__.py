"""GuardedTuning (Shi, Ouyang & Wang, WWW 2025): the device keeps both ends of the model.

modules.py  the parts: layout, the model's own blocks as adapters, the device client, the cloud's middle
rounds.py   the coordinator's state: the global adapters, their optimiser and step
designs.py  the three designs (online, gradfree, offline) behind the Design interface
"""

from .designs import GradfreeDesign, GuardedDesign, OfflineDesign, OnlineDesign
from .modules import (
    CHANNELS,
    Blocks,
    ClientAdapters,
    GuardedClient,
    GuardedLayout,
    GuardedParams,
    MiddleServer,
    gradients_from_bytes,
    gradients_to_bytes,
    guarded_layout,
    module_bytes,
)

__all__ = [
    "CHANNELS",
    "Blocks",
    "ClientAdapters",
    "GradfreeDesign",
    "GuardedClient",
    "GuardedDesign",
    "GuardedLayout",
    "GuardedParams",
    "MiddleServer",
    "OfflineDesign",
    "OnlineDesign",
    "gradients_from_bytes",
    "gradients_to_bytes",
    "guarded_layout",
    "module_bytes",
]
