"""Privacy mechanisms: what a device applies to its bottom output h before upload (SPEC §2).

``MECHANISMS`` maps a config name to a :class:`Mechanism` class; each reads its keys of the ``mechanism`` config
section through its own ``Params`` dataclass beside its code (peft style) and builds itself from them
(``from_params``).

``params.py`` holds the mechanisms' keys (no torch: config checks read it); ``registry.py`` the mechanisms.
"""

from .params import MECHANISM_PARAMS

__all__ = ["MECHANISM_PARAMS"]
