"""EIA-KNN: t̂_i = argmin_v ‖h̃_i − a_v‖₂ (or argmax_v cos(h̃_i, a_v)) over the whole vocabulary. No training.

The distances of a batch of positions to all V anchors are one matrix product:
‖h − a‖² = ‖h‖² − 2·h·aᵀ + ‖a‖², so the cost is one [T, d] × [d, V] GEMM per call (T = real positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext, InversionAttack


def nearest_tokens(
    rows: torch.Tensor, anchors: torch.Tensor, k: int, metric: str = "l2", anchor_sq_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Top-k anchor indices [T, k] for rows [T, d], nearest first, by ``l2`` distance or ``cosine`` similarity."""
    if metric == "cosine":
        scores = F.normalize(rows, dim=-1) @ F.normalize(anchors, dim=-1).T
    else:  # −‖h − a‖² up to the per-row constant ‖h‖²
        sq = anchors.pow(2).sum(-1) if anchor_sq_norms is None else anchor_sq_norms
        scores = torch.addmm(sq, rows, anchors.T, beta=-1.0, alpha=2.0)
    return scores.topk(k, dim=-1).indices


class KNNInversion(InversionAttack):
    def __init__(self, ctx: AttackContext, metric: str = "l2"):
        super().__init__(ctx)
        self.metric = metric
        self.name = f"eia_knn_{metric}"
        self.sq_norms = ctx.anchors.pow(2).sum(-1)

    def predict(self, hidden, attention_mask):
        real = attention_mask.bool()
        guesses = torch.full((*hidden.shape[:2], self.ctx.cfg.top_k), -1, dtype=torch.long)
        guesses[real] = nearest_tokens(
            hidden[real].float(), self.ctx.anchors, self.ctx.cfg.top_k, self.metric, self.sq_norms
        )
        return guesses
