"""DP-Forward-style noise on clipped activations (Du et al., CCS 2023), with (ε, δ) from dp-accounting.

* ``gaussian``: clip every token row to ‖h_i‖₂ ≤ C, add N(0, σ²C²·I).
* ``laplace``: clip every token row to ‖h_i‖₁ ≤ C [ours: L1, so the Laplace mechanism's L1 sensitivity
  is bounded without a √d factor], add i.i.d. Laplace(0, λC) per coordinate.

Accounting [ours]: neighbouring samples may differ in every one of their ≤ L rows (for m > 0 one changed
token moves all contextual rows), each by at most 2C. One release of a sample is then a Gaussian
mechanism with L2 sensitivity 2C√L and noise σC, i.e. noise multiplier σ/(2√L); or a Laplace mechanism
with L1 sensitivity 2CL and scale λC, i.e. noise multiplier λ/(2L). R releases (epochs in which the sample
is sent) are composed with dp-accounting's PLD accountant (ε in nats); the RDP ε is given beside it.
"""

from __future__ import annotations

import abc

import torch

from ..accounting.validation import check_delta, check_noise_multiplier
from ..errors import ConfigError
from .base import Mechanism, real_tokens
from .guarantees import Guarantee, clipped_noise_guarantee
from .params import ClippedNoiseParams


def clip_rows(h: torch.Tensor, clip_norm: float, p: int) -> torch.Tensor:
    """h_i · min(1, C/‖h_i‖_p) for every row i (the last dimension)."""
    norms = h.norm(p=p, dim=-1, keepdim=True)
    return h * torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)


class _ClippedNoise(Mechanism, abc.ABC):
    norm_p = 2
    Params = ClippedNoiseParams

    @classmethod
    def from_params(cls, params, split, tokenizer, model_id, seed=0):
        return cls(params.noise_multiplier, params.clip_norm, params.delta, seed)

    def __init__(self, noise_multiplier: float, clip_norm: float, delta: float = 1e-5, seed: int = 0):
        check_noise_multiplier(noise_multiplier)
        check_delta(delta)
        if not clip_norm > 0:
            raise ConfigError(f"clip norm C must be > 0, got {clip_norm!r}")
        super().__init__(seed)
        self.noise_multiplier, self.clip_norm, self.delta = noise_multiplier, clip_norm, delta

    @abc.abstractmethod
    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Noise of the given shape for the clipped rows."""

    def perturb(self, h, attention_mask, input_ids):
        noisy = clip_rows(h, self.clip_norm, self.norm_p) + self.noise(tuple(h.shape)).to(h.dtype)
        return torch.where(real_tokens(attention_mask), noisy, h)

    def guarantee(self, releases: int = 1, max_length: int = 64) -> Guarantee:
        params = ClippedNoiseParams(self.noise_multiplier, self.clip_norm, self.delta)
        return clipped_noise_guarantee(self.name, params, releases, max_length)

    def params(self):
        return {"noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm, "delta": self.delta}


class GaussianActivation(_ClippedNoise):
    name = "gaussian"
    norm_p = 2

    def noise(self, shape):
        return torch.randn(*shape, generator=self.torch_rng) * (self.noise_multiplier * self.clip_norm)

    def noise_nll(self, released, clean):
        """‖h̃ − clip(h)‖² / (2σ²C²): Gaussian noise on the clipped row."""
        sigma = self.noise_multiplier * self.clip_norm
        return (released - clip_rows(clean, self.clip_norm, 2)).pow(2).sum(-1) / (2 * sigma**2)


class LaplaceActivation(_ClippedNoise):
    name = "laplace"
    norm_p = 1

    def noise(self, shape):
        """Laplace(0, b = λC) by the inverse CDF, b·sign(u)·(−log(1 − |u|)), with u uniform on the open interval
        (ε₆₄ − 1, 1) in float64 (as torch.distributions.Laplace draws it): |u| < 1, so every draw is finite
        (torch.rand's [0, 1) once gave log(0) = −inf); the tail is cut at b·log(1/ε₆₄) ≈ 36·b (mass 2e-16)."""
        eps = torch.finfo(torch.float64).eps
        u = torch.empty(shape, dtype=torch.float64).uniform_(eps - 1, 1, generator=self.torch_rng)
        return -(self.noise_multiplier * self.clip_norm) * torch.sign(u) * torch.log1p(-u.abs())

    def noise_nll(self, released, clean):
        """‖h̃ − clip₁(h)‖₁ / (λC): Laplace noise on the L1-clipped row."""
        return (released - clip_rows(clean, self.clip_norm, 1)).abs().sum(-1) / (self.noise_multiplier * self.clip_norm)
