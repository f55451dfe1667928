"""EIA-BiSR (learned + optimisation, after BiSR, CCS 2024): the large inverter's guess, refined so that the
attacker's copy of bottom + mechanism explains the upload under the mechanism's noise law.

    log π_i(v) = log p_inv(v | h̃)                       (eia_transformer_large; C = ``opt_candidates`` best v kept)
    z_i ∈ R^C, started at log π_i over the candidates     (the optimisation starts from the inverter's answer)
    min_z  mean_i [ NLL(h̃_i | bottom(softmax(z/T)·E)_i) − λ·Σ_c softmax(z_i/T)_c · log π_i(c) ]
    t̂_i = argmax_c z_{i,c}

NLL is the attacker's copy of the mechanism's noise law (``Mechanism.noise_nll``: η‖·‖₂ for d_χ and PrivTune's
approximation, ‖·‖²/2σ²C² for Gaussian, ½‖·‖² for none), λ = ``bisr_prior``; Adam, ``opt_steps`` steps at ``opt_lr``.
Gradients flow through the frozen bottom (``BottomModel.from_embeds``) into z only. Memory: one victims' minibatch
of [N, L, C, d] candidate embeddings (64 × 64 × 32 × 384 floats ≈ 200 MB at the defaults).
"""

from __future__ import annotations

import torch

from ..mechanisms.base import Mechanism
from .base import AttackContext, AuxData, InversionAttack
from .learned_inversion import LearnedInversion, fitted_inverter
from .params import BiSRParams


class BiSRInversion(InversionAttack):
    name = "eia_bisr"
    Params = BiSRParams

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.embeddings = ctx.bottom.embedding_matrix.detach()
        self.inverter: LearnedInversion | None = None
        self.noise: Mechanism = Mechanism()

    def fit(self, aux: AuxData) -> None:
        """The large inverter (shared with ``eia_transformer_large``) and the attacker's copy of the mechanism (the
        stream's; held observations carry none: the identity's law)."""
        self.inverter = fitted_inverter(self.ctx, aux)
        self.noise = getattr(aux, "mechanism", None) or Mechanism()

    def predict(self, hidden, attention_mask):
        assert self.inverter is not None, "fit before predict"
        p, real = self.params, attention_mask.bool()
        hidden = hidden.float()
        prior, candidates = self.inverter.log_probs(hidden, attention_mask).topk(p.opt_candidates, dim=-1)
        cand = torch.zeros((*hidden.shape[:2], candidates.shape[-1]), dtype=torch.long)
        log_prior = torch.zeros(cand.shape)
        cand[real], log_prior[real] = candidates, prior
        cand_embeds = self.embeddings[cand]  # [N, L, C, d_E]
        z = log_prior.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=p.opt_lr)
        with torch.enable_grad():
            for _ in range(p.opt_steps):
                weights = torch.softmax(z / p.opt_temperature, -1)
                out = self.ctx.bottom.from_embeds(torch.einsum("nlc,nlcd->nld", weights, cand_embeds), attention_mask)
                nll = self.noise.noise_nll(hidden, out)[real].mean()
                prior_term = -(weights * log_prior).sum(-1)[real].mean()
                loss = nll + p.bisr_prior * prior_term
                opt.zero_grad()
                loss.backward()
                opt.step()
        order = z.detach().topk(min(self.ctx.cfg.top_k, cand.shape[-1]), dim=-1).indices
        return torch.gather(cand, -1, order).masked_fill(~real.unsqueeze(-1), -1)

    def describe(self) -> dict:
        return {"starts_from": "eia_transformer_large", "noise_law": self.noise.name}
