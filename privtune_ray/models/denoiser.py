"""Cloud denoisers: a trainable front block before the top's first block (``train.denoiser``).

The cloud sees only h̃; a front block learns to map it back towards h, from public text (pretraining: predict h from
h̃ through the cloud's own copy of the mechanism) and then with the task loss. It reads what the cloud already
receives, so it costs no privacy.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenDenoiser(nn.Module):
    """``mlp``: per token, h' = h̃ + W₂·GELU(W₁·LN(h̃)) with W₁ ∈ R^{w×d}, W₂ ∈ R^{d×w}; W₂ = 0 at the start, so
    the top sees h̃ unchanged until the denoiser learns."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, width)
        self.down = nn.Linear(width, d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden + self.down(nn.functional.gelu(self.up(self.norm(hidden))))


DENOISERS = {"mlp": TokenDenoiser}


def build_denoiser(kind: str, d: int, width: int) -> nn.Module | None:
    """The front block ``kind`` names for hidden size ``d`` (None for ``none``)."""
    return None if kind == "none" else DENOISERS[kind](d, width)


__all__ = ["DENOISERS", "TokenDenoiser", "build_denoiser"]
