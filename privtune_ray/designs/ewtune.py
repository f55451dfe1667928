"""EW-Tune: DP-SGD on the cloud's top model, its noise calibrated by the Edgeworth accountant (or the PLD bound).

Each step takes a Poisson sample of the training set (Opacus' ``DPDataLoader``: every sample joins with
probability q = batch_size / N), computes per-sample gradients of the top's trainable parameters (Opacus'
``GradSampleModule``), clips each to L2 norm C, sums them, adds N(0, σ²C²) and divides by the expected batch
size (Opacus' ``DPOptimizer``). σ is the smallest value whose ε(δ) after T steps is at most the target, by the
Edgeworth accountant (``design.calibrate_with: edgeworth``, EW-Tune's :func:`~privtune_ray.accounting.calibrate_sigma`)
or by dp-accounting's PLD (``pld``, :func:`~privtune_ray.accounting.calibrate_sigma_pld`). The guarantee is always
the PLD ε (a bound); the Edgeworth ε is EW-Tune's estimate beside it (an approximation, which understates ε at
small q·T: see :mod:`privtune_ray.accounting.edgeworth`), and a plan whose PLD ε exceeds the target by more than
10 % stops before training unless ``design.allow_understated_epsilon``. The ε spent so far is recorded as training
goes (a cumulative account, not per round). The guarantee covers the trained top model; what devices upload is
protected only by the mechanism, if any.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from ..accounting import (
    EdgeworthAccountant,
    EdgeworthBreakdown,
    SigmaOutOfRange,
    calibrate_sigma,
    calibrate_sigma_pld,
    pld_epsilon,
    rdp_epsilon,
)
from ..config import Config
from ..errors import ConfigError
from ..message import Message
from ..simulation.protocol import StepResult
from ..training.server import TopServer, summed_loss
from .base import Design, RoundContext
from .params import EWTuneParams
from .split import SplitDesign

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


def _edgeworth_or_nan(order: int, delta: float, q: float, sigma: float, steps: int) -> float:
    """The Edgeworth ε (nats), NaN where the expansion breaks down (claims (0, δ)-DP)."""
    accountant = EdgeworthAccountant(order=order)
    accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    try:
        return accountant.get_epsilon(delta)
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
        pld_epsilon(design.delta, q, sigma, steps),
        rdp_epsilon(design.delta, q, sigma, steps),
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
        "epsilon_pld": pld_epsilon(plan.delta, q, sigma, steps_done),
        "epsilon_rdp": rdp_epsilon(plan.delta, q, sigma, steps_done),
    }


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int]:
        return (i,)  # Opacus' loader expects a tuple per item


def poisson_batches(n_samples: int, batch_size: int, n_batches: int, seed: int) -> list[np.ndarray]:
    """``n_batches`` Poisson samples of ``range(n_samples)`` from Opacus' DPDataLoader (rate batch_size / n,
    so sizes vary and may be 0); the same seed gives the same batches (a resumed run redraws them)."""
    generator = torch.Generator().manual_seed(seed)
    loader = DPDataLoader.from_data_loader(DataLoader(_Indices(n_samples), batch_size=batch_size), generator=generator)
    batches: list[np.ndarray] = []
    while len(batches) < n_batches:
        for (idx,) in loader:
            batches.append(np.asarray(idx, dtype=np.int64).reshape(-1))
            if len(batches) == n_batches:
                break
    return batches


def dp_top(top: nn.Module) -> GradSampleModule:
    """The top with per-sample gradient hooks; modules Opacus has no hook for fall back to functorch."""
    try:
        return GradSampleModule(top, loss_reduction="mean")
    except NotImplementedError:
        return GradSampleModule(top, loss_reduction="mean", force_functorch=True)


class DPTopServer(TopServer):
    """:class:`TopServer` doing DP-SGD: one Poisson batch per step, per-sample clipping, noise, the AdamW step.

    ``accumulate`` backpropagates a message's batch-mean loss through the GradSampleModule (per-sample
    gradients land in ``p.grad_sample``), then clips them and adds them to the DPOptimizer's running sum (a
    skipped step), so a step may span many messages (a simulation round: every device's share of the Poisson
    batch). ``step`` adds N(0, σ²C²) to the sum once and divides by the expected batch size, then takes the
    AdamW step. An empty Poisson batch still takes a step of pure noise.
    """

    def __init__(
        self,
        top: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        plan: DPPlan,
        expected_batch_size: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        super().__init__(dp_top(top), optimizer, scheduler, device=device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.clip_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        self.optimizer = self.dp_optimizer  # TopServer's step and checkpoint go through it
        self.plan = plan

    def accumulate(self, msg: Message) -> float:
        """Per-sample gradients of the batch's loss; returns the summed loss (nats)."""
        start = time.perf_counter()
        self.top.train()
        loss_sum = summed_loss(self._logits(msg), msg.labels.to(self.device))
        with warnings.catch_warnings():  # h needs no gradient: Opacus' hooks fire on module outputs, as intended
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            (loss_sum / msg.batch_size).backward()
        for p in self.trainable():  # blocks a deeper device's h skips: a zero per-sample gradient
            if getattr(p, "grad_sample", None) is None:
                p.grad_sample = torch.zeros((msg.batch_size, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
        self.dp_optimizer.signal_skip_step(do_skip=True)  # clip this message's per-sample gradients into the sum
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # drops grad_sample, keeps the clipped sum of a skipped step
        self.compute_s += time.perf_counter() - start
        return float(loss_sum.detach())

    def step(self, n_samples: int) -> None:
        """Noise on the clipped sum of the step's messages, ÷ the expected batch size, AdamW (``n_samples``
        is not used: DP-SGD divides by the expected, not the realised, batch size)."""
        start = time.perf_counter()
        for p in self.trainable():  # every message is already in the sum: the last (real) step adds nothing
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.compute_s += time.perf_counter() - start


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson batches per epoch: 1/q rounded (each sample is expected once per epoch)."""
    return max(1, round(1 / sample_rate))


class EWTuneDesign(SplitDesign):
    """``design: ewtune``: split learning whose top trains by DP-SGD; the mechanism (if any) still protects h.

    ``simulate``: one DP-SGD step per Poisson round (every sample joins with the public rate q =
    :meth:`Population.dp_sample_rate`), σ calibrated for ``simulation.rounds`` steps at q, on one top replica (the
    noise is added once, to the round's clipped sum) and without a deadline (which messages are late depends on
    the data's compute time, so a deadline would make inclusion data-dependent). ``train``: Poisson batches of
    expected size ``train.batch_size``, 1/q per epoch.
    """

    name = "ewtune"
    Params = EWTuneParams
    poisson = True
    defence = Design.defence  # labelled by the design (``ewtune``, ``ewtune+dchi``), not by the mechanism alone

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.plan: DPPlan | None = None
        self.expected_batch_size: float = float(cfg.train.batch_size)

    def validate(self, command: str) -> None:
        super().validate(command)
        sim = self.cfg.simulation
        if command != "simulate":
            return
        if sim.top_replicas != 1:
            raise ConfigError(
                f"design.name=ewtune adds the DP noise once per round on one top replica: set "
                f"simulation.top_replicas=1 (got {sim.top_replicas})"
            )
        if sim.deadline_s is not None:
            raise ConfigError(
                "design.name=ewtune needs every sampled message in its round: set simulation.deadline_s=null "
                "(a deadline drops messages by their compute time, which depends on the data)"
            )

    def check_dataset(self, n_samples: int, logical_batch: int, batch_key: str) -> None:
        """DP-SGD against the N training samples: δ < 1/N (at δ ≥ 1/N publishing one sample whole is
        (0, δ)-DP), and an expected logical batch (``batch_key``) of at most N (q ≤ 1)."""
        delta = self.params.delta
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

    def prepare(self, population) -> None:
        sim = self.cfg.simulation
        self.check_dataset(
            population.n_samples,
            sim.devices_per_round * sim.local_batch_size,
            "simulation.devices_per_round x simulation.local_batch_size",
        )
        self.expected_batch_size = population.expected_batch_size()
        self.plan = plan_dp_sgd(self.params, population.dp_sample_rate(), steps=sim.rounds)

    def train_plan(self, n_train: int, batches_per_epoch: int, max_steps: int | None) -> tuple[int, int]:
        """1/q Poisson batches per epoch; σ calibrated for the whole run."""
        self.check_dataset(n_train, self.cfg.train.batch_size, "train.batch_size")
        q = self.cfg.train.batch_size / n_train
        per_epoch, total = super().train_plan(n_train, steps_per_epoch(min(1.0, q)), max_steps)
        self.plan = plan_dp_sgd(self.params, q, total)
        return per_epoch, total

    def train_batches(self, split, batches_per_epoch: int, seed: int) -> list[np.ndarray]:
        return poisson_batches(len(split), self.cfg.train.batch_size, batches_per_epoch, seed=seed)

    def top_server(self, top, optimizer, scheduler, device) -> TopServer:
        assert self.plan is not None, "EWTuneDesign.prepare or train_plan sets the DP plan"
        expected = max(1, round(self.expected_batch_size))
        return DPTopServer(top, optimizer, scheduler, self.plan, expected, device=device, seed=self.cfg.seed)

    def empty_round(self, ctx: RoundContext) -> StepResult:
        """An empty Poisson round: DP-SGD still takes its (noise-only) step."""
        return ctx.pool.step(0)

    def round_fields(self, rounds_done: int) -> dict[str, float]:
        return spent_epsilon(self.plan, rounds_done) if self.plan else {}

    def summary(self, cloud, rounds_done: int, population=None) -> dict:
        if self.plan is None:
            return {}
        spent = spent_epsilon(self.plan, rounds_done)
        return {"dp_sgd": {**self.plan.to_dict(), "expected_batch_size": self.expected_batch_size, "spent": spent}}

    def log_lines(self) -> list[str]:
        if self.plan is None:
            return []
        warning = self.plan.edgeworth_warning()
        return [f"EW-Tune DP-SGD: {self.plan.describe()}"] + ([warning] if warning else [])


__all__ = [
    "DPPlan",
    "DPTopServer",
    "EWTuneDesign",
    "dp_top",
    "EWTuneParams",
    "plan_dp_sgd",
    "poisson_batches",
    "spent_epsilon",
    "steps_per_epoch",
]
