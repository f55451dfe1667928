"""Reference (single-process) split fine-tuning: device client, cloud server, and the loop joining them."""

from .client import SplitClient
from .server import TopServer, adapt_top, apply_lora, build_optimizer


def __getattr__(name: str):
    # the loop loads the designs, which use this package's client and server: imported on first use
    if name in ("evaluate", "run_training"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)


__all__ = ["SplitClient", "TopServer", "adapt_top", "apply_lora", "build_optimizer", "evaluate", "run_training"]
