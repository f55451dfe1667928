"""The attacker's public text: which corpora, how many sentences, and never the victims' own.

The attacker's budget of text (``attack`` section):

* ``aux_dataset``/``aux_split`` (default: the run's dataset, ``train``) with ``aux_samples`` sentences of it (null:
  all of it). Where that is the victims' training split, the sentences are **carved out** of it, so the devices never
  send them (:func:`carve_aux`);
* ``aux_corpora``: further public corpora, ``"dataset:split"`` each, taken whole (e.g. ``sst2:test``, the unlabelled
  SST-2 text; ``ag_news:train``; ``blog:train``; ``squad:train``, the SQuAD contexts; ``trustpilot:train``). Their
  labels are dropped (-1) unless they are the victims' dataset: another task's labels are not the victims' labels.

Then every auxiliary sentence that equals, or is contained as a word run in, a victim's sentence is dropped
(:func:`disjoint_aux`; ``data/overlap.py``), and the summary says how many.
"""

from __future__ import annotations

import numpy as np

from ..config import Config
from ..data.batching import TokenizedSplit, tokenize_split
from ..data.overlap import contained_in
from ..data.registry import get_spec, load_split
from ..errors import ConfigError, DataError
from .params import aux_from_training, check_aux_fits, parse_corpus, probe_attributes


def _tokenized(cfg: Config, tokenizer, dataset: str, split: str, max_samples: int | None, seed: int) -> TokenizedSplit:
    raw = load_split(
        dataset, split, cfg.data.data_dir, hub_fallback=cfg.data.hub_fallback, max_samples=max_samples, seed=seed
    )
    if max_samples is not None and len(raw) < max_samples:
        raise ConfigError(
            f"attack.aux_samples={max_samples} but {dataset}:{split} holds {len(raw)} sentences: lower it, or set "
            f"attack.aux_samples=null to take all of them"
        )
    data = tokenize_split(raw, tokenizer, cfg.model.max_length, attributes=get_spec(dataset).attributes)
    data.origin = np.full(len(data), f"{dataset}:{split}", dtype=object)
    return data


def further_corpora(cfg: Config, tokenizer) -> list[TokenizedSplit]:
    """``attack.aux_corpora``, each whole; labels kept only for the victims' own dataset."""
    parts = []
    for entry in cfg.attack.aux_corpora:
        dataset, split = parse_corpus(entry)
        part = _tokenized(cfg, tokenizer, dataset, split, None, cfg.seed + 17)
        if dataset != cfg.data.dataset:
            part.labels = np.full(len(part), -1, dtype=np.int64)
        parts.append(part)
    return parts


def load_aux(cfg: Config, tokenizer, victims_dataset: str, victims_split: str) -> TokenizedSplit:
    """The attacker's public text from ``attack.aux_dataset``/``aux_split`` (not the victims' split) and
    ``attack.aux_corpora``."""
    dataset = cfg.attack.aux_dataset or cfg.data.dataset
    if (dataset, cfg.attack.aux_split) == (victims_dataset, victims_split):
        raise ConfigError(
            f"attack.aux_split={cfg.attack.aux_split!r} of {dataset!r} is the victims' own data: the attacker's auxiliary "
            f"set must be disjoint from it; choose another split (e.g. train) or attack.aux_dataset"
        )
    primary = _tokenized(cfg, tokenizer, dataset, cfg.attack.aux_split, cfg.attack.aux_samples, cfg.seed + 17)
    if dataset != cfg.data.dataset:
        primary.labels = np.full(len(primary), -1, dtype=np.int64)
    return TokenizedSplit.concat([primary, *further_corpora(cfg, tokenizer)])


def carve_aux(train: TokenizedSplit, n: int | None, seed: int) -> tuple[TokenizedSplit, TokenizedSplit]:
    """Split the training data into (auxiliary, remaining): the attacker's public share is not trained on."""
    n = len(train) if n is None else n
    check_aux_fits(n, len(train))
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(order[:n])), train.subset(np.sort(order[n:]))


def attacker_data(cfg: Config, tokenizer, train_split: TokenizedSplit) -> tuple[TokenizedSplit, TokenizedSplit]:
    """(the attacker's public text, the devices' training data). Where the auxiliary text comes from the training
    split it is carved out of it (so the devices never send it), and ``attack.aux_corpora`` join it."""
    probe_attributes(cfg.attack, cfg.data.dataset)  # bad input fails before anything is loaded
    if not aux_from_training(cfg):
        return load_aux(cfg, tokenizer, cfg.data.dataset, cfg.data.train_split), train_split
    aux, remaining = carve_aux(train_split, cfg.attack.aux_samples, cfg.seed + 17)
    aux.origin = np.full(len(aux), f"{cfg.data.dataset}:{cfg.data.train_split}", dtype=object)
    return TokenizedSplit.concat([aux, *further_corpora(cfg, tokenizer)]), remaining


def disjoint_aux(aux: TokenizedSplit, victims_texts: list[str]) -> tuple[TokenizedSplit, int]:
    """``aux`` without any sentence equal to, or contained as a word run in, a victim's sentence; returns it and how
    many were dropped."""
    drop = contained_in(aux.texts, victims_texts)
    kept = aux.subset(np.flatnonzero(~drop))
    if len(kept) == 0:
        raise DataError(
            "the auxiliary set is entirely made of victims' sentences or phrases of them: choose another "
            "attack.aux_split, aux_dataset or aux_corpora"
        )
    return kept, int(drop.sum())


def corpus_counts(aux: TokenizedSplit) -> dict[str, int]:
    """Sentences per corpus of an assembled auxiliary set."""
    if aux.origin is None:
        return {"unnamed": len(aux)}
    names, counts = np.unique(aux.origin.astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}
