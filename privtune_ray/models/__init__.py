"""Pretrained models and their split into a device-side bottom and a cloud-side top."""

from .families import FAMILIES, Family
from .loading import load_split_model, load_task_model, load_tokenizer, resolve_model
from .split import BottomModel, SplitModel, TopModel, depth_of, split_model

__all__ = [
    "FAMILIES",
    "Family",
    "BottomModel",
    "TopModel",
    "SplitModel",
    "split_model",
    "depth_of",
    "load_split_model",
    "load_task_model",
    "load_tokenizer",
    "resolve_model",
]
