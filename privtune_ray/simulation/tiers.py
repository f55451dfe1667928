"""Device tiers: what a device of each profile can run, and how many devices each tier contributes.

Memory caps the split depth (SPEC §1 [ours]: m_i ≤ m_max,i). The bottom at depth m needs

    M(m) = P_E + Σ_{j≤m} P_j + A          (bytes)

with P_E the embedding parameters, P_j block j's parameters (fp32, counted from the real model) and A the
activations of one local batch [ours]: 4·b·L·(2d + d_ff) for the hidden states and the FFN expansion plus
4·b·H·L² for one block's attention probabilities. A device of a tier runs m_i = the largest m ≤ the
configured ``model.split_depth`` with M(m) ≤ ``memory_mb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.torch import save as st_save

from ..config import SimulationConfig, TierConfig
from ..data.partition import largest_remainder
from ..errors import ConfigError
from ..models.split import BottomModel, SplitModel

MB = 2**20  # memory_mb counts MiB


def _param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@dataclass
class BottomFootprint:
    """Memory M(m) (bytes) and download size (bytes of the serialised weights) of the bottom at each depth."""

    memory: list[int]  # index m = 0..L
    download: dict[int, int]  # depth -> safetensors payload bytes (depths in use only)

    @classmethod
    def measure(cls, split: SplitModel, model_config, batch: int, length: int) -> BottomFootprint:
        """From the real model ``split`` (split at m = 0, so ``split.top.blocks`` holds every block) and its HF config."""
        cfg, d = model_config, split.hidden_size
        d_ff = (
            getattr(cfg, "intermediate_size", None)
            or getattr(cfg, "n_inner", None)
            or getattr(cfg, "ffn_dim", None)
            or 4 * d
        )
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1
        activations = 4 * batch * length * (2 * d + d_ff) + 4 * batch * heads * length * length
        memory = [_param_bytes(split.bottom.embedding) + activations]
        for block in split.top.blocks:
            memory.append(memory[-1] + _param_bytes(block))
        return cls(memory=memory, download={})

    def max_depth(self, tier: TierConfig, requested: int) -> int:
        """m_i for a device of ``tier``; a tier that fits no depth is an error naming the fix."""
        budget = tier.memory_mb * MB
        fitting = [m for m in range(min(requested, len(self.memory) - 1) + 1) if self.memory[m] <= budget]
        if not fitting:
            raise ConfigError(
                f"device tier {tier.name!r} has memory_mb={tier.memory_mb:g}, but the bottom model needs "
                f"{self.memory[0] / MB:.1f} MiB even at m=0 (embeddings only): raise simulation.tiers[].memory_mb "
                f"for that tier, lower model.max_length or simulation.local_batch_size, or use a smaller model"
            )
        return fitting[-1]

    def download_bytes(self, bottom: BottomModel) -> int:
        """Bytes a device downloads once: the safetensors payload of its bottom's weights."""
        if bottom.m not in self.download:
            tensors = {k: v.contiguous() for k, v in bottom.state_dict().items()}
            self.download[bottom.m] = len(st_save(tensors))
        return self.download[bottom.m]


def tier_counts(tiers: list[TierConfig], n_devices: int) -> np.ndarray:
    """Devices per tier, ∝ ``share`` (largest remainder, so they add up to N)."""
    shares = np.array([t.share for t in tiers], dtype=np.float64)
    return largest_remainder(shares / shares.sum(), n_devices)


def assign_tiers(sim: SimulationConfig, seed: int) -> np.ndarray:
    """Tier index of each of the N devices: ``tier_counts`` of each, in a seeded random order."""
    counts = tier_counts(sim.tiers, sim.devices)
    tiers = np.repeat(np.arange(len(sim.tiers), dtype=np.int16), counts)
    return np.random.default_rng([seed, 0x7135]).permutation(tiers)
