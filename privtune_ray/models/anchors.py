"""Token anchors: where each vocabulary token lands at the split, a_v = bottom("v" alone) ∈ R^d.

a_v is the bottom output at token v's position for the input "v" alone, with the model's special tokens
(e.g. "[CLS] v [SEP]"). For m = 0 this is v's embedding row through the embedding stage (position and
LayerNorm included), i.e. in the same space as what a device uploads. PrivTune's token graph and the
cloud's inversion attacks both start from them. Computed once per (model, m) and cached on disk as .npy
under ``$PRIVTUNE_CACHE_DIR`` (default ``~/.cache/privtune-ray``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .split import BottomModel

ANCHORS_VERSION = 1


def cache_dir(directory: str | os.PathLike | None = None) -> Path:
    return Path(directory or os.environ.get("PRIVTUNE_CACHE_DIR") or Path.home() / ".cache" / "privtune-ray")


def single_token_template(tokenizer) -> tuple[list[int], int]:
    """The model's input for one token (special tokens included) and that token's position in it."""
    for word in ("the", "a", "1", "x"):
        alone = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(alone) == 1:
            full = list(tokenizer(word, add_special_tokens=True)["input_ids"])
            return full, full.index(alone[0])
    raise ModelError("cannot find a single-token word to build token anchors with this tokenizer")


def token_anchors(bottom: BottomModel, tokenizer, batch_size: int = 1024) -> torch.Tensor:
    """a_v for every v < V: the bottom output at v's position in the tokenised single-token input."""
    vocab_size = bottom.embedding_matrix.shape[0]
    template, position = single_token_template(tokenizer)
    anchors = []
    for start in range(0, vocab_size, batch_size):
        ids = torch.arange(start, min(start + batch_size, vocab_size))
        inputs = torch.tensor(template).repeat(len(ids), 1)
        inputs[:, position] = ids
        anchors.append(bottom(inputs, torch.ones_like(inputs))[:, position].float())
    return torch.cat(anchors)


def load_or_build_anchors(
    bottom: BottomModel, tokenizer, model_id: str, directory: str | os.PathLike | None = None, cache: bool = True
) -> torch.Tensor:
    """The cached anchors [V, d] of (model, m), computed and saved on first use. ``cache=False`` for a bottom whose
    weights are not the pretrained model's (GuardedTuning's trained A_b): computed afresh, nothing read or saved."""
    if not cache:
        return token_anchors(bottom, tokenizer)
    key = hashlib.sha1(f"v{ANCHORS_VERSION}|{model_id}|m={bottom.m}".encode()).hexdigest()[:16]
    path = cache_dir(directory) / f"anchors-{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    anchors = token_anchors(bottom, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # one per process: parallel sweep points build at once
    np.save(tmp, anchors.numpy())
    os.replace(tmp, path)
    return anchors
