"""The one interface of every attack: fit on the attacker's auxiliary observations, then attack.

    attack.fit(aux)            aux: the attacker's public text through the known bottom + known defence, as an
                               ObservationStream (fresh noise each pass) or held Observations
    scores = attack.run(obs)   obs: the victims' Observations; the attack reads only h̃ and the mask
                               (``predict``); the ground truth in ``obs`` is used for scoring alone

Two kinds: ``InversionAttack`` (guesses the token at every position; scored by token ASR and ROUGE-L) and
``AttributeAttack`` (guesses a label per sentence; scored by accuracy against the majority class).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import AttackConfig, VariantParams
from ..models.split import BottomModel
from .observations import Observations, ObservationStream
from .scoring import score_inversion

AuxData = Observations | ObservationStream  # what ``fit`` reads: ``batches``, ``pooled``, ``vocabulary``, ``len``


@dataclass
class AttackContext:
    """What the honest-but-curious cloud knows (SPEC §3): the pretrained bottom, the vocabulary, the token
    anchors a_v (``models/anchors.py``) and the special tokens; plus the attack settings and a seed."""

    bottom: BottomModel
    tokenizer: Any
    anchors: torch.Tensor  # [V, d]
    cfg: AttackConfig
    seed: int = 0
    # fitted attacks that others build on, by (name, id of the auxiliary data): eia_bisr and eia_selftrain start
    # from eia_transformer_large's inverter, fitted once per attacker
    fitted: dict[tuple[str, int], Any] = field(default_factory=dict)

    @property
    def special_ids(self) -> list[int]:
        return list(self.tokenizer.all_special_ids)


class Attack(ABC):
    name = "attack"
    kind = "attack"
    reads = "upload"  # what its victims' Observations hold: the uploaded h̃, or "returned_gradient" (∂ℓ/∂A2 too)
    Params: ClassVar[type[VariantParams]] = VariantParams  # its own keys of the ``attack`` section
    attacker = "adaptive"  # the attacker model that fitted it: adaptive (through the mechanism) or static (clean)

    def __init__(self, ctx: AttackContext):
        self.ctx = ctx
        self.params = self.Params.of(ctx.cfg)

    def fit(self, aux: AuxData) -> None:
        """Learn from the auxiliary observations (no-op for attacks without training)."""
        return None

    @abstractmethod
    def run(self, victims: Observations) -> dict[str, float]:
        """Attack ``victims`` and score the result (metric name -> value)."""

    def describe(self) -> dict[str, Any]:
        """What the attack chose while fitting (e.g. its keywords), for the run summary."""
        return {}


class InversionAttack(Attack):
    kind = "inversion"

    @abstractmethod
    def predict(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Top-k token guesses [N, L, k], best first, from h̃ [N, L, d] and the mask alone."""

    def run(self, victims: Observations, batch_size: int = 64) -> dict[str, float]:
        guesses = torch.cat(
            [
                self.predict(victims.hidden[i : i + batch_size], victims.attention_mask[i : i + batch_size])
                for i in range(0, len(victims), batch_size)
            ]
        )
        return score_inversion(
            guesses, victims.input_ids, victims.attention_mask, self.ctx.special_ids, self.ctx.tokenizer
        )


class AttributeAttack(Attack):
    kind = "attribute"


def timed(fn: Callable, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def fit_epochs(
    module: torch.nn.Module,
    batches_of: Callable[[int], Iterable[Any]],
    loss_of: Callable[[Any], torch.Tensor],
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
) -> list[float]:
    """AdamW on ``loss_of(batch)`` over ``batches_of(epoch)`` for ``epochs`` epochs; the mean loss of each epoch.

    The training loop every learned attack shares (``fit_batches``: minibatches of observations; ``fit_minibatch``:
    of indices)."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    module.train()
    history = []
    for epoch in range(epochs):
        losses = []
        for batch in batches_of(epoch):
            loss = loss_of(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    module.eval()
    return history


def fit_batches(
    module: torch.nn.Module,
    aux: AuxData,
    loss_of: Callable[[Observations], torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
) -> list[float]:
    """``fit_epochs`` over passes of ``aux.batches`` (a stream observes each pass afresh: every epoch sees new noise)."""
    return fit_epochs(module, lambda epoch: aux.batches(batch_size, seed + epoch), loss_of, epochs, lr, weight_decay)


def fit_minibatch(
    module: torch.nn.Module,
    n: int,
    loss_of: Callable[[np.ndarray], torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
) -> list[float]:
    """``fit_epochs`` over shuffled minibatches of ``range(n)`` (one permutation per epoch from ``seed``)."""
    rng = np.random.default_rng(seed)

    def batches_of(epoch: int) -> list[np.ndarray]:
        order = rng.permutation(n)
        return [order[start : start + batch_size] for start in range(0, n, batch_size)]

    return fit_epochs(module, batches_of, loss_of, epochs, lr, weight_decay)
