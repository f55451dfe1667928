"""Question answering with a split decoder: greedy decoding through the split, scored as SQuAD v1.1 is.

Decoding has no shortcut past the device: each new token re-runs bottom → mechanism → upload → top on the
whole prefix (no KV cache crosses the cut), so a prompt of n tokens answered in k tokens is released k times
with fresh noise, and the bytes of every release are counted. With the LM head on the device (U-shaped,
``training/lm_head.py``) the cloud returns z and the device picks the token; ``download`` counts those bytes.
"""

from __future__ import annotations

import collections
import re
import string
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from ..data.batching import Batch, TokenizedSplit, batch_indices, collate
from ..progress import progress_bar
from .client import SplitClient
from .server import TopServer, summed_loss

if TYPE_CHECKING:
    from .lm_head import HiddenStateServer


def next_token_logits(client: SplitClient, server: TopServer, msg, download) -> torch.Tensor:
    """Logits [B, L, V] for a received message: the cloud's (LM head in the cloud), or the device head's on the z
    the cloud returns (U-shaped; ``download(payload)`` counts and returns it)."""
    if client.head is None:
        return server.predict(msg)
    u_server = cast("HiddenStateServer", server)  # a device head means the cloud returns z
    return client.head.logits(download(u_server.predict_payload(msg)), msg.attention_mask)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_scores(prediction: str, answers: list[str]) -> tuple[float, float]:
    """(exact match, token F1) of one prediction against its best-matching reference answer, each in [0, 1]."""
    pred = normalize_answer(prediction)
    exact = max(float(pred == normalize_answer(a)) for a in answers)
    f1 = 0.0
    for answer in answers:
        p, g = pred.split(), normalize_answer(answer).split()
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common:
            precision, recall = common / len(p), common / len(g)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return exact, f1


@torch.no_grad()
def greedy_answers(
    client: SplitClient,
    server: TopServer,
    split: TokenizedSplit,
    indices,
    pad_id: int,
    end_id: int,
    max_new_tokens: int,
    upload,
    download,
) -> list[list[int]]:
    """Continue each prompt at ``indices`` with the top's most likely token until the end token (or the limit).
    A finished answer leaves the batch: only unfinished prefixes are released again."""
    assert split.prompt_lengths is not None  # a generation split keeps its prompt lengths
    seqs = [list(split.input_ids[i][: split.prompt_lengths[i]]) for i in indices]
    starts = [len(s) for s in seqs]
    active = list(range(len(seqs)))
    for _ in range(max_new_tokens):
        width = max(len(seqs[b]) for b in active)
        ids = torch.full((len(active), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, b in enumerate(active):
            ids[row, : len(seqs[b])], mask[row, : len(seqs[b])] = torch.tensor(seqs[b]), 1
        msg = upload(client.encode(Batch(ids, mask, torch.full((len(active),), -1), np.asarray(indices)[active])))
        logits = next_token_logits(client, server, msg, download)
        last = torch.tensor([len(seqs[b]) - 1 for b in active])
        tokens = logits[torch.arange(len(active)), last].argmax(-1).tolist()
        for b, token in zip(active, tokens, strict=True):
            if token != end_id:
                seqs[b].append(token)
        active = [b for b, token in zip(active, tokens, strict=True) if token != end_id]
        if not active:
            break
    return [s[start:] for s, start in zip(seqs, starts, strict=True)]


def evaluate_generation(
    client: SplitClient,
    server: TopServer,
    split: TokenizedSplit,
    tokenizer,
    batch_size: int,
    pad_id: int,
    end_id: int,
    max_new_tokens: int,
    upload,
    download,
    progress: bool = True,
) -> dict:
    """Exact match and token F1 of greedy answers (fractions), and the teacher-forced loss on the reference
    answer (nats per sample, computed where the head runs), all through the upload path."""
    exact, f1, loss_sum = [], [], 0.0
    for idx in progress_bar(
        batch_indices(split.lengths, batch_size, shuffle=False, bucketing=True),
        desc="eval",
        enabled=progress,
        leave=False,
    ):
        batch = collate(split, idx, pad_id)
        msg = upload(client.encode(batch))
        loss_sum += float(summed_loss(next_token_logits(client, server, msg, download), batch.labels))
        answers = greedy_answers(client, server, split, idx, pad_id, end_id, max_new_tokens, upload, download)
        for i, tokens in zip(idx, answers, strict=True):
            em, f = squad_scores(tokenizer.decode(tokens, skip_special_tokens=True), split.answers[i])
            exact.append(em)
            f1.append(f)
    n = len(split)
    return {"exact_match": float(np.mean(exact)), "f1": float(np.mean(f1)), "loss": loss_sum / n, "samples": n}
