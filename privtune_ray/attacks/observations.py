"""What the cloud observed for a set of sentences, with the ground truth the attacks are scored against.

The cloud sees h̃ and the attention mask (and labels, which travel with them, SPEC §1). The token ids,
texts and private attributes are the simulator's ground truth: attacks train on them only for the
attacker's own auxiliary data and are scored on them for the victims'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.batching import TokenizedSplit, batch_indices, collate
from ..errors import DataError
from ..mechanisms.base import Mechanism
from ..message import Message
from ..models.split import BottomModel
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
            gradients=None if parts[0].gradients is None else torch.cat([pad(p.gradients) for p in parts]),
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
