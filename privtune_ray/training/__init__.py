"""Reference (single-process) split fine-tuning: device client, cloud server, and the loop joining them."""

from .client import SplitClient
from .loop import evaluate, run_training
from .server import TopServer, apply_lora, build_optimizer

__all__ = ["SplitClient", "TopServer", "apply_lora", "build_optimizer", "evaluate", "run_training"]
