"""EW-Tune's DP-SGD plan, torch-free: σ calibrated for a target ε over T Poisson steps of rate q, and ε (nats) by
each accountant (the PLD ε is the guarantee, the Edgeworth ε EW-Tune's estimate, RDP a looser bound).

Apart from :mod:`privtune_ray.designs.ewtune` (which trains with Opacus), so that ``privtune-ray account`` and the
config checks plan a run without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..accounting import (
    EdgeworthBreakdown,
    SigmaOutOfRange,
    calibrate_sigma,
    calibrate_sigma_pld,
    create_accountant,
)
from ..attacks.params import aux_from_training, check_aux_fits
from ..config import Config
from ..errors import ConfigError
from .params import EWTuneParams

UNDERSTATED_TOLERANCE = 0.10  # a plan whose PLD ε exceeds the target by more than this fraction stops (see plan_dp_sgd)


@dataclass
class DPPlan:
    """The DP-SGD schedule: q (Poisson sample rate), T (steps), σ (noise multiplier), C, and ε per accountant (nats;
    ``epsilon_edgeworth`` is NaN where the expansion breaks down). ``calibrated_with``: the accountant σ was
    calibrated by (edgeworth | pld)."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    clip_norm: float
    delta: float
    target_epsilon: float
    epsilon_edgeworth: float
    epsilon_pld: float
    epsilon_rdp: float
    edgeworth_order: int = 2
    calibrated_with: str = "edgeworth"

    def to_dict(self) -> dict:
        """The fields, plus the guarantee: ``epsilon`` is the PLD ε (a bound), ``epsilon_edgeworth_estimate`` EW-Tune's
        Edgeworth ε beside it (an approximation)."""
        return {
            **asdict(self),
            "epsilon": self.epsilon_pld,
            "guarantee": f"({self.epsilon_pld:.4g}, {self.delta:g})-DP (PLD bound, dp-accounting)",
            "epsilon_edgeworth_estimate": self.epsilon_edgeworth,
            "estimate": f"EW-Tune's Edgeworth order-{self.edgeworth_order} approximation, not a bound",
            "edgeworth_to_pld": self.epsilon_edgeworth / self.epsilon_pld if self.epsilon_pld > 0 else float("nan"),
            "warning": self.edgeworth_warning(),
        }

    def describe(self) -> str:
        """One log line: the schedule, σ, and ε by each accountant (the PLD ε is the guarantee)."""
        edgeworth = "breaks down" if math.isnan(self.epsilon_edgeworth) else f"{self.epsilon_edgeworth:.3f}"
        return (
            f"q = {self.sample_rate:.5f}, T = {self.steps}, sigma = {self.noise_multiplier:.4f} (calibrated with "
            f"{self.calibrated_with}), C = {self.clip_norm:g}: epsilon {self.epsilon_pld:.3f} (PLD, the guarantee), "
            f"{edgeworth} (Edgeworth, EW-Tune's estimate), {self.epsilon_rdp:.3f} (RDP) at delta {self.delta:g}"
        )

    def edgeworth_warning(self, tolerance: float = UNDERSTATED_TOLERANCE) -> str | None:
        """A line wherever the Edgeworth ε (an approximation) is below the PLD ε (a bound) by more than ``tolerance``
        (a fraction), stating their ratio, or where the expansion breaks down; None where they agree."""
        where = f"q = {self.sample_rate:.3g}, T = {self.steps}, sigma = {self.noise_multiplier:.4g}"
        if math.isnan(self.epsilon_edgeworth):
            return (
                f"warning: the Edgeworth expansion breaks down for this schedule ({where}) and gives no epsilon; the "
                f"guarantee is the PLD epsilon {self.epsilon_pld:.3f}"
            )
        if self.epsilon_edgeworth >= self.epsilon_pld * (1 - tolerance):
            return None
        fix = " (design.calibrate_with=pld calibrates to the bound)" if self.calibrated_with == "edgeworth" else ""
        return (
            f"warning: the Edgeworth epsilon {self.epsilon_edgeworth:.3f} is {self.epsilon_edgeworth / self.epsilon_pld:.2f}"
            f" x the PLD epsilon {self.epsilon_pld:.3f} for this schedule ({where}): the Edgeworth expansion understates "
            f"the privacy loss; the guarantee is the PLD epsilon{fix}"
        )


