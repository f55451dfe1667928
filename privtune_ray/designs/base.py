"""The interface every training design implements (after Flower's ``Strategy``).

A design decides what a device computes in a round, what the cloud computes with what it receives, which
channels carry it, and what its records and summary add. The engine (``drivers/engine.py``, for ``train`` and
``simulate`` alike) calls only this interface; the transport
(``simulation/backend.py``) and the actor pool (``simulation/pool.py``) know nothing of designs.

Where each method runs:

* coordinator: :meth:`Design.validate`, :meth:`Design.prepare`, :meth:`Design.begin_round`,
  :meth:`Design.cloud_round`, :meth:`Design.evaluate`, :meth:`Design.summary`, the checkpoint state;
* a device worker (``simulation/worker.py``): :meth:`Design.device_step` with the worker as ``host``;
* a top replica (``simulation/replica.py``): :meth:`Design.build_cloud`;
* ``train`` (the engine's one device): :meth:`Design.train_plan` and :meth:`Design.train_batches` set its rounds.

A design instance is built from the config on each of them, so it holds only what the config and
:meth:`Design.prepare` decide (e.g. EW-Tune's DP plan), never trained weights: the coordinator keeps those
in the object :meth:`Design.cloud_state` returns.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..data.batching import TokenizedSplit, batch_indices
from ..errors import ConfigError
from ..simulation.protocol import DeviceReport, DeviceResult, DeviceTask, EvalResult, StepResult, TopResult
from .params import DesignParams

if TYPE_CHECKING:  # annotations only: the engine imports the designs, not the other way round
    from ..config import Config
    from ..simulation.clock import DeviceTiming
    from ..simulation.pool import ActorPool
    from ..simulation.population import Population, RoundPlan


@dataclass
class RoundOutcome:
    """What the cloud's side of a round produced, for the clock and the records.

    ``timings``: one per selected device (dropped ones included); ``bytes_down``: per device (bytes);
    ``channels``: bytes per channel per device (``None``: the upload is the one ``act_up`` channel);
    ``extra_compute_s``: device seconds after its task (GuardedTuning's later phases); ``top``: the replicas'
    results of the messages trained on; ``step``: the synchronous step's measured seconds and lr.
    """

    timings: list[DeviceTiming]
    bytes_down: dict[int, int]
    top: list[TopResult]
    step: StepResult
    deadline_s: float | None
    channels: dict[int, dict[str, int]] | None = None
    extra_compute_s: dict[int, float] = field(default_factory=dict)
    returned: dict[int, tuple[bytes, bytes]] = field(
        default_factory=dict
    )  # device -> (A2, ∂ℓ/∂A2) it was sent/sent back
    # device -> its uploaded adapter update by parameter name (GuardedTuning's adapter_up): the update attack's target
    updates: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RoundContext:
    """What a design's :meth:`Design.cloud_round` may use from the coordinator."""

    cfg: Config
    pool: ActorPool
    plan: RoundPlan
    results: dict[int, DeviceResult]  # device -> its task's report and upload
    sim_time_s: float  # the simulated clock at the round's start
    download_bytes: Any  # (round, planned device) -> bytes it downloads before its work (instruction, bottom)
    observe: Any  # (on-time devices, their upload handles) -> None: hands the attack suite what it sees
    cloud: Any = None  # the design's coordinator state (:meth:`Design.cloud_state`)
    observe_updates: bool = False  # the update attack reads the round's adapter updates (RoundOutcome.updates)


class Design(ABC):
    """One training design; subclasses are registered by name in ``designs/__init__.py``."""

    name: ClassVar[str]
    commands: ClassVar[tuple[str, ...]] = ("train", "simulate", "attack")  # the CLI commands that run it
    channels: ClassVar[tuple[str, ...]] = ("act_up",)  # what crosses, per channel, recorded in devices.csv
    poisson: ClassVar[bool] = False  # rounds are Poisson samples of the data (DP-SGD)
    packs_uploads: ClassVar[bool] = False  # the cloud batches a round's uploads (train.physical_batch_size samples)
    uploads_per_sample_tensor: ClassVar[bool] = True  # a per-sample tensor leaves the device: the attacks' target
    returns_gradients: ClassVar[bool] = False  # the cloud sends per-sample gradients back: a label attack's target
    # a device uploads the update of a block that reads the bottom's output (GuardedTuning's ∇A_b): eia_update's target
    uploads_bottom_updates: ClassVar[bool] = False
    # its cloud top takes the cloud's own levers (train.denoiser, train.head_pooling: training/server.add_cloud_levers)
    cloud_levers: ClassVar[bool] = False
    Params: ClassVar[type[DesignParams]] = DesignParams  # its keys of the ``design`` section and their checks

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.params = self.Params.of(cfg.design)

    # ------------------------------------------------------------------ configuration

    def check(self) -> None:
        """Refuse, in one line, a config this design cannot run under any command (its ``Params.check``, which
        ``checks.check_config`` runs without importing torch)."""
        self.params.check(self.cfg, self.name)

    def validate(self, command: str) -> None:
        """:meth:`check`, then refuse a ``command`` (train | simulate | attack) this design does not run under."""
        self.check()
        if command not in self.commands:
            raise ConfigError(
                f"design.name={self.name} runs under `privtune-ray {' / '.join(self.commands)}`, not `{command}`"
            )

    def check_depth(self, model_depth: int) -> None:
        """Refuse a split this design cannot make in a model of ``model_depth`` blocks (m ∈ 0..L), in one line."""
        from ..models.split import check_split_depth

        check_split_depth(self.cfg.model.split_depth, model_depth, self.cfg.model.name)

    def check_tiers(self, footprint, tiers, model_depth: int) -> None:
        """Refuse device tiers whose memory cannot hold what this design puts on a device (split: none; a tier
        with less memory holds a shallower bottom, ``simulation/tiers.py``)."""

    def attack_depth(self, model_depth: int, device_depth: int) -> int:
        """Blocks behind what a device at ``device_depth`` (its m_i) uploads: the attack suite's bottom for it."""
        return device_depth

    def held_blocks(self, cloud: Any) -> dict[int, dict] | None:
        """Blocks behind the upload that the cloud holds trained, by block index (their state dicts): the adaptive
        attacker fits through them, afresh each attack round. ``None``: devices run the pretrained weights."""
        return None

    def held_top(self, cloud: Any) -> Any:
        """The device's top part after the cloud's, as the cloud holds it (GuardedTuning: the round's A_t, whose
        gradients it aggregates): a gradient attack differentiates through it. ``None``: the cloud holds none."""
        return None

    # ------------------------------------------------------------------ simulate: coordinator side

    def prepare(self, population: Population) -> None:
        """After the population is drawn (before anything is written): settle what the run needs (e.g. DP plan)."""

    def cloud_state(self, task_model) -> Any:
        """The coordinator-held trainable state beside the replicas (``None``: the replicas hold everything)."""
        return None

    def download_bytes(self, cloud: Any, first_time: bool) -> int:
        """Bytes a device downloads each round beyond the instruction and its bottom (e.g. adapters)."""
        return 0

    def begin_round(self, pool: ActorPool, cloud: Any, round_: int) -> None:
        """Before a round's device tasks run (e.g. broadcast the round's adapters)."""

    @abstractmethod
    def cloud_round(self, ctx: RoundContext) -> RoundOutcome:
        """The cloud's side of a round whose device tasks are in; steps the trainable parts once."""

    @abstractmethod
    def evaluate(self, pool: ActorPool, cloud: Any, depth: int, batches: list[np.ndarray], seed: int) -> EvalResult:
        """Correct predictions, summed loss (nats) and samples of the eval split from a device of ``depth``."""

    def round_fields(self, rounds_done: int) -> dict[str, float]:
        """Extra columns of a ``rounds.csv`` row (cumulative)."""
        return {}

    def summary(self, cloud: Any, rounds_done: int, population: Population | None = None) -> dict[str, Any]:
        """Extra fields of ``summary.json``."""
        return {}

    def defence(self) -> str:
        """What protects the uploads, as tables label it: the design, with the mechanism where there is one."""
        mechanism = self.cfg.mechanism.name
        return self.name if mechanism == "none" else f"{self.name}+{mechanism}"

    def log_lines(self) -> list[str]:
        """What the run prints about the design before training."""
        return []

    # ------------------------------------------------------------------ simulate: worker and replica side

    @abstractmethod
    def device_step(self, host, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """On a device worker (``host``): act as ``task.device`` in ``task.round``: its report and upload."""

    @abstractmethod
    def build_cloud(self, host, task_model):
        """On a top replica (``host``): the cloud's trainable server for this design."""

    # ------------------------------------------------------------------ train: the engine's one device

    def train_plan(self, n_train: int, batches_per_epoch: int, max_steps: int | None) -> tuple[int, int]:
        """(batches per epoch, total steps) of ``train`` for a split of ``n_train`` samples."""
        total = self.cfg.train.epochs * batches_per_epoch
        return batches_per_epoch, total if max_steps is None else min(total, max_steps)

    def train_batches(self, split: TokenizedSplit, batches_per_epoch: int, seed: int) -> list[np.ndarray]:
        """``train``'s epoch of batches: shuffled (length-bucketed when ``train.length_bucketing``)."""
        train = self.cfg.train
        return batch_indices(split.lengths, train.batch_size, shuffle=True, bucketing=train.length_bucketing, seed=seed)


def no_step() -> StepResult:
    """The step of a round in which nothing was trained."""
    return StepResult(0.0, math.nan)
