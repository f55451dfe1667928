"""The one interface every privacy mechanism implements: what a device applies to h before upload.

    mech.fit(device_data)                       per-device state from the device's own data (optional)
    h̃ = mech.perturb(h, attention_mask, input_ids)   h, h̃ ∈ R^{B×L×d}; only real tokens (mask = 1) change
    h̃ = mech.release(h, attention_mask, input_ids)   what leaves the device: perturb, checked finite, pads zero
    mech.guarantee(releases, max_length)        the privacy statement for a sample sent ``releases`` times

``input_ids`` are the device's own tokens: a mechanism may read them (PrivTune's neighbour targets and
importance weights), they never leave the device.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ..config import VariantParams
from ..data.batching import TokenizedSplit
from ..errors import NonFiniteRelease
from ..message import zero_padding
from .guarantees import Guarantee, none_guarantee


class Mechanism:
    """Base class; the identity (``none``: plain split learning, the utility upper bound).

    A mechanism's keys of the ``mechanism`` config section are its ``Params`` dataclass (``VariantParams``);
    :meth:`from_params` builds it from them (``MECHANISMS`` maps a config name to the class)."""

    name = "none"
    Params: type[VariantParams] = VariantParams  # none reads no key

    @classmethod
    def from_params(cls, params: Any, split: Any, tokenizer: Any, model_id: str, seed: int = 0) -> Mechanism:
        """The mechanism with these parameters, for the bottom of ``split`` (a SplitModel; None where the mechanism
        needs no model) and its ``tokenizer``."""
        return cls(seed)

    def __init__(self, seed: int = 0):
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Fresh noise generators from ``seed`` (a simulated device's noise depends on (seed, device, round) only)."""
        self.seed = seed
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)

    def for_device(self, data: TokenizedSplit, seed: int) -> Mechanism:
        """A copy fitted to one device's data, sharing this one's read-only parts (PrivTune's graph, the bottom)."""
        mech = copy.copy(self)
        mech.reseed(seed)
        mech.fit(data)
        return mech

    def fit(self, data: TokenizedSplit) -> None:
        """Learn per-device state from the device's own data (no-op by default)."""

    def perturb(self, h: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return h

    def release(self, h: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """h̃ as it may leave the device: :meth:`perturb`, refused if any value is NaN or ±inf (that voids every
        guarantee and poisons the top), rows at padding positions zero (they attended to the sentence)."""
        out = self.perturb(h, attention_mask, input_ids)
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise NonFiniteRelease(
                f"mechanism {self.name!r} produced {bad} non-finite value(s) in h̃ ({out.numel()} drawn): "
                f"nothing was uploaded; this is a defect of the mechanism or of the bottom's numerics"
            )
        return zero_padding(out, attention_mask)

    def guarantee(self, releases: int = 1, max_length: int = 64) -> Guarantee:
        """The privacy statement for a sample sent ``releases`` times (``guarantees.py``, from the parameters)."""
        return none_guarantee(VariantParams(), releases, max_length)

    @classmethod
    def params_guarantee(cls, params: Any, releases: int, max_length: int) -> Guarantee:
        """The statement from the parameters alone, without a model: what the records quote for a mechanism
        registered outside this package (the built-ins' are ``guarantees.GUARANTEES``, torch-free). A subclass that
        does not say states nothing: ``kind`` ``unstated``, no ε."""
        if cls.name == "none":
            return none_guarantee(VariantParams(), releases, max_length)
        return Guarantee(
            kind="unstated",
            statement=f"mechanism {cls.name!r} states no guarantee (its class defines no params_guarantee)",
            releases=releases,
        )

    def noise_nll(self, released: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """−log p(h̃_i | h_i) per row, up to a constant (nats), differentiable in ``clean`` [..., d] -> [...]: the noise
        law an adaptive attacker inverts (``attacks/bisr_inversion.py``). The identity adds none; ½‖h̃ − h‖² stands in
        for the mismatch of a near-miss token."""
        return 0.5 * (released - clean).pow(2).sum(-1)

    def params(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The noise generators' state, so a resumed run draws the same noise as an uninterrupted one."""
        return {"torch_rng": self.torch_rng.get_state(), "np_rng": self.np_rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch_rng.set_state(state["torch_rng"])
        self.np_rng.bit_generator.state = state["np_rng"]


def real_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean [B, L, 1] mask of the positions a mechanism perturbs."""
    return attention_mask.bool().unsqueeze(-1)
