"""Cloud-side levers that cost no privacy: a noise-aware warm start and a denoiser pretraining, on public text.

Before the private fine-tune the cloud holds the pretrained top, the public bottom, the public mechanism (its own
copy: same parameters, its own noise; PrivTune's importance fitted on the public text, as the attacker's) and public
text disjoint from every device's data and from the evaluation split. Nothing here reads a device's data, so the
guarantee of the fine-tune is unchanged.

* Denoiser pretraining (``train.denoiser.pretrain_steps``): the front block D learns h ≈ D(h̃) with
  L = Σ_real ‖D(h̃_i) − h_i‖² / Σ_real ‖h_i‖² (a relative squared error; 1 is "predict zero").
* Warm start (``train.warm_start``): the student top T (its front, blocks and final norm; the head, task-specific
  and untrained, is left out) is distilled towards the clean pretrained top T₀ on clean h:
  ``hidden``: L = Σ_real ‖T(h̃)_i − T₀(h)_i‖² / Σ_real ‖T₀(h)_i‖²;
  ``pooled``: L = 1 − cos(pool T(h̃), pool T₀(h)), pool the mean over real tokens.
  Why distillation: the fine-tune on clean h works because the pretrained top's features already separate the
  classes (87 % on SST-2); the noise moves the top's input off the distribution those features were learned on.
  Distillation asks the top to compute the same features from h̃ as from h, with no label, so unlabelled in-domain
  public text (SST-2's GLUE test split) is enough. ``hidden`` keeps every token's feature (the head may read any
  position: BERT's pooler reads [CLS]); ``pooled`` only the sentence mean.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.batching import TokenizedSplit, collate, tokenize_split
from ..data.public import public_source, uses_public_text
from ..data.registry import load_split
from ..errors import ConfigError
from ..mechanisms.base import Mechanism
from ..mechanisms.registry import build_mechanism
from ..models.split import BottomModel, SplitModel, TopModel, mean_pool

WARM_START_SEED_OFFSET = 2_000_003  # the cloud's mechanism copy draws noise independent of the devices' and attacker's


def _relative_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    real = mask.bool()
    return (pred[real] - target[real]).pow(2).sum() / target[real].pow(2).sum().clamp_min(1e-12)


def _pooled_cosine(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return 1 - nn.functional.cosine_similarity(mean_pool(pred, mask), mean_pool(target, mask), dim=-1).mean()


OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hidden": _relative_mse,
    "pooled": _pooled_cosine,
}


def load_public(cfg: Config, tokenizer, private: list[list[str]]) -> tuple[TokenizedSplit, int]:
    """The public sentences, without any that is also in one of the ``private`` text lists; (split, dropped)."""
    dataset, split = public_source(cfg)
    raw = load_split(
        dataset,
        split,
        cfg.data.data_dir,
        hub_fallback=cfg.data.hub_fallback,
        max_samples=cfg.train.warm_start.samples,
        seed=cfg.seed + 23,
    )
    public = tokenize_split(raw, tokenizer, cfg.model.max_length)
    kept, dropped = public.without_texts(t for texts in private for t in texts)
    if len(kept) == 0:
        raise ConfigError(f"every sentence of {dataset} split {split!r} is also a training or evaluation sentence")
    return kept, dropped


@dataclass
class PublicBatches:
    """Random minibatches of the public text, pushed through the bottom (h) and the cloud's mechanism copy (h̃)."""

    data: TokenizedSplit
    bottom: BottomModel
    mechanism: Mechanism
    batch_size: int
    pad_id: int
    seed: int

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    @torch.no_grad()
    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h, h̃, mask) of one batch."""
        idx = self.rng.choice(len(self.data), min(self.batch_size, len(self.data)), replace=False)
        batch = collate(self.data, np.sort(idx), self.pad_id)
        h = self.bottom(batch.input_ids, batch.attention_mask)
        return h, self.mechanism.release(h, batch.attention_mask, batch.input_ids), batch.attention_mask


def _fit(params: list[nn.Parameter], steps: int, lr: float, loss_of: Callable[[], torch.Tensor]) -> list[float]:
    """``steps`` AdamW steps at ``lr`` with linear decay; the loss of every step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    losses = []
    for _ in range(steps):
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def pretrain_denoiser(top: TopModel, batches: PublicBatches, steps: int, lr: float, device) -> list[float]:
    """The front block D alone: h ≈ D(h̃) (relative squared error over real tokens)."""
    front = top.front
    assert front is not None

    def loss_of():
        h, noisy, mask = batches.next()
        return _relative_mse(front(noisy.to(device), mask.to(device)), h.to(device), mask.to(device))

    return _fit(list(front.parameters()), steps, lr, loss_of)


