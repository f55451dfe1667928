"""What the cloud observed for a set of sentences, with the ground truth the attacks are scored against.

The cloud sees h̃ and the attention mask (and labels, which travel with them, SPEC §1). The token ids,
texts and private attributes are the simulator's ground truth: attacks train on them only for the
attacker's own auxiliary data and are scored on them for the victims'.

Two forms of the same reading interface (``batches``, ``pooled``, ``vocabulary``, ``len``), which every attack's
``fit`` takes:

* :class:`Observations`: h̃ held in memory (the victims; small auxiliary sets in tests); every pass sees the same h̃;
* :class:`ObservationStream`: the attacker's public text observed **on the fly**, one minibatch at a time through the
  bottom and the attacker's copy of the mechanism, so every epoch draws **fresh noise** and memory holds token ids
  only (about 4 bytes a token, against 4·d bytes a token for h̃: the whole of SST-2's training split is ~3.5 MB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from ..data.batching import TokenizedSplit, batch_indices, collate
from ..errors import DataError
from ..mechanisms.base import Mechanism
from ..message import Message
from ..models.split import BottomModel, mean_pool
from ..quantisation import dequantise, quantise


@dataclass
class Observations:
    hidden: torch.Tensor  # h̃ [N, L, d] float32, as uploaded (L = longest sentence of the set)
    attention_mask: torch.Tensor  # [N, L] int64
    input_ids: torch.Tensor  # [N, L] ground truth (pad where mask = 0)
    labels: torch.Tensor  # [N] task labels (-1: none, e.g. generation, whose messages carry token targets)
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # private attributes, one string each
    texts: list[str] = field(default_factory=list)
    gradients: torch.Tensor | None = None  # [N, L, d] what the device returned for h̃ (GuardedTuning online's ∂ℓ/∂A2)

    def __post_init__(self) -> None:
        if self.labels.dim() > 1 or len(self.labels) != len(self.hidden):  # a causal LM: no per-sample label
            self.labels = torch.full((self.labels.shape[0],), -1, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def batches(self, batch_size: int, seed: int) -> Iterator[Observations]:
        """One shuffled pass in minibatches of ``batch_size`` sentences (the same h̃ on every pass)."""
        order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield self.subset(order[start : start + batch_size])

    def pooled(self) -> Pooled:
        return Pooled.of(self)

    def vocabulary(self) -> torch.Tensor:
        """The distinct token ids at real positions (sorted)."""
        return torch.unique(self.input_ids[self.attention_mask.bool()])

    def token_lists(self) -> list[list[int]]:
        """Each sentence's real token ids."""
        return [row[m].tolist() for row, m in zip(self.input_ids, self.attention_mask.bool())]

    def subset(self, indices) -> Observations:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        length = int(self.attention_mask[idx].sum(1).max()) if len(idx) else 0
        return Observations(
            hidden=self.hidden[idx, :length],
            attention_mask=self.attention_mask[idx, :length],
            input_ids=self.input_ids[idx, :length],
            labels=self.labels[idx],
            attributes={k: v[idx.numpy()] for k, v in self.attributes.items()},
            texts=[self.texts[i] for i in idx.tolist()] if self.texts else [],
            gradients=None if self.gradients is None else self.gradients[idx, :length],
        )

    @classmethod
    def concat(cls, parts: list[Observations]) -> Observations:
        if not parts:
            raise DataError("no observations to attack: the victim sample is empty")
        length = max(p.hidden.shape[1] for p in parts)

        def pad(t: torch.Tensor, value=0) -> torch.Tensor:
            extra = length - t.shape[1]
            return torch.nn.functional.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra), value=value)

        return cls(
            hidden=torch.cat([pad(p.hidden) for p in parts]),
            attention_mask=torch.cat([pad(p.attention_mask) for p in parts]),
            input_ids=torch.cat([pad(p.input_ids) for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            attributes={k: np.concatenate([p.attributes[k] for p in parts]) for k in parts[0].attributes},
            texts=[t for p in parts for t in p.texts],
            # every part holds gradients when the first does
            gradients=(
                None if parts[0].gradients is None else torch.cat([pad(cast(torch.Tensor, p.gradients)) for p in parts])
            ),
        )

    @classmethod
    def from_message(cls, msg: Message, input_ids: torch.Tensor, attributes=None, texts=None) -> Observations:
        """A received message, with the ground truth of its batch (known to the simulator, not the cloud)."""
        return cls(
            msg.hidden.float(),
            msg.attention_mask.long(),
            input_ids,
            msg.labels,
            dict(attributes or {}),
            list(texts or []),
        )


def observe(
    bottom: BottomModel,
    mechanism: Mechanism,
    data: TokenizedSplit,
    pad_id: int,
    batch_size: int = 128,
    bits: int | None = None,
) -> Observations:
    """Push ``data`` through the bottom and the mechanism's release, as a device would before upload, and with
    ``bits`` through the b-bit wire format's round trip (``design.bits``)."""
    if len(data) == 0:
        raise DataError("no sentences to observe: the sample is empty (raise attack.victim_samples or aux_samples)")
    parts, order = [], []
    for idx in batch_indices(data.lengths, batch_size, shuffle=False, bucketing=True):
        batch = collate(data, idx, pad_id)
        released = mechanism.release(
            bottom(batch.input_ids, batch.attention_mask), batch.attention_mask, batch.input_ids
        )
        if bits is not None:
            released = dequantise(quantise(released, bits))
        parts.append(Observations(released.float(), batch.attention_mask, batch.input_ids, batch.labels))
        order.extend(batch.indices.tolist())
    obs = Observations.concat(parts).subset(np.argsort(np.asarray(order), kind="stable"))
    obs.attributes = {k: np.asarray(v) for k, v in data.attributes.items()}
    obs.texts = list(data.texts)
    return obs


@dataclass
class Pooled:
    """Sentence-level view for the attribute attacks: mean-pooled h̃ [N, d] (``mean_pool``) with each sentence's
    labels, private attributes and real token ids (ground truth of the attacker's own text)."""

    features: torch.Tensor
    labels: torch.Tensor
    attributes: dict[str, np.ndarray]
    tokens: list[list[int]]

    @classmethod
    def of(cls, obs: Observations) -> Pooled:
        return cls(mean_pool(obs.hidden.float(), obs.attention_mask), obs.labels, obs.attributes, obs.token_lists())

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class ObservationStream:
    """The attacker's public text, observed on the fly: each minibatch goes through ``bottom`` and ``mechanism`` (its
    ``release``, with the b-bit round trip where ``bits`` is set) when it is read, so a noisy mechanism draws fresh
    noise on every pass (an adaptive attacker can draw as much noise as it likes) and h̃ is never held for the whole
    set: peak memory ∝ one minibatch, not the corpus."""

    bottom: BottomModel
    mechanism: Mechanism
    data: TokenizedSplit
    pad_id: int
    bits: int | None = None
    # False: every pass draws the same noise for a sentence (fixed minibatches, the mechanism reseeded per minibatch
    # from ``seed``), as a set observed once and held would, without holding it
    fresh_noise: bool = True
    seed: int = 0
    bucketing: bool = False  # length-bucketed minibatches: less padding, a much weaker inverter (docs/attacker.md)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def texts(self) -> list[str]:
        return self.data.texts

    def _observe(self, indices) -> Observations:
        batch = collate(self.data, indices, self.pad_id)
        with torch.no_grad():
            hidden = self.bottom(batch.input_ids, batch.attention_mask)
        released = self.mechanism.release(hidden, batch.attention_mask, batch.input_ids).detach()
        if self.bits is not None:
            released = dequantise(quantise(released, self.bits))
        return Observations(
            released.float(),
            batch.attention_mask,
            batch.input_ids,
            batch.labels,
            {k: v[np.asarray(indices)] for k, v in self.data.attributes.items()},
        )

    def batches(self, batch_size: int, seed: int) -> Iterator[Observations]:
        """One pass in random minibatches, observed as it is read: fresh noise each pass, or (``fresh_noise=False``)
        the same minibatches in a new order, each with its own fixed noise.

        Random minibatches unless ``bucketing``."""
        if self.fresh_noise:
            for idx in batch_indices(self.data.lengths, batch_size, shuffle=True, bucketing=self.bucketing, seed=seed):
                yield self._observe(idx)
            return
        plan = batch_indices(self.data.lengths, batch_size, shuffle=True, bucketing=self.bucketing, seed=self.seed)
        for b in np.random.default_rng(seed).permutation(len(plan)):
            self.mechanism.reseed(self.seed + 1 + int(b))
            yield self._observe(plan[b])

    def pooled(self, batch_size: int = 128) -> Pooled:
        """Mean-pooled h̃ of every sentence (one noise draw), in the data's order."""
        features: torch.Tensor | None = None
        for idx in batch_indices(self.data.lengths, batch_size, shuffle=False, bucketing=True):
            obs = self._observe(idx)
            rows = mean_pool(obs.hidden, obs.attention_mask)
            if features is None:
                features = torch.zeros((len(self.data), rows.shape[1]))
            features[torch.as_tensor(idx)] = rows
        assert features is not None, "an ObservationStream is never empty (observe_stream)"
        labels = torch.as_tensor(self.data.labels, dtype=torch.long)
        return Pooled(features, labels, dict(self.data.attributes), [list(ids) for ids in self.data.input_ids])

    def vocabulary(self) -> torch.Tensor:
        return torch.unique(torch.as_tensor([t for ids in self.data.input_ids for t in ids], dtype=torch.long))

    def materialise(self) -> Observations:
        """Every sentence observed once and held (``observe``): for small sets only."""
        return observe(self.bottom, self.mechanism, self.data, self.pad_id, bits=self.bits)
