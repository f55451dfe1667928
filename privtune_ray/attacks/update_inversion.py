"""EIA-update (the first stage of TAG / LAMP for text, after FILM's bag of words): the tokens of a device's local batch
from the adapter update it uploads (GuardedTuning's ``adapter_up``: ∇A_b, ∇A_t of one local batch).

The first block of A_b reads the bottom's output h_i at every real position i of the batch; in a post-LN block (BERT,
RoBERTa) its query, key and value maps take h_i itself, so their weight gradients lie in the span of the h_i:

    ∇W = Σ_i δ_i h_iᵀ   ⇒   rowspace([∇W_q; ∇W_k; ∇W_v]) ⊆ span{h_i : i real}

A token v whose representation lies in that span was likely in the batch. Its representation a_v is, after ``fit``,
the mean of the bottom's outputs h_i over the attacker's public text wherever v occurs (a contextual anchor: at m ≥ 1
h_i moves with its context), and the isolated-token anchor (``models/anchors.py``) for tokens it never saw. With P
the projection on the r right singular vectors of the stacked gradient whose singular values exceed ``tol``·σ_max
(r: the numerical rank, ≤ the batch's real positions),

    ρ_v = ‖a_v − P·a_v‖₂ / ‖a_v‖₂,     guessed bag = the r non-special tokens of smallest ρ_v

Scores: ``token_recall``, the share of the batch's real non-special positions whose token is in the bag (what an
inversion's top-1 ASR measures, without the order: the summary's ``max_token_recovery`` sets the two side by side,
though a bag is the easier score); ``bag_precision``; ``chance_recall`` = r / V, what a random bag
of that size recalls. Blind where the batch holds ≥ d real positions (the span is then all of R^d: r = d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import TokenizedSplit
from ..mechanisms.base import Mechanism
from ..models.anchors import load_or_build_anchors
from ..models.split import BottomModel
from .observations import ObservationStream
from .public_text import disjoint_aux
from .scoring import scored_positions

FIRST_MAPS = ("query.weight", "key.weight", "value.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight")


@dataclass
class AdapterUpdate:
    """One device's uploaded update, by parameter name (``ClientAdapters.named_parameters``), with the ground truth of
    the local batch it was computed on (the simulator's, for scoring only)."""

    gradients: dict[str, torch.Tensor]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]


def first_map_gradients(gradients: dict[str, torch.Tensor], prefix: str = "bottom.blocks.0.") -> torch.Tensor:
    """The stacked weight gradients [k·d_out, d] of the first A_b block's query, key and value maps."""
    rows = [g for name, g in gradients.items() if name.startswith(prefix) and name.endswith(FIRST_MAPS)]
    if not rows:
        raise ValueError(
            f"no query/key/value weight gradient under {prefix!r} in the update ({len(gradients)} tensors): this "
            f"attack reads a post-LN block's input maps (BERT, RoBERTa)"
        )
    return torch.cat([g.float() for g in rows])


class UpdateInversion:
    """``run(updates)`` -> the mean scores over the devices' updates; ``anchors`` [V, d] at the adapter's input depth."""

    name = "eia_update"
    kind = "inversion"
    reads = "adapter_update"
    attacker = "adaptive"

    def __init__(self, anchors: torch.Tensor, special_ids, tol: float = 1e-4):
        self.unit = anchors / anchors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.special = torch.as_tensor(sorted(special_ids), dtype=torch.long)
        self.tol = tol
        self.contextual = 0  # tokens whose anchor is a mean over the public text

    def fit(self, aux, batch_size: int = 128) -> None:
        """Contextual anchors: a_v = mean of h_i over the positions of token v in ``aux`` (observations of the public
        text through the attacker's bottom, a stream or held; the update's input is the clean h, no mechanism)."""
        sums, counts = torch.zeros_like(self.unit), torch.zeros(len(self.unit))
        for batch in aux.batches(batch_size, seed=0):
            real = batch.attention_mask.bool()
            ids = batch.input_ids[real]
            sums.index_add_(0, ids, batch.hidden[real].float())
            counts.index_add_(0, ids, torch.ones(len(ids)))
        seen = counts > 0
        means = sums[seen] / counts[seen].unsqueeze(-1)
        self.unit[seen] = means / means.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.contextual = int(seen.sum())

    def bag(self, gradients: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guessed token ids of the batch (the r tokens of smallest residual ρ_v)."""
        _, s, vh = torch.linalg.svd(first_map_gradients(gradients), full_matrices=False)
        rank = int((s > self.tol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
        if rank == 0:
            return torch.zeros(0, dtype=torch.long)
        basis = vh[:rank]  # [r, d]
        residual = (self.unit - (self.unit @ basis.T) @ basis).norm(dim=-1)
        residual[self.special] = float("inf")
        return residual.topk(min(rank, len(residual) - len(self.special)), largest=False).indices

    def score(self, update: AdapterUpdate, bag: torch.Tensor) -> dict[str, float]:
        scored = scored_positions(update.input_ids, update.attention_mask, self.special.tolist())
        truth = update.input_ids[scored]
        hit = torch.isin(truth, bag)
        distinct = torch.unique(truth)
        return {
            "token_recall": float(hit.float().mean()) if len(truth) else float("nan"),
            "bag_precision": float(torch.isin(bag, distinct).float().mean()) if len(bag) else float("nan"),
            "chance_recall": len(bag) / self.unit.shape[0],
            "bag_size": float(len(bag)),
            "tokens": float(len(truth)),
        }

    def run(self, updates: list[AdapterUpdate]) -> dict[str, float]:
        rows = [self.score(u, self.bag(u.gradients)) for u in updates]
        out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "tokens"}
        return {**out, "tokens": float(sum(r["tokens"] for r in rows)), "updates": float(len(rows))}


def build_update_inversion(
    bottom: BottomModel,
    tokenizer,
    model_id: str,
    aux: TokenizedSplit,
    victims_texts: Sequence[str] = (),
    log=print,
) -> UpdateInversion:
    """The update attack on adapters that read ``bottom``'s output: its token anchors, made contextual on the
    attacker's public text ``aux`` through that (pretrained, frozen) bottom, less every sentence equal to or inside
    one of ``victims_texts`` (as the upload attacks' public text)."""
    aux, dropped = disjoint_aux(aux, list(victims_texts))
    attack = UpdateInversion(load_or_build_anchors(bottom, tokenizer, model_id), tokenizer.all_special_ids)
    attack.fit(ObservationStream(bottom, Mechanism(), aux, tokenizer.pad_token_id))
    log(
        f"privtune-ray: attack {attack.name} reads each device's adapter update; contextual anchors for "
        f"{attack.contextual} tokens from {len(aux)} auxiliary sentences ({dropped} dropped as the victims')"
    )
    return attack