def warm_start(top: TopModel, batches: PublicBatches, steps: int, lr: float, objective: str, device) -> list[float]:
    """Distil the top's features on h̃ towards the clean pretrained top's on h (front, blocks, final norm)."""
    teacher = copy.deepcopy(top).eval().requires_grad_(False)
    teacher.front = None  # the clean pretrained top: no denoiser
    loss_fn = OBJECTIVES[objective]
    params = [p for name, p in top.named_parameters() if not name.startswith("head.") and p.requires_grad]

    def loss_of():
        h, noisy, mask = batches.next()
        h, noisy, mask = h.to(device), noisy.to(device), mask.to(device)
        with torch.no_grad():
            target = teacher.features(h, mask)
        return loss_fn(top.features(noisy, mask), target, mask)

    was_training = top.training
    top.train()
    try:
        return _fit(params, steps, lr, loss_of)
    finally:
        top.train(was_training)


def prepare_top(cfg: Config, top: TopModel, batches: PublicBatches | None, device, log=print) -> dict:
    """Run the configured levers on ``top`` in place (denoiser pretraining, then the warm start); their record."""
    record: dict = {}
    if batches is None:
        return record
    start = time.perf_counter()
    den, ws = cfg.train.denoiser, cfg.train.warm_start
    if top.front is not None and den.pretrain_steps > 0:
        losses = pretrain_denoiser(top, batches, den.pretrain_steps, ws.lr, device)
        record["denoiser_pretrain_loss"] = [losses[0], float(np.mean(losses[-10:]))]
        log(f"privtune-ray: denoiser pretrained {den.pretrain_steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    if ws.enabled:
        losses = warm_start(top, batches, ws.steps, ws.lr, ws.objective, device)
        record["warm_start_loss"] = [losses[0], float(np.mean(losses[-10:]))]
        log(f"privtune-ray: warm start ({ws.objective}) {ws.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    record["public_s"] = time.perf_counter() - start
    return record


def prepare_cloud_top(
    cfg: Config, split: SplitModel, tokenizer, model_id: str, public: TokenizedSplit, dropped: int, device, log=print
) -> dict:
    """The cloud's levers run on ``split.top`` in place (its denoiser and head already added), on the public text
    pushed through ``split.bottom`` and the cloud's own mechanism copy (PrivTune's importance fitted on the public
    text, noise seeded apart from every device's); the record ``public.json`` keeps. ``train`` and ``simulate`` both
    call it (``simulate`` on the top its replicas then load, from the shallowest device's depth)."""
    mechanism = build_mechanism(cfg.mechanism, split, tokenizer, model_id, seed=cfg.seed + WARM_START_SEED_OFFSET)
    mechanism.fit(public)
    batches = PublicBatches(
        public, split.bottom, mechanism, cfg.train.warm_start.batch_size, tokenizer.pad_token_id, cfg.seed + 29
    )
    return {
        "public_sentences": len(public),
        "public_dropped_as_private": dropped,
        **prepare_top(cfg, split.top.to(device), batches, device, log=log),
    }


__all__ = [
    "OBJECTIVES",
    "prepare_cloud_top",
    "PublicBatches",
    "WARM_START_SEED_OFFSET",
    "load_public",
    "prepare_top",
    "pretrain_denoiser",
    "public_source",
    "uses_public_text",
    "warm_start",
]
