"""The attacks by config name (``ATTACKS``): each a builder ``(ctx, attributes) -> list[Attack]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import gradient_matching
from .attribute_probe import AttributeProbe
from .base import Attack
from .bisr_inversion import BiSRInversion
from .gradient_matching import GradientMatchingLabels
from .keyword_inference import KeywordInference
from .knn_inversion import KNNInversion
from .learned_inversion import LearnedInversion
from .optimisation_inversion import OptimisationInversion
from .params import GRADIENT_ATTACKS
from .selftrain_inversion import SelfTrainingInversion

ATTACKS: dict[str, Callable[[Any, tuple[str, ...]], Sequence[Attack]]] = {
    "eia_knn_l2": lambda ctx, attributes: [KNNInversion(ctx, "l2")],
    "eia_knn_cosine": lambda ctx, attributes: [KNNInversion(ctx, "cosine")],
    "eia_mlp": lambda ctx, attributes: [LearnedInversion(ctx, "mlp")],
    "eia_transformer": lambda ctx, attributes: [LearnedInversion(ctx, "transformer")],
    "eia_transformer_large": lambda ctx, attributes: [LearnedInversion(ctx, "transformer_large")],
    "eia_opt": lambda ctx, attributes: [OptimisationInversion(ctx)],
    "eia_bisr": lambda ctx, attributes: [BiSRInversion(ctx)],
    "eia_selftrain": lambda ctx, attributes: [SelfTrainingInversion(ctx)],
    "aia_probe": lambda ctx, attributes: [AttributeProbe(ctx, a) for a in attributes],
    "aia_keyword": lambda ctx, attributes: [KeywordInference(ctx)],
    "aia_label": lambda ctx, attributes: [AttributeProbe(ctx, "label")],
    "gm_label": gradient_matching.build,
}

# Every attack class: :func:`privtune_ray.checks.check_config` checks each one's keys (its ``Params``).
ATTACK_CLASSES: tuple[type[Attack], ...] = (
    KNNInversion,
    LearnedInversion,
    OptimisationInversion,
    BiSRInversion,
    SelfTrainingInversion,
    AttributeProbe,
    KeywordInference,
    GradientMatchingLabels,
)


__all__ = ["ATTACKS", "ATTACK_CLASSES", "GRADIENT_ATTACKS"]
