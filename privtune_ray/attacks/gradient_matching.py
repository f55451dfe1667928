"""Gradient matching on what a device sends back: label inference from GuardedTuning online's ∂ℓ/∂A2.

The cloud computed A2 = M(A1) itself and receives g = ∂ℓ/∂A2 (ℓ = Σ CE of the device's top adapter A_t,
whose labels never leave the device). In a simulation it holds A_t itself, as the round sent it down (it
aggregates A_t's gradients): :func:`held_gradient_matching`. An attacker without it fits a surrogate Â_t
(the pretrained blocks L−a+1..L and a head of its own) on its auxiliary labelled text pushed through its
copy of the bottom, the pretrained A_b and its middle: :func:`build_gradient_matching`. For victim sample i
and every class c it computes ĝ_{i,c} = ∂CE(A_t(A2_i), c)/∂A2_i and guesses

    ŷ_i = argmax_c cos(g_i, ĝ_{i,c})      (both flattened over the real positions of sample i)

Per-sample rows of g are the sample's own gradient (blocks act on each sample alone), so the batch sum
needs no unmixing. Scored like every attribute attack: accuracy against the majority class (advantage).

Registered as ``gm_label`` in :data:`privtune_ray.attacks.registry.ATTACKS`; its builder takes a :class:`GradientContext`
(what this attacker knows) where the upload attacks take an ``AttackContext``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import AttackConfig, Config
from ..data.batching import TokenizedSplit, batch_indices, collate
from ..models.split import BottomModel, TopModel, family_of
from ..seeding import isolated_rng
from .base import AttackContext, AttributeAttack, fit_minibatch
from .observations import Observations
from .params import ProbeParams
from .scoring import score_classes

NAME = "gm_label"
SURROGATE_SEED_OFFSET = 0xA77  # the surrogate head's init seed is cfg.seed + this (never the device's)


@dataclass
class GradientContext:
    """What the cloud's gradient attacker holds: its surrogate Â_t (:func:`surrogate_top`), the settings, a seed."""

    surrogate_top: nn.Module
    cfg: AttackConfig
    seed: int = 0


