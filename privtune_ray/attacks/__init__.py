"""The cloud's attacks on the uploaded representations (SPEC §3), behind one interface (``base.Attack``).

``ATTACKS`` maps a config name to a builder ``(ctx, attributes) -> list[Attack]``; ``aia_probe`` builds one
probe per private attribute.
"""

from __future__ import annotations

from collections.abc import Callable

from .attribute_probe import AttributeProbe
from .base import Attack, AttackContext, AttributeAttack, InversionAttack
from .keyword_inference import KeywordInference
from .knn_inversion import KNNInversion
from .learned_inversion import LearnedInversion
from .observations import Observations, observe
from .optimisation_inversion import OptimisationInversion

ATTACKS: dict[str, Callable[[AttackContext, tuple[str, ...]], list[Attack]]] = {
    "eia_knn_l2": lambda ctx, attributes: [KNNInversion(ctx, "l2")],
    "eia_knn_cosine": lambda ctx, attributes: [KNNInversion(ctx, "cosine")],
    "eia_mlp": lambda ctx, attributes: [LearnedInversion(ctx, "mlp")],
    "eia_transformer": lambda ctx, attributes: [LearnedInversion(ctx, "transformer")],
    "eia_opt": lambda ctx, attributes: [OptimisationInversion(ctx)],
    "aia_probe": lambda ctx, attributes: [AttributeProbe(ctx, a) for a in attributes],
    "aia_keyword": lambda ctx, attributes: [KeywordInference(ctx)],
    "aia_label": lambda ctx, attributes: [AttributeProbe(ctx, "label")],
}

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttributeAttack", "InversionAttack", "Observations", "observe"]
