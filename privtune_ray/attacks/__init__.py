"""The cloud's attacks on what it receives (SPEC §3), behind one interface (``base.Attack``).

``ATTACKS`` maps a config name to a builder ``(ctx, attributes) -> list[Attack]``; ``aia_probe`` builds one
probe per private attribute. ``ctx`` is an :class:`AttackContext` for the attacks on the uploads, a
:class:`GradientContext` for those in ``GRADIENT_ATTACKS`` (they read the gradients GuardedTuning online returns,
``gradient_matching.build_gradient_matching``). ``rounds.AttackRounds`` runs the fitted attacks during training.

``params.py`` holds the attacks' names and keys (no torch: config checks read it); ``registry.py`` the attacks.
"""

from .params import ATTACK_PARAMS, GRADIENT_ATTACKS

__all__ = ["ATTACK_PARAMS", "GRADIENT_ATTACKS"]
