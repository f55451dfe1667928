"""EIA-self-training (after DeepInvert, 2026): the large inverter fitted again on the victims' own uploads,
pseudo-labelled by its confident guesses. Transductive: it reads the uploads h̃ and the mask, never the victims' text.

    round r = 1..R:  ŷ_i = argmax_v p_r(v | h̃_i),  kept where max_v p_r(v | h̃_i) ≥ c
                     fit p_{r+1} on {(h̃_i, ŷ_i) kept} beside the public text (one public minibatch per victims'
                     minibatch, fresh noise), ``selftrain_epochs`` epochs
    t̂_i = top-k of p_{R+1}(· | h̃_i)

R = ``selftrain_rounds``, c = ``selftrain_confidence``; AdamW at ``lr``/10. Every attack round starts again from the inverter fitted on
the public text (``eia_transformer_large``, shared), so a round's victims never carry over to the next.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .base import AttackContext, AuxData, InversionAttack
from .learned_inversion import LearnedInversion, fitted_inverter
from .observations import Observations
from .params import SelfTrainParams


class SelfTrainingInversion(InversionAttack):
    name = "eia_selftrain"
    Params = SelfTrainParams

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.base: LearnedInversion | None = None
        self.aux: AuxData | None = None
        self.adapted: LearnedInversion | None = None
        self.pseudo_labelled: list[float] = []

    def fit(self, aux: AuxData) -> None:
        self.base, self.aux = fitted_inverter(self.ctx, aux), aux

    def adapt(self, hidden: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> LearnedInversion:
        """A copy of the public-text inverter fitted again on these uploads' confident guesses (h̃ and mask only)."""
        assert self.base is not None and self.aux is not None, "fit before adapt"
        p = self.params
        adapted = copy.copy(self.base)
        adapted.model = copy.deepcopy(self.base.model)
        uploads = Observations(
            hidden.float(), attention_mask, torch.zeros_like(attention_mask), torch.zeros(len(hidden), dtype=torch.long)
        )
        # a tenth of the fitting lr, no decay: Adam's first steps move every weight by ~lr whatever its gradient, which
        # at the full lr undoes a fitted inverter in one step (seen: 100 % -> 1 % top-1 at m = 0)
        opt = torch.optim.AdamW(adapted.model.parameters(), lr=p.lr / 10, weight_decay=0.0)
        self.pseudo_labelled = []
        for r in range(p.selftrain_rounds):
            best = [adapted.log_probs(b.hidden, b.attention_mask).max(-1) for b in _in_order(uploads, batch_size)]
            confidence = torch.cat([b.values for b in best])  # over the real positions, row-major in upload order
            guess = torch.cat([b.indices for b in best])  # (one minibatch's [T, V] log-probabilities at a time)
            keep = confidence.exp() >= p.selftrain_confidence
            self.pseudo_labelled.append(float(keep.float().mean()))
            targets = torch.full(attention_mask.shape, -100, dtype=torch.long)
            targets[attention_mask.bool()] = torch.where(keep, guess, torch.full_like(guess, -100))
            if not keep.any():
                break
            adapted.model.train()
            for epoch in range(p.selftrain_epochs):
                seed = self.ctx.seed + 7919 * (r + 1) + epoch
                public = self.aux.batches(p.batch_size, seed)  # a fresh public pass (new noise) per victims' pass
                for idx in _shuffled(len(uploads), batch_size, seed):
                    batch, real = uploads.subset(idx), attention_mask[idx].bool()
                    width = batch.attention_mask.shape[1]
                    loss = F.cross_entropy(
                        adapted.model(batch.hidden, batch.attention_mask, self.base.unit_anchors),
                        targets[idx, :width][real[:, :width]],
                        ignore_index=-100,
                    )
                    aux_batch = next(public, None)
                    if aux_batch is not None:
                        aux_real = aux_batch.attention_mask.bool()
                        logits = adapted.model(aux_batch.hidden, aux_batch.attention_mask, self.base.unit_anchors)
                        loss = loss + F.cross_entropy(logits, aux_batch.input_ids[aux_real])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            adapted.model.eval()
        return adapted

    def run(self, victims: Observations, batch_size: int = 64) -> dict[str, float]:
        self.adapted = self.adapt(victims.hidden, victims.attention_mask)
        return super().run(victims, batch_size)

    def predict(self, hidden, attention_mask):
        assert self.adapted is not None, "run adapts before it predicts"
        return self.adapted.predict(hidden, attention_mask)

    def describe(self) -> dict:
        return {"starts_from": "eia_transformer_large", "pseudo_labelled_share_per_round": self.pseudo_labelled}


def _in_order(obs: Observations, batch_size: int):
    for start in range(0, len(obs), batch_size):
        yield obs.subset(np.arange(start, min(start + batch_size, len(obs))))


def _shuffled(n: int, batch_size: int, seed: int):
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
