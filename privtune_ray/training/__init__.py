"""Split fine-tuning's two halves: the device client and the cloud server (the loop joining them is a driver:
``privtune_ray/drivers/train.py``)."""

from .client import SplitClient
from .server import TopServer, adapt_top, apply_lora, build_optimizer

__all__ = ["SplitClient", "TopServer", "adapt_top", "apply_lora", "build_optimizer"]
