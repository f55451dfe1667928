"""GuardedTuning (Shi, Ouyang & Wang, WWW 2025; SPEC §2): the device keeps both ends of the model.

An L-block model at split depth m with a adapter blocks per end [ours: the adapters are the model's own blocks,
as in offsite-tuning]:

    device: E and blocks 1..m frozen (the bottom), blocks m+1..m+a (bottom adapter A_b),
            blocks L−a+1..L + final norm + head (top adapter A_t)
    cloud:  blocks m+a+1..L−a (the middle M)

Everything that crosses a cut is b-bit quantised (``design.bits``; ``quantisation.py``). Per step:

* ``online``: A1 = A_b(bottom(x)) ↑; A2 = M(A1) ↓; the device computes
  ℓ = Σ CE(A_t(A2), y) + α·B·dCor(E(x), A1) and sends ∂ℓ/∂A2 ↑; the cloud backpropagates and returns ∂ℓ/∂A1 ↓.
  A_b, M and A_t all train; labels never leave the device.
* ``gradfree``: A1 ↑, A2 ↓ (the middle runs without autograd); only A_t trains; nothing returns up.
* ``offline`` (offsite-tuning): the device downloads once an emulator M' of the middle (M with layers
  dropped uniformly, keeping ``emulator_keep`` of them, frozen) and trains A_b and A_t on
  Σ CE(A_t(M'(A_b(bottom(x)))), y) + α·B·dCor(E(x), A1) with no per-step traffic; the cloud plugs the
  adapters into the full model.

dCor (``dcor.py``) is taken between the embedding output E(x) and A1, each sample flattened over its L×d
values as the batch is sent (rows at padding positions zero in both, as in every message); B·dCor keeps it on
the per-sample scale of Σ CE.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ...errors import ConfigError
from ...message import CHANNELS, Message, tensor_from_bytes, tensor_to_bytes, zero_padding
from ...models.split import BottomModel, TopModel, family_of, run_blocks
from ...training.server import TopServer, summed_loss
from ..dcor import distance_correlation
from ..params import GuardedParams


@dataclass(frozen=True)
class GuardedLayout:
    """Which blocks (0-based indices) each party holds; ``check`` refuses a layout with no middle."""

    depth: int  # L
    m: int  # frozen bottom blocks
    a: int  # blocks per adapter
    emulator_keep: float = 0.5

    @classmethod
    def check(cls, depth: int, m: int, a: int, emulator_keep: float = 0.5, model: str = "the model") -> GuardedLayout:
        if a < 1 or m + 2 * a > depth - 1:
            most = (depth - 1 - m) // 2
            fix = (
                f"set design.adapter_layers={most}"
                if most == 1
                else f"set design.adapter_layers to 1..{most}"
                if most > 1
                else f"lower model.split_depth to at most {depth - 1 - 2 * a}"
                if depth - 1 - 2 * a >= 0
                else "use a deeper model"
            )
            raise ConfigError(
                f"design.adapter_layers={a} with model.split_depth={m} leaves no middle block on the server in "
                f"{model}'s {depth} blocks (GuardedTuning needs split_depth + 2·adapter_layers <= {depth - 1}): {fix}"
            )
        return cls(depth, m, a, emulator_keep)

    @property
    def bottom_adapter(self) -> list[int]:
        return list(range(self.m, self.m + self.a))

    @property
    def middle(self) -> list[int]:
        return list(range(self.m + self.a, self.depth - self.a))

    @property
    def top_adapter_start(self) -> int:
        return self.depth - self.a

    @property
    def emulator(self) -> list[int]:
        """Offsite-tuning's uniform layer drop: round(keep·|M|) (at least 1) middle blocks, evenly spaced."""
        middle = self.middle
        n = max(1, round(self.emulator_keep * len(middle)))
        return [middle[int(i)] for i in np.linspace(0, len(middle) - 1, n).round().astype(int)]


def guarded_layout(cfg, depth: int) -> GuardedLayout:
    """The layout of ``cfg`` (a :class:`~privtune_ray.config.Config`) on a model of ``depth`` blocks."""
    p = GuardedParams.of(cfg.design)
    return GuardedLayout.check(depth, cfg.model.split_depth, p.adapter_layers, p.emulator_keep, cfg.model.name)


class Blocks(nn.Module):
    """A run of the model's own blocks ``indices``, called with the context rebuilt from the mask."""

    def __init__(self, task_model: nn.Module, indices: list[int]):
        super().__init__()
        family = family_of(task_model)
        base = family.base(task_model)
        blocks = family.blocks(base)
        self.context = family.context(base)
        self.blocks = nn.ModuleList([blocks[i] for i in indices])

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, hidden, self.context(hidden, attention_mask))