def accounted_epsilon(name: str, delta: float, q: float, sigma: float, steps: int, **params) -> float:
    """ε(δ) (nats) of ``steps`` Poisson-subsampled Gaussian steps (rate q, noise multiplier σ) by the accountant
    ``name`` of the registry (``accounting.create_accountant``; ``params`` to its class)."""
    accountant = create_accountant(name, **params)
    accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    return accountant.get_epsilon(delta)


def _edgeworth_or_nan(order: int, delta: float, q: float, sigma: float, steps: int) -> float:
    """The Edgeworth ε (nats), NaN where the expansion breaks down (claims (0, δ)-DP)."""
    try:
        return accounted_epsilon("edgeworth", delta, q, sigma, steps, order=order)
    except EdgeworthBreakdown:
        return float("nan")


def _out_of_range(design: EWTuneParams, exc: SigmaOutOfRange, q: float, steps: int) -> str:
    """The calibration's :class:`SigmaOutOfRange` in config keys: one line naming the fix."""
    where = f"q = {q:.3g}, {steps} steps, delta = {design.delta:g}"
    t, accountant = design.target_epsilon, {"edgeworth": "Edgeworth", "pld": "PLD"}[design.calibrate_with]
    if exc.reason == "unreachable":
        return (
            f"design.target_epsilon={t:g} is unreachable with a noise multiplier up to design.max_noise_multiplier="
            f"{design.max_noise_multiplier:g} ({where}): raise design.target_epsilon or design.max_noise_multiplier, "
            f"or train fewer steps"
        )
    if exc.reason == "met_at_lo":
        return (
            f"design.target_epsilon={t:g} is met already at sigma = {exc.sigma:g}, the smallest noise multiplier "
            f"searched ({accountant} epsilon {exc.epsilon:.4g}; {where}): lower design.target_epsilon"
            + (", or set design.calibrate_with=pld" if design.calibrate_with == "edgeworth" else "")
        )
    side = "at" if exc.sigma == design.max_noise_multiplier else "below"
    return (
        f"design.target_epsilon={t:g} cannot be calibrated by the Edgeworth expansion, which breaks down {side} "
        f"sigma = {exc.sigma:.4g} (q·T = {q * steps:.3g} expected releases per sample; {where}): set "
        f"design.calibrate_with=pld"
    )


def plan_dp_sgd(design: EWTuneParams, sample_rate: float, steps: int) -> DPPlan:
    """Calibrate σ for ``design.target_epsilon`` over ``steps`` Poisson steps of rate q = ``sample_rate``
    (``train``: batch_size / N; ``simulate``: the Poisson round's :meth:`Population.dp_sample_rate`).

    σ is searched in [0.3, ``design.max_noise_multiplier``] by ``design.calibrate_with``: ``edgeworth`` (order
    ``design.edgeworth_order``) or ``pld``. The Edgeworth, PLD and RDP ε of the chosen σ are all reported. Raises one
    ConfigError naming the fix, before anything is written, when the calibration hits an end of its range or the
    expansion breaks down, or when the PLD ε exceeds the target by more than 10 % (Edgeworth at small q·T) and
    ``design.allow_understated_epsilon`` is false.
    """
    q = min(1.0, sample_rate)
    where = f"q = {q:.3g}, {steps} steps, delta = {design.delta:g}"
    sigma_range = (0.3, design.max_noise_multiplier)
    try:
        if design.calibrate_with == "pld":
            sigma = calibrate_sigma_pld(design.target_epsilon, design.delta, q, steps, sigma_range=sigma_range)
        else:
            sigma = calibrate_sigma(
                design.target_epsilon, design.delta, q, steps, order=design.edgeworth_order, sigma_range=sigma_range
            )
    except SigmaOutOfRange as exc:
        raise ConfigError(_out_of_range(design, exc, q, steps)) from None
    plan = DPPlan(
        q,
        steps,
        sigma,
        design.clip_norm,
        design.delta,
        design.target_epsilon,
        _edgeworth_or_nan(design.edgeworth_order, design.delta, q, sigma, steps),
        accounted_epsilon("pld", design.delta, q, sigma, steps),
        accounted_epsilon("rdp", design.delta, q, sigma, steps),
        design.edgeworth_order,
        design.calibrate_with,
    )
    if plan.epsilon_pld > design.target_epsilon * (1 + UNDERSTATED_TOLERANCE) and not design.allow_understated_epsilon:
        raise ConfigError(
            f"design.target_epsilon={design.target_epsilon:g} is understated: the Edgeworth-calibrated sigma = {sigma:.4f} "
            f"gives PLD epsilon {plan.epsilon_pld:.3f} (the bound), more than {UNDERSTATED_TOLERANCE:.0%} above it "
            f"({where}): set design.calibrate_with=pld, or design.allow_understated_epsilon=true to run anyway, "
            f"or lower design.target_epsilon"
        )
    return plan


