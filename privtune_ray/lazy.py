"""Names a package exports but imports on first use (PEP 562), so that light commands (``--help``, config checks,
``account``, ``datasets``) do not pay for torch, pandas or Opacus they never touch."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` of ``package`` that imports ``names[name]`` (a submodule, relative to the
    package) when ``name`` is first read, and returns its attribute ``name``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{names[name]}", package), name)

    return __getattr__
