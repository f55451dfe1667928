"""Split a task model at depth m: a frozen bottom model for the device, a trainable top model for the cloud.

    bottom: x (token ids) ↦ h = f_m ∘ … ∘ f_1 ∘ E(x) ∈ R^{B×L×d}       (embeddings + blocks 1..m, frozen)
    top:    (h, mask)     ↦ head(g ∘ f_L ∘ … ∘ f_{m+1}(h)) ∈ R^{B×C}   (blocks m+1..L, final norm g, head)

so that ``top(bottom(x, mask), mask) == task_model(x, mask).logits`` (to float tolerance). The top
model sees the hidden states and the attention mask only, never token ids or text.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..errors import ModelError
from .families import FAMILIES, Family, HFModel

TASKS = ("classification", "causal-lm")


def family_of(task_model: nn.Module) -> Family:
    model_type = getattr(task_model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ModelError(
            f"unsupported architecture {model_type!r} ({type(task_model).__name__}): privtune-ray can split "
            f"{', '.join(sorted(FAMILIES))}; pick a model of one of these families"
        )
    return FAMILIES[model_type]


def depth_of(task_model: nn.Module) -> int:
    """L, the number of transformer blocks of the model."""
    family = family_of(task_model)
    return len(family.blocks(family.base(task_model)))


def run_blocks(blocks: nn.ModuleList, hidden: torch.Tensor, context: dict) -> torch.Tensor:
    for block in blocks:
        out = block(hidden, **context)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class BottomModel(nn.Module):
    """Device side: embeddings and the first m blocks. Frozen; always in eval mode; runs without autograd.

    The bottom holds its own copy of the pretrained weights (what a device downloads), so training the
    top, which may include blocks that a deeper device runs locally, never changes it.
    """

    def __init__(self, family: Family, task_model: nn.Module, m: int):
        super().__init__()
        base = family.base(task_model)
        self.m = m
        self.embedding = copy.deepcopy(family.embedding(base))
        self.context = copy.deepcopy(family.context(base))
        self.blocks = copy.deepcopy(nn.ModuleList(list(family.blocks(base))[:m]))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> BottomModel:
        return super().train(False)  # frozen pretrained layers: no dropout on the device

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table E ∈ R^{V×d} (anchors of inversion attacks and PrivTune at m=0)."""
        return next(m.weight for m in self.embedding.modules() if isinstance(m, nn.Embedding))

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.from_embeds(None, attention_mask, input_ids)

    def from_embeds(
        self, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h from word embeddings [B, L, d_E] in place of E[x] (differentiable in them, weights frozen).

        What an attacker who knows the bottom weights runs to invert it (SPEC §3, EIA-optimisation).
        """
        hidden = self.embedding(input_ids, attention_mask, inputs_embeds)
        return run_blocks(self.blocks, hidden, self.context(hidden, attention_mask))


class TopModel(nn.Module):
    """Cloud side: blocks m+1..L, the final norm (decoders) and the task head; trained."""

    def __init__(self, family: Family, task_model: nn.Module, m: int, task: str):
        super().__init__()
        base = family.base(task_model)
        self.m = m
        self.context = family.context(base)
        self.blocks = nn.ModuleList(list(family.blocks(base))[m:])
        self.final = nn.Sequential(*family.final(base))
        self.front: nn.Module | None = None  # a cloud denoiser before the first block (``models/denoiser.py``)
        if task == "causal-lm":
            if family.lm_head is None:
                raise ModelError(
                    f"task 'causal-lm' needs a decoder model; {family.name} is an encoder: use task 'classification'"
                )
            self.head = family.lm_head(task_model)
        else:
            self.head = family.classifier(task_model)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Logits for h from a device split at ``depth`` m_i ≥ m (None: m): blocks m_i+1..L, one set of weights.

        SPEC §1 [ours]: devices of different depths share the top; a shallow device's h enters earlier.
        """
        start = 0 if depth is None else depth - self.m
        if not 0 <= start <= len(self.blocks):
            raise ModelError(
                f"h from depth {depth} cannot enter a top model that holds blocks {self.m + 1}..{self.m + len(self.blocks)}"
            )
        return self.head(self.features(hidden, attention_mask, start), attention_mask)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The top's last hidden states [B, L, d] (after the final norm), the head's input: the front block (a cloud
        denoiser, if any), then blocks ``start``.. of the top."""
        if self.front is not None:
            hidden = self.front(hidden, attention_mask)
        hidden = run_blocks(self.blocks[start:], hidden, self.context(hidden, attention_mask))
        return self.final(hidden)


@dataclass
class SplitModel:
    """The two halves of one pretrained task model, split at depth ``m`` of ``depth`` blocks."""

    bottom: BottomModel
    top: TopModel
    family: Family
    m: int
    depth: int
    task: str
    hidden_size: int
    name: str = ""


def check_split_depth(m: int, depth: int, name: str) -> None:
    """Refuse, in one line, a split depth m outside 0..L for a model of L = ``depth`` blocks."""
    if not isinstance(m, int) or not 0 <= m <= depth:
        raise ModelError(
            f"split depth m={m!r} is outside 0..{depth} for {name} ({depth} blocks): "
            f"set model.split_depth to a value in 0..{depth}"
        )


def split_model(task_model: nn.Module, m: int, task: str = "classification", name: str = "") -> SplitModel:
    """Split ``task_model`` (a HF ``*ForSequenceClassification`` or ``*ForCausalLM``) after block ``m``."""
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}: use one of {TASKS}")
    family = family_of(task_model)
    depth = depth_of(task_model)
    check_split_depth(m, depth, name or family.name)
    task_model.eval()
    bottom = BottomModel(family, task_model, m)
    top = TopModel(family, task_model, m, task)
    # d of the uploaded h (OPT's word_embed_proj_dim may differ)
    hidden_size: int = cast(HFModel, task_model).config.hidden_size
    return SplitModel(
        bottom=bottom, top=top, family=family, m=m, depth=depth, task=task, hidden_size=hidden_size, name=name
    )


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, d] → [B, d]: the mean over each sentence's real tokens (padding rows left out)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


class MeanPooledHead(nn.Module):
    """A classification head read from the sentence mean: ``head([h̄], [1])`` with h̄ = (1/|x|) Σ_i h_i over real
    tokens, in place of the family's own read-out (BERT's [CLS] pooler, RoBERTa's <s>, a decoder's last token).

    A cloud-side lever (``train.head_pooling: mean``): under d_χ noise one token's state carries its own noise, the
    mean over |x| tokens averages independent noise down (sentence-transformers models such as MiniLM are trained
    with this read-out). The family's head sees a one-token sequence, so every family's head works unchanged."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = mean_pool(hidden, attention_mask).unsqueeze(1)
        return self.head(pooled, attention_mask[:, :1].clamp_min(1))


HEAD_POOLINGS = {"token": None, "mean": MeanPooledHead}  # train.head_pooling → the wrapper of the family's head
