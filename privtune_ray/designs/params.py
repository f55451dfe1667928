"""The designs' keys of the ``design`` config section, and the checks of a design against the rest of a config:
one ``Params`` dataclass per design (``DesignParams`` for a design without keys of its own), and ``DESIGN_PARAMS``,
each design's name to its dataclass.

This module imports no torch, so that ``checks.check_config`` answers in about a second; the designs
themselves (``registry.DESIGNS``) use the same dataclasses (``tests/test_config.py`` checks that the registries
agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..attacks.params import GRADIENT_ATTACKS
from ..config import VariantParams, require
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class DesignParams(VariantParams):
    """A design's own keys of the ``design`` section (beside ``name``, ``bits``), and :meth:`check`."""

    def check(self, cfg: Config, name: str) -> None:
        """Refuse, in one line, a config the design ``name`` cannot run under any command."""


@dataclass
class EWTuneParams(DesignParams):
    """EW-Tune's keys of the ``design`` section (defaults: ``config.DesignConfig``): the run spends ε =
    ``target_epsilon`` (nats) at δ = ``delta``; per-sample gradients are clipped to L2 norm C = ``clip_norm``; σ is
    searched in [0.3, ``max_noise_multiplier``] by ``calibrate_with`` (``edgeworth``, EW-Tune's estimate of order
    ``edgeworth_order``, or ``pld``, the bound); a plan whose PLD ε exceeds the target by more than 10 % stops
    unless ``allow_understated_epsilon``."""

    target_epsilon: float
    delta: float
    clip_norm: float
    max_noise_multiplier: float
    edgeworth_order: int
    calibrate_with: str
    allow_understated_epsilon: bool

    def validate(self, key: str) -> None:
        require(self.target_epsilon > 0, f"{key}.target_epsilon", "must be > 0")
        require(0 < self.delta < 1, f"{key}.delta", "must be in (0, 1), e.g. 1e-5")
        require(self.clip_norm > 0, f"{key}.clip_norm", "must be > 0")
        require(self.max_noise_multiplier > 0.3, f"{key}.max_noise_multiplier", "must be > 0.3")
        require(self.edgeworth_order in (1, 2), f"{key}.edgeworth_order", "must be 1 or 2")
        require(
            self.calibrate_with in ("edgeworth", "pld"),
            f"{key}.calibrate_with",
            f"must be edgeworth (EW-Tune's estimate) or pld (the dp-accounting bound), got {self.calibrate_with!r}",
        )

    def check(self, cfg: Config, name: str) -> None:
        if cfg.model.task == "causal-lm" and cfg.model.lm_head == "device":
            raise ConfigError(
                "design.name=ewtune clips per-sample gradients of a loss the cloud computes; with a causal "
                "LM that loss is on the device (model.lm_head=device): use design.name=split"
            )


@dataclass
class GuardedParams(DesignParams):
    """GuardedTuning's keys of the ``design`` section (defaults: ``config.DesignConfig``): a = ``adapter_layers``
    trainable blocks at each end of the device's side, α = ``dcor_weight`` of α·dCor(E(x), A1) (online, offline),
    and the fraction ``emulator_keep`` of the middle's blocks the offline emulator keeps.

    ``online``'s label defence on the gradient it uploads, g_i = ∂ℓ/∂A2_i of sample i (its real rows, flattened):
    g̃_i = g_i·min(1, C_g/‖g_i‖₂) + N(0, σ_g²C_g²·I), C_g = ``grad_up_clip_norm``, σ_g = ``grad_up_noise_multiplier``.
    A sample's label moves its clipped g_i by at most 2C_g, so each upload is a Gaussian mechanism of noise
    multiplier σ_g/2 on the label; R uploads compose to (ε, δ)-label-DP by the PLD accountant
    (``GuardedDesign.label_dp``, in ``summary.json``)."""

    adapter_layers: int
    dcor_weight: float
    emulator_keep: float
    grad_up_clip_norm: float | None
    grad_up_noise_multiplier: float
    delta: float

    def validate(self, key: str) -> None:
        require(self.adapter_layers >= 1, f"{key}.adapter_layers", "must be >= 1 block per adapter")
        require(self.dcor_weight >= 0, f"{key}.dcor_weight", "must be >= 0 (0: no decorrelation)")
        require(0 < self.emulator_keep <= 1, f"{key}.emulator_keep", "must be in (0, 1]")
        clip, sigma = self.grad_up_clip_norm, self.grad_up_noise_multiplier
        require(clip is None or clip > 0, f"{key}.grad_up_clip_norm", "must be > 0 (an L2 norm) or null (no clipping)")
        require(sigma >= 0, f"{key}.grad_up_noise_multiplier", "must be >= 0 (0: clip only)")
        require(
            sigma == 0 or clip is not None,
            f"{key}.grad_up_noise_multiplier",
            "needs design.grad_up_clip_norm: the noise is sigma x C, and the label-DP bound needs the clip",
        )

    def check(self, cfg: Config, name: str) -> None:
        """What GuardedTuning replaces or cannot combine with."""
        sim = cfg.simulation
        needs = {
            "mechanism.name": (
                cfg.mechanism.name == "none",
                "none (GuardedTuning protects A1 by dCor and quantisation)",
            ),
            "train.lora.enabled": (not cfg.train.lora.enabled, "false (the middle and adapters are fully fine-tuned)"),
            "simulation.prefetch": (not sim.prefetch, "false (a round's uploads depend on the adapters of that round)"),
            "simulation.deadline_s": (sim.deadline_s is None, "null (every exchange of a round is waited for)"),
        }
        for key, (ok, fix) in needs.items():
            if not ok:
                raise ConfigError(f"design.name={name} needs {key}={fix}")
        if name != "online" and (self.grad_up_clip_norm is not None or self.grad_up_noise_multiplier > 0):
            raise ConfigError(
                f"design.grad_up_clip_norm / grad_up_noise_multiplier protect the gradient online uploads; "
                f"design.name={name} uploads none: set them to null / 0 or use design.name=online"
            )

    @property
    def label_defence(self) -> bool:
        return self.grad_up_clip_norm is not None


DESIGN_PARAMS: dict[str, type[DesignParams]] = {
    "split": DesignParams,
    "ewtune": EWTuneParams,
    "online": GuardedParams,
    "gradfree": GuardedParams,
    "offline": GuardedParams,
}

# The designs whose cloud returns per-sample gradients to the device (the target of GRADIENT_ATTACKS).
RETURNS_GRADIENTS = frozenset({"online"})


def check_design(cfg: Config) -> None:
    """The design's name, the attacks it can face (an attack on returned gradients needs a design that returns
    them), its own keys' ranges and its combination with the rest of the config (``DesignParams.check``)."""
    name = cfg.design.name
    require(name in DESIGN_PARAMS, "design.name", f"unknown design {name!r}; choose one of {', '.join(DESIGN_PARAMS)}")
    for attack in cfg.attack.names:
        require(
            attack not in GRADIENT_ATTACKS or name in RETURNS_GRADIENTS,
            "attack.names",
            f"attack {attack!r} reads per-sample gradients, which design.name={name} does not exchange: "
            f"drop {attack!r} from attack.names or use design.name={' or '.join(sorted(RETURNS_GRADIENTS))}",
        )
    DESIGN_PARAMS[name].of(cfg.design).check(cfg, name)


__all__ = ["DESIGN_PARAMS", "RETURNS_GRADIENTS", "DesignParams", "EWTuneParams", "GuardedParams", "check_design"]
