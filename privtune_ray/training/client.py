"""Device side: bottom model → privacy mechanism → message."""

from __future__ import annotations

import time

import torch

from ..data.batching import Batch
from ..mechanisms.base import Mechanism
from ..message import Message
from ..models.split import BottomModel


class SplitClient:
    """Holds the bottom model and the mechanism; ``encode`` turns a batch into the :class:`Message` it uploads.

    h = f_bottom(x), h̃ = M.release(h); ``compute_s`` and ``mechanism_s`` accumulate their measured seconds.
    A causal LM's device keeps its ``head`` (:class:`~privtune_ray.training.lm_head.DeviceHead`) and its token
    targets; with ``upload_targets`` (``model.lm_head=cloud``) the targets travel instead, and leak.
    """

    def __init__(
        self,
        bottom: BottomModel,
        mechanism: Mechanism | None = None,
        device_id: int = 0,
        bits: int | None = None,
        head=None,
        upload_targets: bool = False,
    ):
        self.bottom = bottom
        self.bits = bits  # b-bit quantisation of h̃ on the wire (None: fp32)
        self.mechanism = mechanism or Mechanism()
        self.device_id = device_id
        self.head, self.upload_targets = head, upload_targets
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
        labels = batch.labels if self.head is None else torch.zeros(0, dtype=torch.long)  # U-shaped: they stay here
        return Message(
            hidden=released.contiguous(),
            attention_mask=batch.attention_mask,
            labels=labels,
            device_id=self.device_id,
            split_depth=self.bottom.m,
            meta={"mechanism": self.mechanism.name},
            bits=self.bits,
            targets_uploaded=self.upload_targets,
        )
