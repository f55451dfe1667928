"""The coordinator's GuardedTuning state: the one global copy of the device adapters, their optimiser and step.

Each round every selected device downloads the adapters' weights (:meth:`GuardedRounds.state_blob`) and
uploads its adapter gradients; :meth:`GuardedRounds.step` sums them (as a secure aggregator would), divides by
the round's samples and takes one AdamW step, beside the middle's step on the replicas.
"""

from __future__ import annotations

import copy

import torch

from ...config import Config
from ...training.server import build_optimizer
from .modules import Blocks, ClientAdapters, GuardedLayout, gradients_from_bytes, module_bytes


class GuardedRounds:
    """The global adapters, their optimiser, and the round's held gradients (``design``: the run's Design)."""

    def __init__(self, cfg: Config, task_model, layout: GuardedLayout, design):
        self.cfg, self.layout, self.design = cfg, layout, design
        self.adapters = ClientAdapters(task_model, layout, cfg.model.task)
        self.adapters.bottom.requires_grad_(design.trains_bottom_adapter)
        self.params = list((self.adapters if design.trains_bottom_adapter else self.adapters.top).parameters())
        self.optimizer, self.scheduler = build_optimizer(self.adapters, cfg.train, cfg.simulation.rounds)
        self.trainable_bytes = module_bytes(self.adapters if design.trains_bottom_adapter else self.adapters.top)
        # once, beside the bottom: A_b where it is frozen (gradfree), the emulator (offline)
        extra = 0 if design.trains_bottom_adapter else module_bytes(self.adapters.bottom)
        if design.local_only:
            extra += module_bytes(Blocks(task_model, layout.emulator))
        self.first_extra_bytes = extra
        self._blobs: dict[int, list[bytes]] = {}  # the round's adapter gradients per device, until step
        self.last_returned: dict[int, tuple[bytes, bytes]] = {}  # online: (A2, ∂ℓ/∂A2) per device
        self.sent: bytes | None = None  # the adapters as the latest round's devices downloaded them

    def state_blob(self) -> bytes:
        """The trainable adapters' weights as devices download them."""
        return self.adapters.state_bytes()

    def send(self) -> bytes:
        """The round's download (:meth:`state_blob`), kept as the round's adapters (:meth:`sent_adapters`)."""
        self.sent = self.state_blob()
        return self.sent

    def sent_adapters(self) -> ClientAdapters:
        """A copy of the adapters as devices last downloaded them (the current ones before any round)."""
        adapters = copy.deepcopy(self.adapters)
        if self.sent is not None:
            adapters.load_bytes(self.sent)
        return adapters

    def hold(self, blobs: dict[int, list[bytes]]) -> None:
        """The round's adapter-gradient uploads per device ([A_b, A_t] for online, one blob otherwise)."""
        self._blobs = blobs

    def device_updates(self) -> dict[int, dict[str, torch.Tensor]]:
        """The round's held adapter gradients per device, by parameter name (as uploaded, before the step)."""
        names = [name for name, p in self.adapters.named_parameters() if any(p is q for q in self.params)]
        return {
            i: {n: g for n, g in zip(names, self._device_gradients(blobs), strict=True) if g is not None}
            for i, blobs in self._blobs.items()
        }

    def step(self, n_samples: int) -> float:
        """Sum the round's adapter gradients, ÷ n, AdamW; returns the lr used."""
        lr = self.optimizer.param_groups[0]["lr"]
        total: list[torch.Tensor | None] = [None] * len(self.params)
        for blobs in self._blobs.values():
            for k, g in enumerate(self._device_gradients(blobs)):
                if g is not None:
                    so_far = total[k]
                    total[k] = g.clone() if so_far is None else so_far + g
        for p, g in zip(self.params, total, strict=True):
            p.grad = None if g is None else g / max(n_samples, 1)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._blobs = {}
        return lr

    def _device_gradients(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """One device's gradients in ``self.params`` order: [A_b, A_t] blobs (online), else one blob."""
        if len(blobs) == 1:  # A_t (gradfree) or both adapters (offline)
            return gradients_from_bytes(blobs[0], len(self.params))
        n_bottom = len(list(self.adapters.bottom.parameters()))
        return gradients_from_bytes(blobs[0], n_bottom) + gradients_from_bytes(blobs[1], len(self.params) - n_bottom)

    def state_dict(self) -> dict:
        return {
            "adapters": self.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sent": self.sent,
        }

    def load_state_dict(self, state: dict) -> None:
        self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sent = state.get("sent")
