"""Where each supported architecture keeps its parts, so a model can be split by calling its own modules.

A :class:`Family` tells, for one Hugging Face ``model_type``:

* ``base``: the transformer body inside a task model (``BertForSequenceClassification.bert``, ...);
* ``embedding``: a thin module calling the body's own embedding layers, ``x -> h_0 ∈ R^{B×L×d}`` (or,
  given ``inputs_embeds`` in place of the word-embedding lookup E[x], the same stage from there on);
* ``context``: the keyword arguments every block needs, built from the attention mask alone
  (the 4-D mask from ``transformers.masking_utils``, position ids, rotary ``(cos, sin)``), so the
  cloud side can rebuild them without token ids;
* ``blocks``: the ``nn.ModuleList`` of transformer blocks; block i is called as ``block(h, **context)``;
* ``final``: modules applied after the last block (final layer norm, output projection);
* ``classifier``: the sequence-classification head, calling the task model's own head modules;
* ``lm_head``: the causal-LM head (decoder families only).

Nothing here re-implements a block, an attention or an embedding: each wrapper only wires the
model's own modules together in the order its ``forward()`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

# A Hugging Face task model or its body. Which submodules it has depends on the family, and ``nn.Module.__getattr__``
# is typed ``Tensor | Module``, so attribute access on it is left untyped.
HFModel = Any

# --------------------------------------------------------------------------- embeddings (device side)


class TokenTypeEmbedding(nn.Module):
    """BERT / RoBERTa / DistilBERT: the body's ``embeddings`` module (word + position (+ type), LayerNorm)."""

    def __init__(self, base: HFModel):
        super().__init__()
        self.embeddings = base.embeddings

    def forward(self, input_ids, attention_mask, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is not None:  # positions count from the start, as for right-padded ids
            return self.embeddings(input_ids=None, inputs_embeds=inputs_embeds)
        return self.embeddings(input_ids=input_ids)


class GPT2Embedding(nn.Module):
    """GPT-2: ``drop(wte(x) + wpe(0..L-1))``."""

    def __init__(self, base: HFModel):
        super().__init__()
        self.wte, self.wpe, self.drop = base.wte, base.wpe, base.drop

    def forward(self, input_ids, attention_mask, inputs_embeds=None) -> torch.Tensor:
        words = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        return self.drop(words + self.wpe(arange_positions(attention_mask)))


class OPTEmbedding(nn.Module):
    """OPT: ``project_in(embed_tokens(x)) + embed_positions(mask)`` (learned positions counted over the mask)."""

    def __init__(self, base: HFModel):
        super().__init__()
        self.embed_tokens, self.embed_positions = base.embed_tokens, base.embed_positions
        self.project_in = base.project_in

    def forward(self, input_ids, attention_mask, inputs_embeds=None) -> torch.Tensor:
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.project_in is not None:
            h = self.project_in(h)
        return h + self.embed_positions(attention_mask, 0, position_ids=opt_positions(attention_mask))


class TokenEmbedding(nn.Module):
    """Llama-style: ``embed_tokens(x)`` (positions enter every block through rotary embeddings)."""

    def __init__(self, base: HFModel):
        super().__init__()
        self.embed_tokens = base.embed_tokens

    def forward(self, input_ids, attention_mask, inputs_embeds=None) -> torch.Tensor:
        return self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds


def opt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """OPT's position ids: running count of real tokens, minus one (pads get -1)."""
    return (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()


def arange_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)


# --------------------------------------------------------------------------- block context (both sides)


class BidirectionalContext(nn.Module):
    """Encoders: ``{attention_mask}`` as the body builds it for its attention implementation."""

    def __init__(self, base: HFModel):
        super().__init__()
        self.config = base.config

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return {"attention_mask": mask}


# No KV cache: transformers >= 5.x names the argument ``cache`` (``past_key_values`` before, now deprecated).
_NO_CACHE = {("cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"): None}


class CausalContext(nn.Module):
    """Decoders: causal mask and position ids; rotary ``(cos, sin)`` when the body has ``rotary_emb``."""

    def __init__(self, base: HFModel, positions: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.config = base.config
        self.positions = positions
        self.rotary_emb = getattr(base, "rotary_emb", None)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        position_ids = self.positions(attention_mask)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **_NO_CACHE,
        )
        context = {"attention_mask": mask, "position_ids": position_ids}
        if self.rotary_emb is not None:
            context["position_embeddings"] = self.rotary_emb(hidden, position_ids=position_ids)
        return context


# --------------------------------------------------------------------------- heads (cloud side)


class PoolerClassifier(nn.Module):
    """BERT: ``classifier(dropout(pooler(h)))``, pooler = tanh(W·h_[CLS])."""

    def __init__(self, task_model: HFModel):
        super().__init__()
        self.pooler = task_model.base_model.pooler
        self.dropout, self.classifier = task_model.dropout, task_model.classifier

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


class SequenceClassifier(nn.Module):
    """RoBERTa: its ``classifier`` head reads h_<s> itself."""

    def __init__(self, task_model: HFModel):
        super().__init__()
        self.classifier = task_model.classifier

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(hidden)


class DistilBertClassifier(nn.Module):
    """DistilBERT: ``classifier(dropout(relu(pre_classifier(h_[CLS]))))``."""

    def __init__(self, task_model: HFModel):
        super().__init__()
        self.pre_classifier, self.dropout = task_model.pre_classifier, task_model.dropout
        self.classifier = task_model.classifier

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(hidden[:, 0]))))


