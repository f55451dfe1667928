"""Distance correlation (Székely, Rizzo & Bakirov 2007), GuardedTuning's decorrelation regulariser.

For n samples X ∈ R^{n×p}, A ∈ R^{n×q}: pairwise distance matrices a_jk = ‖X_j − X_k‖, b_jk = ‖A_j − A_k‖, each
double-centred (a_jk − ā_j· − ā_·k + ā_··); dCov²(X, A) = mean(ã ∘ b̃), and
dCor(X, A) = dCov(X, A) / sqrt(dCov(X, X) · dCov(A, A)) ∈ [0, 1]: 0 iff independent (as n → ∞), 1 for a
similarity transform. Differentiable in both arguments, so L = L_task + α·dCor(X_emb, A) trains A away from X.
"""

from __future__ import annotations

import torch


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    # sqrt of a clamped squared distance: cdist's gradient is undefined (NaN) on the zero diagonal.
    sq = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    d = torch.sqrt(sq.clamp_min(1e-12)) * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """dCor of the rows of ``x`` [n, ...] and ``a`` [n, ...] (each sample flattened); a scalar in [0, 1]."""
    if x.shape[0] != a.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"distance correlation needs the same n >= 2 samples on both sides, got {x.shape[0]} and {a.shape[0]}"
        )
    xa, aa = _centred_distances(x.reshape(len(x), -1).float()), _centred_distances(a.reshape(len(a), -1).float())
    dcov_xa, dcov_xx, dcov_aa = (xa * aa).mean(), (xa * xa).mean(), (aa * aa).mean()
    return torch.sqrt(dcov_xa.clamp_min(0) / torch.sqrt(dcov_xx * dcov_aa).clamp_min(1e-12))
