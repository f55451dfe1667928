"""The cloud's attacks on what it receives (SPEC §3), behind one interface (``base.Attack``).

``ATTACKS`` maps a config name to a builder ``(ctx, attributes) -> list[Attack]``; ``aia_probe`` builds one
probe per private attribute. ``ctx`` is an :class:`AttackContext` for the attacks on the uploads, a
:class:`GradientContext` for those in ``GRADIENT_ATTACKS`` (they read the gradients GuardedTuning online returns,
``gradient_matching.build_gradient_matching``). ``rounds.AttackRounds`` runs the fitted attacks during training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import gradient_matching
from .attribute_probe import AttributeProbe
from .base import Attack, AttackContext, AttributeAttack, InversionAttack
from .gradient_matching import GradientContext, GradientMatchingLabels
from .keyword_inference import KeywordInference
from .knn_inversion import KNNInversion
from .learned_inversion import LearnedInversion
from .observations import Observations, observe
from .optimisation_inversion import OptimisationInversion

ATTACKS: dict[str, Callable[[Any, tuple[str, ...]], list[Attack]]] = {
    "eia_knn_l2": lambda ctx, attributes: [KNNInversion(ctx, "l2")],
    "eia_knn_cosine": lambda ctx, attributes: [KNNInversion(ctx, "cosine")],
    "eia_mlp": lambda ctx, attributes: [LearnedInversion(ctx, "mlp")],
    "eia_transformer": lambda ctx, attributes: [LearnedInversion(ctx, "transformer")],
    "eia_opt": lambda ctx, attributes: [OptimisationInversion(ctx)],
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
    AttributeProbe,
    KeywordInference,
    GradientMatchingLabels,
)

# Attacks on the gradients a device returns (GradientContext), not on its uploads: the suite leaves them out.
GRADIENT_ATTACKS = frozenset({gradient_matching.NAME})

__all__ = [
    "ATTACKS",
    "ATTACK_CLASSES",
    "GRADIENT_ATTACKS",
    "Attack",
    "AttackContext",
    "AttributeAttack",
    "GradientContext",
    "GradientMatchingLabels",
    "InversionAttack",
    "Observations",
    "observe",
]
