"""Device side: bottom model → privacy mechanism → message."""

from __future__ import annotations

import time

from ..data.batching import Batch
from ..mechanisms.base import Mechanism
from ..message import Message
from ..models.split import BottomModel


class SplitClient:
    """Holds the bottom model and the mechanism; ``encode`` turns a batch into the :class:`Message` it uploads.

    h = f_bottom(x), h̃ = M(h); ``compute_s`` and ``mechanism_s`` accumulate their measured seconds.
    """

    def __init__(self, bottom: BottomModel, mechanism: Mechanism | None = None, device_id: int = 0, bits: int | None = None):
        self.bottom = bottom
        self.bits = bits  # b-bit quantisation of h̃ on the wire (None: fp32)
        self.mechanism = mechanism or Mechanism()
        self.device_id = device_id
        self.compute_s = 0.0
        self.mechanism_s = 0.0

    def encode(self, batch: Batch) -> Message:
        start = time.perf_counter()
        hidden = self.bottom(batch.input_ids, batch.attention_mask)
        mid = time.perf_counter()
        released = self.mechanism.release(hidden, batch.attention_mask, batch.input_ids)
        end = time.perf_counter()
        self.compute_s += mid - start
        self.mechanism_s += end - mid
        return Message(hidden=released.contiguous(), attention_mask=batch.attention_mask, labels=batch.labels,
                       device_id=self.device_id, split_depth=self.bottom.m, meta={"mechanism": self.mechanism.name},
                       bits=self.bits)  # fmt: skip