def spent_epsilon(plan: DPPlan, steps_done: int) -> dict[str, float]:
    """ε (nats) spent after ``steps_done`` of the plan's steps, per accountant (0 before the first step). The
    Edgeworth ε is NaN where the expansion breaks down (early steps at small q·T claim (0, δ)-DP): a log, not a run
    stopper."""
    if steps_done == 0:
        return {"epsilon_edgeworth": 0.0, "epsilon_pld": 0.0, "epsilon_rdp": 0.0}
    q, sigma = plan.sample_rate, plan.noise_multiplier
    return {
        "epsilon_edgeworth": _edgeworth_or_nan(plan.edgeworth_order, plan.delta, q, sigma, steps_done),
        "epsilon_pld": accounted_epsilon("pld", plan.delta, q, sigma, steps_done),
        "epsilon_rdp": accounted_epsilon("rdp", plan.delta, q, sigma, steps_done),
    }


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson batches per epoch: 1/q rounded (each sample is expected once per epoch)."""
    return max(1, round(1 / sample_rate))


def check_dp_dataset(design: EWTuneParams, n_samples: int, logical_batch: int, batch_key: str) -> None:
    """DP-SGD against the N training samples: δ < 1/N (at δ ≥ 1/N publishing one sample whole is (0, δ)-DP), and
    an expected logical batch (``batch_key``) of at most N (q ≤ 1). One ConfigError naming the fix otherwise."""
    delta = design.delta
    if delta >= 1 / n_samples:
        raise ConfigError(
            f"design.delta={delta:g} is at least 1/N = {1 / n_samples:.3g} (N = {n_samples} training samples), "
            f"where releasing one sample whole meets the guarantee: set design.delta below 1/N, e.g. "
            f"{10 ** math.floor(math.log10(0.1 / n_samples)):g}"
        )
    if logical_batch > n_samples:
        raise ConfigError(
            f"{batch_key} = {logical_batch} (DP-SGD's expected logical batch) exceeds the {n_samples} training "
            f"samples (sample rate q > 1): lower it to at most {n_samples}"
        )


def train_dp_plan(cfg: Config, n_train: int, max_steps: int | None) -> tuple[int, int, DPPlan]:
    """``train``'s DP-SGD schedule over ``n_train`` samples: (Poisson batches per epoch 1/q, total steps T =
    train.epochs / q capped by ``max_steps``, the plan at q = train.batch_size / N). Checks the dataset first."""
    params = EWTuneParams.of(cfg.design)
    check_dp_dataset(params, n_train, cfg.train.batch_size, "train.batch_size")
    q = cfg.train.batch_size / n_train
    per_epoch = steps_per_epoch(min(1.0, q))
    total = cfg.train.epochs * per_epoch
    total = total if max_steps is None else min(total, max_steps)
    return per_epoch, total, plan_dp_sgd(params, q, total)


def devices_train_size(cfg: Config) -> int:
    """N: the training samples the devices hold in a ``train`` run of ``cfg`` (the training split, less the
    attacker's carve-out when ``attack.enabled`` and its auxiliary sentences come from that split), as DP-SGD's
    sample rate counts them. Counted from the rows: tokenising drops none."""
    from ..data.registry import load_split

    data = cfg.data
    n = len(
        load_split(
            data.dataset,
            data.train_split,
            data_dir=data.data_dir,
            hub_fallback=data.hub_fallback,
            max_samples=data.max_train_samples,
            seed=cfg.seed,
        )
    )
    if cfg.attack.enabled and aux_from_training(cfg):
        check_aux_fits(cfg.attack.aux_samples, n)
        n -= cfg.attack.aux_samples or 0  # (None, all of it, was refused above)
    return n


__all__ = [
    "DPPlan",
    "check_dp_dataset",
    "devices_train_size",
    "plan_dp_sgd",
    "spent_epsilon",
    "steps_per_epoch",
    "train_dp_plan",
]