class GradientMatchingLabels(AttributeAttack):
    """``fit`` on the attacker's auxiliary :class:`Observations` (its own A2 as ``hidden``, labels); ``run`` on the
    victims' (A2 as ``hidden`` and the returned ``gradients``; labels for scoring) → accuracy, majority accuracy,
    advantage, samples."""

    name = NAME
    reads = "returned_gradient"  # Observations with ``gradients`` (∂ℓ/∂A2), not the uploads
    Params = ProbeParams  # the surrogate Â_t is fitted like a probe

    def __init__(self, surrogate_top: nn.Module, cfg: AttackConfig, seed: int = 0):
        # Attack.__init__ reads only ``ctx.cfg``, which a GradientContext holds too; this attack never reads self.ctx
        super().__init__(cast(AttackContext, GradientContext(surrogate_top, cfg, seed)))
        self.top, self.cfg, self.seed = surrogate_top, cfg, seed
        self.majority = 0
        self.classes = 2

    @staticmethod
    @torch.no_grad()
    def observe_aux(encode, data: TokenizedSplit, pad_id: int) -> Observations:
        """The attacker's own A2 of ``data``: ``encode(input_ids, mask)`` is its bottom → A_b → middle."""
        parts = []
        for idx in batch_indices(data.lengths, 64, shuffle=False, bucketing=False):
            batch = collate(data, idx, pad_id)
            parts.append(
                Observations(
                    encode(batch.input_ids, batch.attention_mask), batch.attention_mask, batch.input_ids, batch.labels
                )
            )
        return Observations.concat(parts)

    def count_classes(self, labels) -> None:
        """The classes and the majority class (what scoring compares with) from the attacker's labelled text."""
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels[labels >= 0])  # public text of other corpora carries no label (-1)
        self.majority, self.classes = int(counts.argmax()), max(2, len(counts))

    # narrower than Attack.fit on purpose: it reads held Observations (A2 and labels) and returns its loss history
    def fit(self, aux: Observations) -> list[float]:  # type: ignore[override]
        """Fit the surrogate Â_t with cross-entropy on the auxiliary A2 (``attack.probe_epochs``, ``probe_lr``)."""
        a2, mask, labels = aux.hidden, aux.attention_mask, aux.labels.long()
        self.count_classes(labels)

        def loss_of(idx):
            idx = torch.as_tensor(idx)
            return F.cross_entropy(self.top(a2[idx], mask[idx]), labels[idx])

        p = self.params
        return fit_minibatch(self.top, len(labels), loss_of, p.probe_epochs, p.batch_size, p.probe_lr, self.seed)

    def predict(self, a2: torch.Tensor, mask: torch.Tensor, grads: torch.Tensor) -> np.ndarray:
        """ŷ per sample: the class whose surrogate gradient is closest in cosine to the received one."""
        self.top.eval()
        real = mask.unsqueeze(-1).float()
        observed = (grads.float() * real).flatten(1)
        scores = []
        for c in range(self.classes):
            x = a2.detach().float().clone().requires_grad_(True)
            logits = self.top(x, mask)
            loss = F.cross_entropy(logits, torch.full((len(x),), c, dtype=torch.long), reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
            scores.append(F.cosine_similarity((g * real).flatten(1), observed, dim=1))
        return torch.stack(scores, 1).argmax(1).numpy()

    def run(self, victims: Observations) -> dict[str, float]:
        predicted = np.concatenate(
            [
                self.predict(v.hidden, v.attention_mask, cast(torch.Tensor, v.gradients))  # reads returned gradients
                for v in (victims.subset(range(i, min(i + 64, len(victims)))) for i in range(0, len(victims), 64))
            ]
        )
        return score_classes(predicted, victims.labels.numpy(), self.majority)


def surrogate_top(top_adapter: nn.Module, seed: int) -> nn.Module:
    """A copy of the pretrained A_t with the head re-initialised from the attacker's own seed (it never sees the device's)."""
    surrogate = copy.deepcopy(top_adapter)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        for module in cast(nn.Module, surrogate.head).modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    surrogate.requires_grad_(True)
    return surrogate


def build(ctx: GradientContext, attributes: tuple[str, ...] = ()) -> list[GradientMatchingLabels]:
    """The ``gm_label`` entry of :data:`~privtune_ray.attacks.registry.ATTACKS` (``attributes`` unused: it reads the label)."""
    return [GradientMatchingLabels(ctx.surrogate_top, ctx.cfg, ctx.seed)]


def held_gradient_matching(
    cfg: Config, top_adapter: nn.Module, aux: TokenizedSplit, log=print
) -> GradientMatchingLabels:
    """Gradient matching through the A_t the cloud holds (the round's, whose gradients it aggregates), as is: nothing
    to fit; ``aux`` gives only the classes and the majority class. It runs A_t without dropout (it does not know the
    device's draws)."""
    attack = GradientMatchingLabels(copy.deepcopy(top_adapter).eval(), cfg.attack, cfg.seed)
    attack.count_classes(aux.labels)
    log(f"privtune-ray: attack {attack.name} differentiates through the round's top adapter A_t (held by the cloud)")
    return attack


@isolated_rng()
def build_gradient_matching(
    cfg: Config, task_model: nn.Module, layout, aux: TokenizedSplit, pad_id: int, log=print
) -> GradientMatchingLabels:
    """Gradient matching with a surrogate Â_t, for an attacker who does not hold A_t (``layout``: a
    ``GuardedLayout``, of which only ``top_adapter_start`` = L − a is read); a simulation's cloud holds it:
    :func:`held_gradient_matching`.

    The attacker's copy of what precedes A_t (frozen bottom → A_b → middle, all pretrained) is the pretrained model's
    embeddings and blocks 1..L−a; its surrogate Â_t is blocks L−a+1..L with the head re-initialised from seed
    ``cfg.seed + SURROGATE_SEED_OFFSET``. It fits Â_t on ``aux`` (its auxiliary labelled text) and logs the loss.
    """
    family = family_of(task_model)
    start = layout.top_adapter_start
    encode = BottomModel(family, task_model, start)  # embeddings + blocks 1..L−a = bottom, A_b and middle in a row
    top = TopModel(family, task_model, start, cfg.model.task)
    ctx = GradientContext(surrogate_top(top, cfg.seed + SURROGATE_SEED_OFFSET), cfg.attack, cfg.seed)
    (attack,) = build(ctx)
    aux = aux.subset(np.flatnonzero(aux.labels >= 0))  # its labelled text only (aux_corpora of other tasks: -1)
    history = attack.fit(attack.observe_aux(encode, aux, pad_id))
    log(
        f"privtune-ray: attack {attack.name} fitted its surrogate top adapter on {len(aux)} auxiliary sentences "
        f"(loss {history[0]:.3f} -> {history[-1]:.3f} nats)"
    )
    return attack
