"""Datasets (registry and loading), tokenisation and batching, and partitions over devices."""

from .batching import Batch, TokenizedSplit, batch_indices, collate, tokenize_split
from .partition import PARTITIONERS, partition
from .registry import DATASETS, DatasetSpec, get_spec, load_split, resolve_data_dir

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "get_spec",
    "load_split",
    "resolve_data_dir",
    "Batch",
    "TokenizedSplit",
    "tokenize_split",
    "collate",
    "batch_indices",
    "PARTITIONERS",
    "partition",
]
