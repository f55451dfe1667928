"""EIA-optimisation (BiSR-forward style): relax the tokens to logits z and fit the known bottom to h̃.

    min_z Σ_i∈real ‖bottom(softmax(z/T)·E)_i − h̃_i‖²     (Adam, ``opt_steps`` steps, lr ``opt_lr``)
    t̂_i = argmax_c z_{i,c}

Tractability on a CPU [ours]: z ∈ R^{N×L×C} ranges over C = ``opt_candidates`` tokens per position, the
C nearest anchors of h̃_i by cosine (EIA-KNN's shortlist) instead of all V tokens; with C = V it is the
full relaxation. z starts at 0 (uniform over the shortlist), so the optimisation, not the shortlist
order, decides. Gradients flow through the frozen bottom (``BottomModel.from_embeds``) into z only.
"""

from __future__ import annotations

import torch

from .base import AttackContext, InversionAttack
from .knn_inversion import nearest_tokens
from .params import OptimisationParams


class OptimisationInversion(InversionAttack):
    name = "eia_opt"
    Params = OptimisationParams

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.embeddings = ctx.bottom.embedding_matrix.detach()

    def predict(self, hidden, attention_mask):
        cfg, real = self.params, attention_mask.bool()
        hidden = hidden.float()
        n_cand = min(cfg.opt_candidates, self.embeddings.shape[0])
        candidates = torch.zeros((*hidden.shape[:2], n_cand), dtype=torch.long)
        candidates[real] = nearest_tokens(hidden[real], self.ctx.anchors, n_cand, "cosine")
        cand_embeds = self.embeddings[candidates]  # [N, L, C, d_E]
        z = torch.zeros(candidates.shape, requires_grad=True)
        opt = torch.optim.Adam([z], lr=cfg.opt_lr)
        weight = real.unsqueeze(-1).float()
        with torch.enable_grad():
            for _ in range(cfg.opt_steps):
                embeds = torch.einsum("nlc,nlcd->nld", torch.softmax(z / cfg.opt_temperature, -1), cand_embeds)
                out = self.ctx.bottom.from_embeds(embeds, attention_mask)
                loss = ((out - hidden).pow(2) * weight).sum() / weight.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        order = z.detach().topk(min(self.ctx.cfg.top_k, n_cand), dim=-1).indices
        guesses = torch.gather(candidates, -1, order)
        return guesses.masked_fill(~real.unsqueeze(-1), -1)
