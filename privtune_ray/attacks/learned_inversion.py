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
* ``transformer_large`` (``eia_transformer_large``): Enc of 4 layers (``attack.inverter_layers``) and a
  **full-vocabulary** decoder logits_v = exp(τ)·⟨f̂(h̃_i), w_v⟩ + b_v whose rows w_v start at the unit anchors and are
  trained (softmax over all V), so it can learn past the anchor geometry; the start is the anchor decoder.

The attacker's text is read as an :class:`~privtune_ray.attacks.observations.ObservationStream` where the suite
fits it: every epoch observes the text afresh, through the bottom and the attacker's copy of the mechanism (new
noise each time), and memory holds one minibatch of h̃.
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
    def __init__(self, d: int, layers: int | None = None):  # per position: no layers to choose
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class TransformerMap(nn.Module):
    def __init__(self, d: int, layers: int | None = None):
        layers = layers or 2
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


ARCHITECTURES = {"mlp": MLPMap, "transformer": TransformerMap, "transformer_large": TransformerMap}
DEFAULT_LAYERS = {"mlp": None, "transformer": 2, "transformer_large": 4}


class Inverter(nn.Module):
    """logits_v = exp(τ)·cos(f(h̃_i), a_v) over the given (unit) anchors, or, with ``decoder`` (the unit anchors [V, d]
    it starts from), exp(τ)·⟨f̂(h̃_i), w_v⟩ + b_v with w, b trained over the full vocabulary."""

    def __init__(self, arch: str, d: int, layers: int | None = None, decoder: torch.Tensor | None = None):
        super().__init__()
        self.map = ARCHITECTURES[arch](d, layers)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.decoder = None
        if decoder is not None:
            self.decoder = nn.Linear(d, decoder.shape[0])
            with torch.no_grad():
                self.decoder.weight.copy_(decoder)
                self.decoder.bias.zero_()

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.map(hidden, attention_mask), dim=-1)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, unit_anchors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [T, V'] of the T real positions (mask = 1), in row-major order: over ``unit_anchors``' rows, or
        over the full vocabulary where the inverter has its own decoder."""
        rows = self.features(hidden, attention_mask)[attention_mask.bool()]
        if self.decoder is not None:
            return torch.exp(self.log_scale) * self.decoder(rows)
        assert unit_anchors is not None, "an anchor decoder needs the anchors"
        return torch.exp(self.log_scale) * rows @ unit_anchors.T


class LearnedInversion(InversionAttack):
    Params = InverterParams

    def __init__(self, ctx: AttackContext, arch: str = "mlp"):
        super().__init__(ctx)
        self.name = f"eia_{arch}"
        self.unit_anchors = F.normalize(ctx.anchors, dim=-1)
        full_vocab = arch == "transformer_large"
        self.layers = None if arch == "mlp" else (self.params.inverter_layers or DEFAULT_LAYERS[arch])
        self.model = Inverter(arch, ctx.anchors.shape[1], self.layers, self.unit_anchors if full_vocab else None)
        self.history: list[float] = []

    def fit(self, aux: AuxData) -> None:
        if self.model.decoder is not None:  # full vocabulary: the classes are the token ids
            class_of, anchors = torch.arange(self.unit_anchors.shape[0]), None
        else:  # the auxiliary vocabulary: the classes of the training loss
            vocab = aux.vocabulary()
            class_of = torch.full((self.unit_anchors.shape[0],), -1, dtype=torch.long)
            class_of[vocab] = torch.arange(len(vocab))
            anchors = self.unit_anchors[vocab]

        def loss_of(batch: Observations) -> torch.Tensor:
            real = batch.attention_mask.bool()
            logits = self.model(batch.hidden, batch.attention_mask, anchors)
            return F.cross_entropy(logits, class_of[batch.input_ids[real]])

        p = self.params
        self.history = fit_batches(self.model, aux, loss_of, p.epochs, p.batch_size, p.lr, self.ctx.seed)
        self.ctx.fitted[(self.name, id(aux))] = self

    @torch.no_grad()
    def log_probs(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """log p(v | h̃) [T, V] over the full vocabulary at the T real positions."""
        self.model.eval()
        return F.log_softmax(self.model(hidden.float(), attention_mask, self.unit_anchors), -1)

    @torch.no_grad()
    def predict(self, hidden, attention_mask):
        self.model.eval()
        real = attention_mask.bool()
        guesses = torch.full((*hidden.shape[:2], self.ctx.cfg.top_k), -1, dtype=torch.long)
        if self.model.decoder is not None:
            guesses[real] = self.log_probs(hidden, attention_mask).topk(self.ctx.cfg.top_k, dim=-1).indices
        else:
            rows = self.model.features(hidden.float(), attention_mask)[real]
            guesses[real] = nearest_tokens(rows, self.unit_anchors, self.ctx.cfg.top_k, "cosine")
        return guesses

    def describe(self) -> dict:
        return {"layers": self.layers, "decoder": "full vocabulary" if self.model.decoder is not None else "anchors"}


def fitted_inverter(ctx: AttackContext, aux: AuxData, arch: str = "transformer_large") -> LearnedInversion:
    """``eia_{arch}`` fitted on ``aux``: the one the suite fitted already for this attacker, else fitted now."""
    inverter = ctx.fitted.get((f"eia_{arch}", id(aux)))
    if inverter is None:
        inverter = LearnedInversion(ctx, arch)
        inverter.fit(aux)
    return inverter
