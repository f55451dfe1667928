"""EIA-learned: an inversion model trained on auxiliary text pushed through the known bottom and the known
defence (an adaptive attacker), predicting the token at every position.

Model [ours]: a learned map f: h̃ ↦ f(h̃) ∈ R^d followed by a frozen decoder over the token anchors,
logits_v = exp(τ)·cos(f(h̃_i), a_v). f is residual with a zero-initialised output layer, so an untrained
inverter is exactly EIA-KNN (cosine); training can only move it towards the tokens of the auxiliary data.
Because the decoder is the frozen anchor table, every vocabulary token stays predictable, also those the
auxiliary text never contains; the softmax of the training loss runs over the auxiliary vocabulary only
(cost ∝ its size, not V).

* ``mlp``: f(x) = x + W₂·GELU(W₁·LN(x)), per position (no context).
* ``transformer``: f(x) = x + W·Enc(LN(x)), Enc = 2 pre-LN transformer encoder layers over the sentence
  (padding masked), so neighbouring positions help denoise each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttackContext, AuxData, InversionAttack, fit_batches
from .knn_inversion import nearest_tokens
from .observations import Observations
from .params import InverterParams


class MLPMap(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class TransformerMap(nn.Module):
    def __init__(self, d: int, layers: int = 2):
        super().__init__()
        heads = next(h for h in (8, 6, 4, 2, 1) if d % h == 0)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.encoder(self.norm(x), src_key_padding_mask=~attention_mask.bool()))


ARCHITECTURES = {"mlp": MLPMap, "transformer": TransformerMap}


class Inverter(nn.Module):
    """logits_v = exp(τ)·cos(f(h̃_i), a_v) over the given (unit) anchors."""

    def __init__(self, arch: str, d: int):
        super().__init__()
        self.map = ARCHITECTURES[arch](d)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.map(hidden, attention_mask), dim=-1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, unit_anchors: torch.Tensor) -> torch.Tensor:
        """Logits [T, V'] of the T real positions (mask = 1), in row-major order."""
        return torch.exp(self.log_scale) * self.features(hidden, attention_mask)[attention_mask.bool()] @ unit_anchors.T


class LearnedInversion(InversionAttack):
    Params = InverterParams

    def __init__(self, ctx: AttackContext, arch: str = "mlp"):
        super().__init__(ctx)
        self.name = f"eia_{arch}"
        self.model = Inverter(arch, ctx.anchors.shape[1])
        self.unit_anchors = F.normalize(ctx.anchors, dim=-1)
        self.history: list[float] = []

    def fit(self, aux: AuxData) -> None:
        vocab = aux.vocabulary()  # the auxiliary vocabulary: the classes of the training loss
        class_of = torch.full((self.unit_anchors.shape[0],), -1, dtype=torch.long)
        class_of[vocab] = torch.arange(len(vocab))
        anchors = self.unit_anchors[vocab]

        def loss_of(batch: Observations) -> torch.Tensor:
            real = batch.attention_mask.bool()
            logits = self.model(batch.hidden, batch.attention_mask, anchors)
            return F.cross_entropy(logits, class_of[batch.input_ids[real]])

        p = self.params
        self.history = fit_batches(self.model, aux, loss_of, p.epochs, p.batch_size, p.lr, self.ctx.seed)

    @torch.no_grad()
    def predict(self, hidden, attention_mask):
        self.model.eval()
        real = attention_mask.bool()
        guesses = torch.full((*hidden.shape[:2], self.ctx.cfg.top_k), -1, dtype=torch.long)
        rows = self.model.features(hidden.float(), attention_mask)[real]
        guesses[real] = nearest_tokens(rows, self.unit_anchors, self.ctx.cfg.top_k, "cosine")
        return guesses
