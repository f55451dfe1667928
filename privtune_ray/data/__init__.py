"""Datasets (registry and loading), tokenisation and batching, and partitions over devices.

The names load on first use (PEP 562), so `privtune-ray datasets` and config checks that only need the registry
do not import torch.
"""

from importlib import import_module

_HOME = {
    **dict.fromkeys(("DATASETS", "DatasetSpec", "get_spec", "load_split", "resolve_data_dir"), "registry"),
    **dict.fromkeys(("Batch", "TokenizedSplit", "tokenize_split", "collate", "batch_indices"), "batching"),
    **dict.fromkeys(("PARTITIONERS", "partition"), "partition"),
}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
