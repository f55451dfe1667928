"""Scores (SPEC §3).

Inversion: token-level ASR = correct / scored positions, where the scored positions are the real
(mask = 1), non-special tokens; top-k ASR counts a position as recovered when the true token is among the
attack's k guesses; ROUGE-L (F-measure, Google's ``rouge-score``) between the decoded scored tokens of
each sentence and the original, averaged over sentences.
Attribute inference: accuracy on the victims, the majority-class accuracy (the class most frequent in
the attacker's auxiliary data, predicted for everyone) and the advantage = accuracy − majority accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from rouge_score import rouge_scorer


def scored_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids) -> torch.Tensor:
    """Boolean [N, L]: real tokens that are not special tokens."""
    return attention_mask.bool() & ~torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype))


def score_inversion(
    guesses: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids, tokenizer
) -> dict[str, float]:
    """``guesses`` [N, L, k] token ids, best first, against the true ``input_ids`` [N, L]."""
    scored = scored_positions(input_ids, attention_mask, special_ids)
    hits = guesses == input_ids.unsqueeze(-1)
    n = int(scored.sum())
    if n == 0:
        return {
            "asr_top1": float("nan"),
            f"asr_top{guesses.shape[-1]}": float("nan"),
            "rouge_l": float("nan"),
            "tokens": 0,
        }
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [
        scorer.score(tokenizer.decode(truth[keep].tolist()), tokenizer.decode(guess[keep, 0].tolist()))[
            "rougeL"
        ].fmeasure
        for truth, guess, keep in zip(input_ids, guesses, scored)
        if keep.any()
    ]
    return {
        "asr_top1": float(hits[..., 0][scored].float().mean()),
        f"asr_top{guesses.shape[-1]}": float(hits.any(-1)[scored].float().mean()),
        "rouge_l": float(np.mean(rouge)),
        "tokens": n,
    }


def score_classes(predicted: np.ndarray, truth: np.ndarray, majority) -> dict[str, float]:
    """Accuracy of ``predicted`` against ``truth`` (any comparable labels), beside the majority guess."""
    accuracy = float(np.mean(predicted == truth))
    majority_accuracy = float(np.mean(truth == majority))
    return {
        "accuracy": accuracy,
        "majority_accuracy": majority_accuracy,
        "advantage": accuracy - majority_accuracy,
        "samples": int(len(truth)),
    }
