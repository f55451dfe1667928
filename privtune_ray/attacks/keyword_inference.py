"""AIA-keyword: a multi-label classifier "which sensitive words occur in this sentence" on the pooled h̃.

Keywords [ours]: ``attack.keyword_list`` when given; else the ``attack.keywords`` whole-word tokens
(alphabetic, ≥ 4 letters) with the highest document frequency in the auxiliary data, after skipping its
50 most frequent tokens (function words) and any in more than 10 % of its sentences; they stand in for a
list of sensitive words. Targets y ∈ {0,1}^K (does token k occur),
sigmoid outputs trained with class-balanced binary cross-entropy (positives weighted by #absent/#present
per keyword), predicted present at p > 0.5.

Keywords are rare, so plain accuracy rewards "always absent". The score [ours] is the balanced accuracy
(mean over keywords of (TPR + TNR)/2), whose majority-class value is exactly 0.5; advantage = balanced
accuracy − 0.5. Plain accuracy beside the per-keyword majority guess, and micro-F1 of "present", are
reported too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..models.split import mean_pool
from .attribute_probe import PooledMLP, fit_probe
from .base import AttackContext, AttributeAttack, AuxData
from .observations import Observations
from .params import KeywordParams


def choose_keywords(
    tokens: list[list[int]], tokenizer, k: int, words: list[str] | None = None, skip_top: int = 50, max_df: float = 0.10
) -> list[int]:
    """The ``k`` keywords among the sentences' ``tokens`` (or ``words``, checked to be single tokens)."""
    if words:
        ids = tokenizer.convert_tokens_to_ids(words)
        unknown = [w for w, i in zip(words, ids) if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise DataError(
                f"attack.keyword_list: {unknown} are not single tokens of this tokenizer; list whole-word tokens"
            )
        return list(ids)
    ids, counts = np.unique(np.fromiter((t for row in tokens for t in set(row)), dtype=np.int64), return_counts=True)
    by_df = sorted(zip((counts / len(tokens)).tolist(), ids.tolist()), reverse=True)[skip_top:]
    pieces = tokenizer.convert_ids_to_tokens([i for _, i in by_df])
    eligible = [i for (f, i), w in zip(by_df, pieces) if w.isalpha() and len(w) >= 4 and f <= max_df]
    if not eligible:
        raise DataError("aia_keyword found no candidate keywords in the auxiliary data: raise attack.aux_samples")
    return eligible[:k]


class KeywordInference(AttributeAttack):
    name = "aia_keyword"
    Params = KeywordParams

    def __init__(self, ctx: AttackContext):
        super().__init__(ctx)
        self.keywords: list[int] = []

    def presence(self, tokens: list[list[int]]) -> torch.Tensor:
        """[N, K] 0/1: keyword k occurs among the real tokens of sentence n."""
        column = {t: k for k, t in enumerate(self.keywords)}
        out = torch.zeros((len(tokens), len(self.keywords)))
        for n, row in enumerate(tokens):
            for t in set(row).intersection(column):
                out[n, column[t]] = 1.0
        return out

    def fit(self, aux: AuxData) -> None:
        sentences = aux.pooled()
        self.keywords = choose_keywords(
            sentences.tokens, self.ctx.tokenizer, self.params.keywords, self.params.keyword_list
        )
        x, y = sentences.features, self.presence(sentences.tokens)
        self.majority = (y.mean(0) > 0.5).float()
        self.model = PooledMLP(x.shape[1], len(self.keywords))
        self.model.standardise_on(x)
        pos_weight = (len(y) - y.sum(0)) / y.sum(0).clamp_min(1)

        def loss_of(idx):
            return F.binary_cross_entropy_with_logits(self.model(x[idx]), y[idx], pos_weight=pos_weight)

        fit_probe(self.model, len(x), loss_of, self.params, self.ctx.seed)

    @torch.no_grad()
    def predict(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.model(mean_pool(hidden.float(), attention_mask)) > 0).float()

    def run(self, victims: Observations) -> dict:
        truth, guess = self.presence(victims.token_lists()), self.predict(victims.hidden, victims.attention_mask)
        present = truth.sum(0) > 0  # keywords that occur among the victims (TPR is undefined for the others)
        tpr = (guess * truth).sum(0) / truth.sum(0).clamp_min(1)
        tnr = ((1 - guess) * (1 - truth)).sum(0) / (1 - truth).sum(0).clamp_min(1)
        balanced = float(((tpr + tnr) / 2)[present].mean()) if present.any() else float("nan")
        f1 = 2 * float((guess * truth).sum()) / max(float(guess.sum() + truth.sum()), 1e-9)
        return {
            "accuracy": balanced,
            "majority_accuracy": 0.5,
            "advantage": balanced - 0.5,
            "plain_accuracy": float((guess == truth).float().mean()),
            "plain_majority_accuracy": float((self.majority.expand_as(truth) == truth).float().mean()),
            "micro_f1": f1,
            "keywords_present": int(present.sum()),
            "samples": len(victims),
        }

    def describe(self) -> dict:
        return {"keywords": self.ctx.tokenizer.convert_ids_to_tokens(self.keywords)}