class LastTokenClassifier(nn.Module):
    """Decoders: ``score(h)`` at the last real token, found from the attention mask (never from token ids)."""

    def __init__(self, task_model: HFModel):
        super().__init__()
        self.score = task_model.score

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
        logits = self.score(hidden)
        return logits[torch.arange(hidden.shape[0], device=hidden.device), last]


class LMHead(nn.Module):
    """Decoders, causal LM: next-token logits ``lm_head(h) ∈ R^{B×L×V}``."""

    def __init__(self, task_model: HFModel):
        super().__init__()
        self.lm_head = task_model.lm_head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Family:
    name: str
    decoder: bool
    base: Callable[[HFModel], nn.Module]
    embedding: Callable[[HFModel], nn.Module]
    context: Callable[[HFModel], nn.Module]
    blocks: Callable[[HFModel], nn.ModuleList]
    final: Callable[[HFModel], list[nn.Module]]
    classifier: Callable[[HFModel], nn.Module]
    lm_head: Callable[[HFModel], nn.Module] | None = None
    lora_targets: tuple[str, ...] = ()


def _present(*modules: nn.Module | None) -> list[nn.Module]:
    return [m for m in modules if m is not None]


def _encoder(name: str, classifier: Callable, targets: tuple[str, ...]) -> Family:
    return Family(
        name=name,
        decoder=False,
        base=lambda task_model: task_model.base_model,
        embedding=TokenTypeEmbedding,
        context=BidirectionalContext,
        blocks=(lambda base: base.transformer.layer) if name == "distilbert" else (lambda base: base.encoder.layer),
        final=lambda base: [],
        classifier=classifier,
        lora_targets=targets,
    )


def _decoder(name: str, base, embedding, positions, blocks, final, targets: tuple[str, ...]) -> Family:
    return Family(
        name=name,
        decoder=True,
        base=base,
        embedding=embedding,
        context=lambda body: CausalContext(body, positions),
        blocks=blocks,
        final=final,
        classifier=LastTokenClassifier,
        lm_head=LMHead,
        lora_targets=targets,
    )


FAMILIES: dict[str, Family] = {
    "bert": _encoder("bert", PoolerClassifier, ("query", "key", "value", "dense")),
    "roberta": _encoder("roberta", SequenceClassifier, ("query", "key", "value", "dense")),
    "distilbert": _encoder("distilbert", DistilBertClassifier, ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")),
    "gpt2": _decoder(
        "gpt2",
        base=lambda task_model: task_model.transformer,
        embedding=GPT2Embedding,
        positions=arange_positions,
        blocks=lambda body: body.h,
        final=lambda body: [body.ln_f],
        targets=("c_attn", "c_proj", "c_fc"),
    ),
    "opt": _decoder(
        "opt",
        base=lambda task_model: task_model.model.decoder,
        embedding=OPTEmbedding,
        positions=opt_positions,
        blocks=lambda body: body.layers,
        final=lambda body: _present(body.final_layer_norm, body.project_out),
        targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    ),
    "llama": _decoder(
        "llama",
        base=lambda task_model: task_model.model,
        embedding=TokenEmbedding,
        positions=arange_positions,
        blocks=lambda body: body.layers,
        final=lambda body: [body.norm],
        targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
}
