"""AIA-MLP probe and AIA-label: an MLP on the pooled h̃ predicting a private attribute or the task label.

    x = mean_{i: mask_i = 1} h̃_i ∈ R^d, standardised with the auxiliary data's mean and std
    ŷ = argmax W₂·GELU(W₁x)       (trained with cross-entropy on the auxiliary data)

``aia_probe`` targets a private attribute of the author (Blog gender and age group, TrustPilot gender);
``aia_label`` targets the sentence's topic or task label (SPEC §3 AIA-topic/label). Classes are the values
seen in the auxiliary data; the majority baseline predicts its most frequent class for everyone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..models.split import mean_pool
from .base import AttackContext, AttributeAttack, AuxData, fit_minibatch
from .observations import Observations, Pooled
from .params import ProbeParams
from .scoring import score_classes


class PooledMLP(nn.Module):
    """Standardised mean-pooled h̃ → GELU MLP → ``outputs`` logits; shared by the attribute attacks."""

    mean: torch.Tensor  # buffers (register_buffer)
    std: torch.Tensor

    def __init__(self, d: int, outputs: int, width: int = 256):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.net = nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, outputs))

    def standardise_on(self, pooled: torch.Tensor) -> None:
        self.mean.copy_(pooled.mean(0))
        self.std.copy_(pooled.std(0).clamp_min(1e-6))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net((pooled - self.mean) / self.std)


def fit_probe(model: PooledMLP, n: int, loss_of, params: ProbeParams, seed: int) -> list[float]:
    return fit_minibatch(
        model, n, loss_of, params.probe_epochs, params.batch_size, params.probe_lr, seed, weight_decay=1e-2
    )


class AttributeProbe(AttributeAttack):
    """Predicts ``target``: a private attribute name, or ``"label"`` for the task label."""

    Params = ProbeParams

    def __init__(self, ctx: AttackContext, target: str):
        super().__init__(ctx)
        self.target = target
        self.name = "aia_label" if target == "label" else f"aia_probe_{target}"
        self.classes: np.ndarray | None = None
        self.model: PooledMLP | None = None

    def values(self, obs: Observations | Pooled) -> np.ndarray:
        if self.target == "label":
            return obs.labels.numpy()
        if self.target not in obs.attributes:
            have = sorted(obs.attributes) or ["none"]
            raise DataError(
                f"attack {self.name!r} needs the private attribute {self.target!r}, which this data does not have "
                f"(it has: {', '.join(have)}); use blog (gender, age_group) or trustpilot (gender, born_before_1960), "
                f"or set attack.attributes"
            )
        return np.asarray(obs.attributes[self.target])

    def fit(self, aux: AuxData) -> None:
        sentences = aux.pooled()
        values = self.values(sentences)
        # public text of other corpora has no such attribute (None) or none of the victims' labels (-1)
        known = np.asarray([v is not None and not (self.target == "label" and v < 0) for v in values], dtype=bool)
        if not known.any():
            raise DataError(f"attack {self.name!r}: no auxiliary sentence carries {self.target!r}")
        self.classes, codes = np.unique(values[known], return_inverse=True)
        self.majority = self.classes[np.bincount(codes).argmax()]
        x, y = sentences.features[torch.as_tensor(known)], torch.as_tensor(codes)
        self.model = PooledMLP(x.shape[1], len(self.classes))
        self.model.standardise_on(x)
        fit_probe(
            self.model, len(x), lambda idx: F.cross_entropy(self.model(x[idx]), y[idx]), self.params, self.ctx.seed
        )

    @torch.no_grad()
    def predict(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        assert self.classes is not None and self.model is not None  # set by fit()
        return self.classes[self.model(mean_pool(hidden.float(), attention_mask)).argmax(-1).numpy()]

    def run(self, victims: Observations) -> dict[str, float]:
        truth = self.values(victims)
        return score_classes(self.predict(victims.hidden, victims.attention_mask), truth, self.majority)
