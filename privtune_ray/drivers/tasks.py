"""What a run trains on, shared by the commands: the task's dataset spec, its tokenised splits, the top's device."""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..data.batching import TokenizedSplit, tokenize_generation, tokenize_split
from ..data.registry import get_spec, load_split
from ..errors import ConfigError


def top_device(name: str) -> str:
    """``train.device`` as a torch device: ``auto`` is cuda when torch sees a GPU; cuda without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no GPU: use train.device=auto or cpu")
    return name


def classification_spec(cfg: Config, command: str):
    """The dataset's spec; a generation dataset or a causal-LM task is an error naming the datasets that fit."""
    spec = get_spec(cfg.data.dataset)
    if spec.task != "classification" or cfg.model.task != "classification":
        raise ConfigError(
            f"`privtune-ray {command}` fine-tunes classification tasks; data.dataset={cfg.data.dataset!r} is a "
            f"{spec.task} task and model.task={cfg.model.task!r}: pick sst2, financial_phrasebank, blog, ag_news or trustpilot"
        )
    return spec


def train_spec(cfg: Config):
    """``privtune-ray train``: a classification dataset with a classifier, or a generation dataset (SQuAD)
    with a causal LM; a mismatch is an error naming the key to change."""
    spec = get_spec(cfg.data.dataset)
    if spec.task == "generation" and cfg.model.task != "causal-lm":
        raise ConfigError(
            f"data.dataset={cfg.data.dataset!r} is a generation task: set model.task=causal-lm and a "
            f"decoder model (a gpt2, opt or llama checkpoint), as simulations/squad_generation.yaml does"
        )
    if spec.task == "generation":
        return spec
    if cfg.model.task == "causal-lm":
        raise ConfigError(
            f"model.task=causal-lm needs a generation dataset (squad); {cfg.data.dataset!r} is a "
            f"{spec.task} task: set model.task=classification"
        )
    return classification_spec(cfg, "train")


def load_task_data(cfg: Config, tokenizer, spec) -> tuple[TokenizedSplit, TokenizedSplit]:
    """The tokenised training split (with the dataset's private attributes) and eval split of ``cfg.data``;
    generation datasets as prompt + answer sequences (:func:`tokenize_generation`)."""
    load: dict[str, Any] = dict(data_dir=cfg.data.data_dir, hub_fallback=cfg.data.hub_fallback, seed=cfg.seed)
    train_raw = load_split(cfg.data.dataset, cfg.data.train_split, max_samples=cfg.data.max_train_samples, **load)
    eval_raw = load_split(cfg.data.dataset, cfg.data.eval_split, max_samples=cfg.data.max_eval_samples, **load)
    if spec.task == "generation":
        n = cfg.train.max_new_tokens
        return (
            tokenize_generation(train_raw, tokenizer, cfg.model.max_length, n),
            tokenize_generation(eval_raw, tokenizer, cfg.model.max_length, n),
        )
    return (
        tokenize_split(train_raw, tokenizer, cfg.model.max_length, attributes=spec.attributes),
        tokenize_split(eval_raw, tokenizer, cfg.model.max_length),
    )
