"""A causal LM split U-shaped: the device keeps the LM head and the loss, so no token target crosses.

    device: h̃ = M(bottom(x))                       ─ act_up ─▶   cloud: z = g(f_L ∘ … ∘ f_{m+1}(h̃))
    device: ℓ = Σ_t CE(W·z_t, x_{t+1}) on the answer  ◀ act_down ─  z (the top's last hidden states, final norm g)
    device: ∂ℓ/∂z                                   ─ grad_up ─▶   cloud: backpropagate, AdamW step

The device's head W trains with its own AdamW on the top's schedule [ours: the head is the model's own LM
head, tied to nothing on the device]. Each cut carries the N real rows only (``message.tensor_to_bytes``):
N·d·4 bytes each way for fp32. Greedy decoding runs the same path: the cloud returns z, the device picks
the next token.
"""

from __future__ import annotations

import time
from typing import cast

import torch
from torch import nn

from ..message import Message, tensor_from_bytes, tensor_to_bytes
from .server import TopServer, summed_loss


class HiddenStates(nn.Module):
    """The cloud top's head in the U-shaped split: z as computed (blocks and final norm, no LM head)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden


def detach_head(top: nn.Module) -> nn.Module:
    """Take the LM head off the cloud's top (it returns z from now on) and return it, for the device."""
    head, top.head = cast(nn.Module, top.head), HiddenStates()
    return head


class DeviceHead(TopServer):
    """The device's end of the U: the LM head, the loss on the local token targets, their gradient for z.
    Its optimiser step is :meth:`TopServer.step` on the head (gradients ÷ samples, AdamW, the schedule);
    ``compute_s`` accumulates measured seconds."""

    @property
    def head(self) -> nn.Module:
        return self.top

    def loss_and_grad(
        self, z_payload: bytes, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> tuple[float, bytes]:
        """Σ CE (nats) of the received z against ``targets`` [B, L]; accumulates W's gradient and returns the
        ∂ℓ/∂z payload (real rows only)."""
        start = time.perf_counter()
        z = tensor_from_bytes(z_payload).requires_grad_(True)
        self.head.train()
        loss = summed_loss(self.head(z, attention_mask), targets)
        loss.backward()
        assert z.grad is not None  # z requires grad and the loss depends on it
        payload = tensor_to_bytes(z.grad, attention_mask)
        self.compute_s += time.perf_counter() - start
        return float(loss.detach()), payload

    @torch.no_grad()
    def logits(self, z_payload: bytes, attention_mask: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        return self.head(tensor_from_bytes(z_payload), attention_mask)


class HiddenStateServer(TopServer):
    """The cloud's side of the U: ``forward`` returns z's payload and keeps the graph until ``backward``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending: torch.Tensor | None = None

    def forward(self, msg: Message) -> bytes:
        start = time.perf_counter()
        self.top.train()
        z = self._logits(msg)  # the top's output: z, its head being HiddenStates
        self._pending = z
        out = tensor_to_bytes(z.detach().cpu(), msg.attention_mask)
        self.compute_s += time.perf_counter() - start
        return out

    def backward(self, grad_payload: bytes) -> None:
        """Accumulate the top's gradients from the returned ∂ℓ/∂z."""
        start = time.perf_counter()
        z, self._pending = self._pending, None
        assert z is not None  # kept by forward()
        z.backward(tensor_from_bytes(grad_payload).to(self.device))
        self.compute_s += time.perf_counter() - start

    def predict_payload(self, msg: Message) -> bytes:
        """z for a message in eval mode, as it crosses back."""
        return tensor_to_bytes(self.predict(msg), msg.attention_mask)


__all__ = ["DeviceHead", "HiddenStateServer", "HiddenStates", "detach_head"]
