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

import time
import warnings

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config
from ..errors import ConfigError
from ..message import Message
from ..simulation.protocol import StepResult
from ..training.server import TopServer, sample_losses
from .base import Design, RoundContext
from .dp_plan import DPPlan, check_dp_dataset, plan_dp_sgd, spent_epsilon, train_dp_plan
from .params import EWTuneParams
from .split import SplitDesign


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

    def accumulate_samples(self, msg: Message) -> torch.Tensor:
        """Per-sample gradients of the batch's loss, each clipped to C and added to the round's sum; returns the
        per-sample losses [B] (nats)."""
        start = time.perf_counter()
        self.top.train()
        losses = sample_losses(self._logits(msg), msg.labels.to(self.device))
        with warnings.catch_warnings():  # h needs no gradient: Opacus' hooks fire on module outputs, as intended
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            (losses.sum() / msg.batch_size).backward()
        for p in self.trainable():  # blocks a deeper device's h skips: a zero per-sample gradient
            if getattr(p, "grad_sample", None) is None:
                p.grad_sample = torch.zeros((msg.batch_size, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
        self.dp_optimizer.signal_skip_step(do_skip=True)  # clip this message's per-sample gradients into the sum
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # drops grad_sample, keeps the clipped sum of a skipped step
        self.compute_s += time.perf_counter() - start
        return losses.detach().cpu()

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
    packs_uploads = True  # per-sample clipping: a piece of many messages gives the same clipped sum as each alone
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
        """δ < 1/N and an expected logical batch of at most N (:func:`~.dp_plan.check_dp_dataset`)."""
        check_dp_dataset(self.params, n_samples, logical_batch, batch_key)

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
        """1/q Poisson batches per epoch; σ calibrated for the whole run (:func:`~.dp_plan.train_dp_plan`)."""
        per_epoch, total, self.plan = train_dp_plan(self.cfg, n_train, max_steps)
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


__all__ = ["DPTopServer", "EWTuneDesign", "dp_top", "poisson_batches"]