class ClientAdapters(nn.Module):
    """The device's trainable part: A_b (``bottom``) and A_t (``top``: blocks, final norm, head)."""

    def __init__(self, task_model: nn.Module, layout: GuardedLayout, task: str):
        super().__init__()
        model = copy.deepcopy(task_model)  # the adapters own their blocks
        self.bottom = Blocks(model, layout.bottom_adapter)
        self.top = TopModel(family_of(model), model, layout.top_adapter_start, task)

    def trainable(self, design: str) -> list[nn.Parameter]:
        """What a design trains on the device: both adapters, or only A_t (gradfree)."""
        return list((self.top if design == "gradfree" else self).parameters())

    def state_bytes(self) -> bytes:
        """The adapters' weights as a device downloads them (safetensors, fp32)."""
        return st_save({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()})

    def load_bytes(self, blob: bytes) -> None:
        self.load_state_dict(st_load(blob))


def gradients_to_bytes(grads: list[torch.Tensor | None]) -> bytes:
    """A device's adapter gradients (what it uploads for aggregation): safetensors, fp32, None left out."""
    return st_save({str(i): g.contiguous() for i, g in enumerate(grads) if g is not None})


def gradients_from_bytes(blob: bytes, n: int) -> list[torch.Tensor | None]:
    tensors = st_load(blob)
    return [tensors.get(str(i)) for i in range(n)]


