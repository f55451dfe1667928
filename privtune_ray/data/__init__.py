"""Datasets (registry and loading), tokenisation and batching, and partitions over devices.

The batching names load on first use (PEP 562), so `privtune-ray datasets` and config checks that only need
the registry do not import torch.
"""

from ..lazy import lazy_getattr
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


__getattr__ = lazy_getattr(__name__, dict.fromkeys(_BATCHING, "batching"))
