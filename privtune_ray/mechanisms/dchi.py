"""d_χ-privacy (SAP-style; Feyisetan et al.): h̃_i = h_i + z_i with density p(z) ∝ exp(−η‖z‖₂).

Sampling: z = ρ·u with ρ ~ Gamma(shape=d, scale=1/η) and u uniform on the unit sphere S^{d−1}, **one ρ per
token** (drawing one radius per batch, a known bug elsewhere, correlates the tokens' noise). E[ρ] = d/η.

Guarantee per token and release: P[M(x)=y] ≤ exp(η‖h(x)−h(x')‖₂)·P[M(x')=y]; R releases compose to R·η.
"""

from __future__ import annotations

import numpy as np
import torch

from ..accounting.validation import check_eta
from .base import Mechanism, real_tokens
from .guarantees import Guarantee, dchi_guarantee
from .params import DChiParams


def sample_dchi(
    shape: tuple[int, ...], d: int, eta: float, np_rng: np.random.Generator, torch_rng: torch.Generator
) -> torch.Tensor:
    """``shape`` independent draws of z ∈ R^d with density ∝ exp(−η‖z‖₂): a tensor of shape (*shape, d)."""
    radius = torch.from_numpy(np_rng.gamma(shape=d, scale=1.0 / eta, size=shape)).float()
    direction = torch.randn(*shape, d, generator=torch_rng)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return radius.unsqueeze(-1) * direction


class DChi(Mechanism):
    name = "dchi"
    Params = DChiParams

    @classmethod
    def from_params(cls, params, split, tokenizer, model_id, seed=0):
        return cls(params.eta, seed)

    def __init__(self, eta: float, seed: int = 0):
        check_eta(eta)
        super().__init__(seed)
        self.eta = eta

    def perturb(self, h, attention_mask, input_ids):
        z = sample_dchi(tuple(h.shape[:-1]), h.shape[-1], self.eta, self.np_rng, self.torch_rng).to(h.dtype)
        return torch.where(real_tokens(attention_mask), h + z, h)

    def noise_nll(self, released, clean):
        """η‖h̃ − h‖₂: the density ∝ exp(−η‖z‖₂)."""
        return self.eta * (released - clean).norm(dim=-1)

    def guarantee(self, releases: int = 1, max_length: int = 64) -> Guarantee:
        return dchi_guarantee(DChiParams(self.eta), releases, max_length)

    def params(self):
        return {"eta": self.eta}