def clip_and_noise(
    g: torch.Tensor, attention_mask: torch.Tensor, clip: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """g̃_i = g_i·min(1, C/‖g_i‖₂) + N(0, σ²C²·I) for each sample i of g [B, L, d], over its real rows (the norm
    is taken over them; padding rows stay zero and are never sent)."""
    real = attention_mask.unsqueeze(-1).to(g.dtype)
    g = g * real
    scale = torch.clamp(clip / g.flatten(1).norm(dim=1).clamp_min(1e-12), max=1.0)
    g = g * scale.view(-1, 1, 1)
    if sigma > 0:
        g = g + torch.randn(g.shape, generator=generator, dtype=g.dtype) * (sigma * clip) * real
    return g


class GuardedClient:
    """The device side of a GuardedTuning design; ``compute_s`` accumulates measured seconds.

    Stateless between calls: ``backward_bottom`` recomputes A1 with autograd (A_b runs without dropout, so
    it is the A1 that was sent), so any worker can run any phase.
    """

    def __init__(
        self,
        design: str,
        bottom: BottomModel,
        adapters: ClientAdapters,
        dcor_weight: float,
        bits: int | None,
        emulator: Blocks | None = None,
        grad_clip: float | None = None,
        grad_sigma: float = 0.0,
    ):
        self.design, self.bottom, self.adapters, self.alpha, self.bits = design, bottom, adapters, dcor_weight, bits
        self.emulator = emulator
        self.grad_clip, self.grad_sigma = grad_clip, grad_sigma  # online's label defence (GuardedParams)
        self.compute_s = 0.0

    def _a1(self, batch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(E(x), A1 = A_b(bottom(x))), padding rows zero (as A1 is sent)."""
        mask = batch.attention_mask
        emb = zero_padding(self.bottom.embedding(batch.input_ids, mask, None).detach(), mask)
        h = self.bottom(batch.input_ids, mask)
        self.adapters.bottom.eval()  # [ours] no dropout in A_b: the A1 recomputed for backward is the one sent
        with torch.set_grad_enabled(grad):
            return emb, zero_padding(self.adapters.bottom(h, mask), mask)

    def _decorrelation(self, emb: torch.Tensor, a1: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0 or len(a1) < 2:
            return a1.new_zeros(())
        return self.alpha * len(a1) * distance_correlation(emb, a1)

    def upload(self, batch) -> bytes:
        """online, gradfree: the A1 message (mask, no labels) as it crosses the first cut."""
        start = time.perf_counter()
        _, a1 = self._a1(batch, grad=False)
        msg = Message(
            hidden=a1.detach(),
            attention_mask=batch.attention_mask,
            labels=torch.zeros(0, dtype=torch.long),
            split_depth=self.bottom.m + len(self.adapters.bottom.blocks),
            meta={"design": self.design},
            bits=self.bits,
        )
        payload = msg.to_bytes()
        self.compute_s += time.perf_counter() - start
        return payload

    def top_step(
        self, batch, a2_payload: bytes, noise_seed: int = 0
    ) -> tuple[float, bytes | None, list[torch.Tensor | None]]:
        """online, gradfree: A_t on the received A2 and the local labels. Returns (Σ CE in nats, the ∂ℓ/∂A2
        payload for online or None, A_t's gradients). With the label defence on, the payload is
        :func:`clip_and_noise` of ∂ℓ/∂A2 (noise drawn from ``noise_seed``); A_t's own gradients are exact."""
        start = time.perf_counter()
        a2 = tensor_from_bytes(a2_payload).requires_grad_(self.design == "online")
        self.adapters.train()
        loss = summed_loss(self.adapters.top(a2, batch.attention_mask), batch.labels)
        params = list(self.adapters.top.parameters())
        wrt = params + ([a2] if self.design == "online" else [])
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        grad_up = None
        if self.design == "online":
            g = grads[-1]
            if self.grad_clip is not None:
                generator = torch.Generator().manual_seed(noise_seed)
                g = clip_and_noise(g, batch.attention_mask, self.grad_clip, self.grad_sigma, generator)
            grad_up = tensor_to_bytes(g, batch.attention_mask, self.bits)
        self.compute_s += time.perf_counter() - start
        return float(loss.detach()), grad_up, list(grads[: len(params)])

    def backward_bottom(self, batch, grad_a1_payload: bytes) -> tuple[float, list[torch.Tensor | None]]:
        """online: backpropagate the returned ∂ℓ/∂A1 (plus α·B·dCor) into A_b. Returns (α·B·dCor, A_b's gradients)."""
        start = time.perf_counter()
        emb, a1 = self._a1(batch, grad=True)
        penalty = self._decorrelation(emb, a1)
        params = list(self.adapters.bottom.parameters())
        total = (a1 * tensor_from_bytes(grad_a1_payload)).sum() + penalty  # ⟨∂ℓ/∂A1, A1⟩ carries the task gradient
        grads = torch.autograd.grad(total, params, allow_unused=True)
        self.compute_s += time.perf_counter() - start
        return float(penalty.detach()), list(grads)

    def offline_step(self, batch) -> tuple[float, float, list[torch.Tensor | None]]:
        """offline: A_t(M'(A1)) against the emulator, all on the device. Returns (Σ CE, α·B·dCor, adapter gradients)."""
        assert self.emulator is not None, "offline's client holds the emulator"
        start = time.perf_counter()
        emb, a1 = self._a1(batch, grad=True)
        self.adapters.top.train()
        loss = summed_loss(
            self.adapters.top(self.emulator(a1, batch.attention_mask), batch.attention_mask), batch.labels
        )
        penalty = self._decorrelation(emb, a1)
        params = list(self.adapters.parameters())
        grads = torch.autograd.grad(loss + penalty, params, allow_unused=True)
        self.compute_s += time.perf_counter() - start
        return float(loss.detach()), float(penalty.detach()), list(grads)

    @torch.no_grad()
    def predict(self, batch, a2: torch.Tensor) -> torch.Tensor:
        self.adapters.eval()
        return self.adapters.top(a2, batch.attention_mask)


class MiddleServer(TopServer):
    """The cloud's middle M behind narrow methods. online: it trains (the round's gradients are summed and
    stepped as the split design's top is); gradfree and offline: frozen, forward only.

    ``forward`` keeps each message's graph under its key until ``backward`` (online) returns ∂ℓ/∂A1.
    """

    def __init__(self, middle: Blocks, optimizer, scheduler, trains: bool, bits: int | None, device="cpu"):
        middle.requires_grad_(trains)
        super().__init__(middle, optimizer, scheduler, device=device)
        self.trains, self.bits = trains, bits
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def forward(self, key: int, payload: bytes, train: bool) -> bytes:
        """A2 = M(A1) as it crosses back (b-bit when set)."""
        start = time.perf_counter()
        msg = Message.from_bytes(payload)
        a1 = msg.hidden.to(self.device)
        self.top.train(train and self.trains)
        with torch.set_grad_enabled(train and self.trains):
            a1.requires_grad_(train and self.trains)
            a2 = self.top(a1, msg.attention_mask.to(self.device))
        if train and self.trains:
            self._pending[key] = (a1, a2, msg.attention_mask)
        out = tensor_to_bytes(a2.detach().cpu(), msg.attention_mask, self.bits)
        self.compute_s += time.perf_counter() - start
        return out

    def backward(self, key: int, grad_payload: bytes) -> bytes:
        """online: ∂ℓ/∂A2 in, the middle's gradients accumulated, ∂ℓ/∂A1 out."""
        start = time.perf_counter()
        a1, a2, mask = self._pending.pop(key)
        a2.backward(tensor_from_bytes(grad_payload).to(self.device))
        assert a1.grad is not None, "forward kept A1 with requires_grad"
        out = tensor_to_bytes(a1.grad.detach().cpu(), mask, self.bits)
        self.compute_s += time.perf_counter() - start
        return out

    def step(self, n_samples: int) -> None:
        self._pending.clear()
        super().step(n_samples)  # a frozen middle has no trainable parameter: only the schedule moves


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights as downloaded (safetensors, fp32)."""
    return len(st_save({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}))


__all__ = [
    "CHANNELS",
    "Blocks",
    "ClientAdapters",
    "GuardedClient",
    "GuardedLayout",
    "MiddleServer",
    "gradients_from_bytes",
    "gradients_to_bytes",
    "clip_and_noise",
    "GuardedParams",
    "guarded_layout",
    "module_bytes",
]
