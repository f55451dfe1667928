"""Cloud side: train the top model on received messages and predict with it.

The server only ever gets :class:`~privtune_ray.message.Message` objects (h̃, mask, labels).
Optimiser: AdamW (no weight decay on biases and norm weights), linear warm-up over
``warmup_ratio·T`` steps then linear decay to 0 at step T. Optionally LoRA (peft) on the blocks'
projections, with the task head fully trained.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..config import LoraConfig, TrainConfig
from ..message import Message
from ..models.families import Family


def apply_lora(top: nn.Module, family: Family, lora: LoraConfig) -> nn.Module:
    """Wrap ``top`` with peft LoRA adapters on its blocks' projections; the head stays fully trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora.target_modules or list(family.lora_targets)
    pattern = rf".*blocks\.\d+\..*\b({'|'.join(targets)})"  # only inside the top's blocks, not the head
    config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern, modules_to_save=["head"]
    )
    return get_peft_model(top, config)


def build_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


class TopServer:
    """Trains ``top`` with cross-entropy on the uploaded labels. ``compute_s`` accumulates measured seconds."""

    def __init__(self, top: nn.Module, optimizer: torch.optim.Optimizer, scheduler):
        self.top = top
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = nn.CrossEntropyLoss()
        self.compute_s = 0.0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, msg: Message) -> float:
        """One optimiser step on one message; returns the batch's mean loss (nats)."""
        start = time.perf_counter()
        self.top.train()
        logits = self.top(msg.hidden, msg.attention_mask)
        loss = self.loss_fn(logits, msg.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.compute_s += time.perf_counter() - start
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, msg: Message) -> torch.Tensor:
        """Logits for a message, in eval mode (no dropout)."""
        start = time.perf_counter()
        self.top.eval()
        logits = self.top(msg.hidden, msg.attention_mask)
        self.compute_s += time.perf_counter() - start
        return logits
