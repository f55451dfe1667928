"""Datasets (registry and loading), tokenisation and batching, and partitions over devices.

The batching names load on first use (PEP 562), so `privtune-ray datasets` and config checks that only need
the registry do not import torch.
"""

from importlib import import_module

from .partition import PARTITIONERS, partition
from .registry import DATASETS, DatasetSpec, get_spec, load_split, resolve_data_dir

_BATCHING = ("Batch", "TokenizedSplit", "tokenize_split", "collate", "batch_indices")

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "get_spec",
    "load_split",
    "resolve_data_dir",
    *_BATCHING,
    "PARTITIONERS",
    "partition",
]


def __getattr__(name: str):
    if name not in _BATCHING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(".batching", __name__), name)
