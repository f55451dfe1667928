"""Cloud side: train the top model on received messages and predict with it.

The server only ever gets :class:`~privtune_ray.message.Message` objects (h̃, mask, labels).
Optimiser: AdamW (no weight decay on biases and norm weights), linear warm-up over
``warmup_ratio·T`` steps then linear decay to 0 at step T. Optionally LoRA (peft) on the blocks'
projections, or BitFit (only the biases), with the task head fully trained either way.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..config import LoraConfig, TrainConfig
from ..data.batching import IGNORE
from ..errors import ConfigError
from ..message import Message
from ..models.denoiser import build_denoiser
from ..models.families import Family
from ..models.split import HEAD_POOLINGS, TopModel


def lora_targets(top: nn.Module, family: Family, lora: LoraConfig) -> list[str]:
    """The module names LoRA adapts (``train.lora.target_modules``, or the family's projections), each checked to
    name at least one linear layer inside the top's blocks: a name that matches none is one ConfigError listing
    the names there are."""
    targets = lora.target_modules or list(family.lora_targets)
    linear = {
        name.rsplit(".", 1)[-1]
        for name, m in top.named_modules()
        if name.startswith("blocks.") and isinstance(m, nn.Linear)
    }
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ConfigError(
            f"train.lora.target_modules: {missing} name no linear layer in the top model's blocks; choose from "
            f"{sorted(linear)}"
        )
    return targets


def apply_lora(top: nn.Module, family: Family, lora: LoraConfig) -> nn.Module:
    """Wrap ``top`` with peft LoRA adapters on its blocks' projections; the head (and a front denoiser) stay fully
    trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora_targets(top, family, lora)
    pattern = rf".*blocks\.\d+\..*\b({'|'.join(targets)})"  # only inside the top's blocks, not the head
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=pattern,
        modules_to_save=["head"] + (["front"] if getattr(top, "front", None) is not None else []),  # a cloud denoiser
    )
    return get_peft_model(top, config)


def apply_bitfit(top: nn.Module) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022): freeze every weight of the top's blocks but the biases; the task head and a
    front denoiser train whole. Per-sample gradients (DP-SGD) then cost B × (biases + head) floats."""
    for name, param in top.named_parameters():
        param.requires_grad_(not name.startswith("blocks.") or name.endswith(".bias"))
    return top


def add_cloud_levers(top: TopModel, hidden_size: int, cfg: TrainConfig) -> TopModel:
    """The cloud's own levers on the top, before its adaptation (``train`` and ``simulate`` alike): a denoiser front
    block (``train.denoiser``) and the head's read-out (``train.head_pooling``)."""
    if cfg.denoiser.kind != "none":
        top.front = build_denoiser(cfg.denoiser.kind, hidden_size, cfg.denoiser.width)
    if (pooled := HEAD_POOLINGS[cfg.head_pooling]) is not None:
        top.head = pooled(top.head)
    return top


def adapt_top(top: nn.Module, family: Family, cfg: TrainConfig) -> nn.Module:
    """The top as ``train`` configures its trainable part: LoRA (``lora.enabled``), BitFit (``trainable: bias``)
    or all of it."""
    if cfg.lora.enabled:
        return apply_lora(top, family, cfg.lora)
    if cfg.trainable == "bias":
        return apply_bitfit(top)
    return top


def build_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample [B] (nats). Class ids [B]: one term per sample. Token targets [B, L] (causal LM):
    position t predicts token t+1, summed over each sample's targets that are not -100."""
    if labels.dim() == 1:
        return nn.functional.cross_entropy(logits, labels, reduction="none")
    per_token = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="none"
    )
    return per_token.view(labels.shape[0], -1).sum(1)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch (nats): Σ of :func:`sample_losses`."""
    return sample_losses(logits, labels).sum()


class TopServer:
    """Trains ``top`` with cross-entropy on the uploaded labels. ``compute_s`` accumulates measured seconds.

    One optimiser step may span several messages (the simulation's round): ``accumulate`` adds
    ∇ Σ_j CE_j of each message to the gradients, ``step(n)`` divides them by the n samples (the mean loss)
    and applies AdamW. ``train_step`` is both for one message. ``device``: where the top runs (cpu, cuda).
    """

    def __init__(self, top: nn.Module, optimizer: torch.optim.Optimizer, scheduler, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.top = top.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.compute_s = 0.0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _logits(self, msg: Message) -> torch.Tensor:
        return self.top(msg.hidden.to(self.device), msg.attention_mask.to(self.device), msg.split_depth)

    def train_step(self, msg: Message) -> float:
        """One optimiser step on one message; returns the batch's mean loss (nats)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = self.accumulate(msg)
        self.step(msg.batch_size)
        return loss_sum / msg.batch_size

    def accumulate(self, msg: Message) -> float:
        """Add ∇ of the message's summed loss (:func:`summed_loss`) to the gradients; returns that sum (nats)."""
        return float(self.accumulate_samples(msg).sum())

    def accumulate_samples(self, msg: Message) -> torch.Tensor:
        """:meth:`accumulate`, returning the per-sample losses [B] (nats, detached, on the CPU)."""
        start = time.perf_counter()
        self.top.train()
        losses = sample_losses(self._logits(msg), msg.labels.to(self.device))
        losses.sum().backward()
        self.compute_s += time.perf_counter() - start
        return losses.detach().cpu()

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.top.parameters() if p.requires_grad]

    def gradients(self) -> list[torch.Tensor | None]:
        """The accumulated gradients on the CPU, in parameter order; None where a parameter got none
        (blocks that only shallower devices' h pass through): AdamW then leaves it alone, as it would here."""
        return [None if p.grad is None else p.grad.detach().cpu() for p in self.trainable()]

    def set_gradients(self, grads: list[torch.Tensor | None]) -> None:
        for p, g in zip(self.trainable(), grads, strict=True):
            p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()

    def step(self, n_samples: int) -> None:
        """Divide the accumulated gradients by ``n_samples`` (mean loss), take the AdamW step, zero them."""
        start = time.perf_counter()
        for p in self.trainable():
            if p.grad is not None:
                p.grad.div_(max(n_samples, 1))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.compute_s += time.perf_counter() - start

    @torch.no_grad()
    def predict(self, msg: Message) -> torch.Tensor:
        """Logits for a message, in eval mode (no dropout), on the CPU."""
        start = time.perf_counter()
        self.top.eval()
        logits = self._logits(msg).cpu()
        self.compute_s += time.perf_counter() - start
        return logits
