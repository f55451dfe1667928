"""Device side: run the frozen bottom model on a local batch and package the upload."""

from __future__ import annotations

import time

from ..data.batching import Batch
from ..message import Message
from ..models.split import BottomModel


class SplitClient:
    """Holds the bottom model f_bottom; ``encode`` turns a batch into the :class:`Message` it uploads.

    ``compute_s`` accumulates the measured seconds of bottom forward passes.
    """

    def __init__(self, bottom: BottomModel, device_id: int = 0):
        self.bottom = bottom
        self.device_id = device_id
        self.compute_s = 0.0

    def encode(self, batch: Batch) -> Message:
        start = time.perf_counter()
        hidden = self.bottom(batch.input_ids, batch.attention_mask)
        self.compute_s += time.perf_counter() - start
        return Message(hidden=hidden, attention_mask=batch.attention_mask, labels=batch.labels, device_id=self.device_id)
