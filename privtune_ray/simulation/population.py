"""The N virtual devices' state, held by the coordinator as arrays (so 10,000 devices cost little memory).

A device owns a partition of the training split and walks it in local epochs: local epoch e is a list of
batches, one per round in which the device takes part: its samples in the order permutation(seed, device, e),
``local_batch_size`` at a time (``lengths``: shuffled batches of samples of similar length), or the batches an
``epoch_batches`` function gives (``train``'s one device: the design's epoch, e.g. EW-Tune's Poisson batches; a
device whose batch is empty sits that round out, and its cursor moves on). A sample is therefore released once per
local epoch (``releases`` = e + 1 while it is sent).

Round planning is a pure function of (seed, round, state): which devices are online
(P = ``availability``), which K of them are selected, which drop out mid-round (P = ``dropout``), and the
bandwidth jitter of each transfer. A dropped device's samples stay unsent (its cursor does not move).

With ``poisson`` (DP-SGD, ``design: ewtune``) a round is a Poisson sample of the training samples instead,
drawn by Opacus' Poisson sampler: every sample of every online device joins independently with the public rate
q = devices_per_round · local_batch_size / N (:meth:`dp_sample_rate`; N = the training split), and a device
sends the samples it drew (one that drew none sits the round out). That is exactly the Poisson subsampling
the accountant composes at q. Availability and drop-outs act per device, independently of the data: the
round is then a mixture of the q-sampled mechanism and one that reveals nothing about a sample, whose
privacy loss is at most the q-sampled one's, so q stays a valid rate. (Sampling devices first and then
their samples would not be: the device's other gradients reveal whether it joined, so its samples would be
subsampled only at the second stage's rate.) ``releases`` then counts each sample's draws.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SimulationConfig
from ..data.batching import batch_indices
from .protocol import DeviceTask, derive_seed


def poisson_sample(n: int, rate: float, seed: int) -> np.ndarray:
    """Positions in range(n), each kept independently with probability ``rate``: one draw of Opacus' Poisson
    sampler (``UniformWithReplacementSampler``, what its ``DPDataLoader`` batches by), seeded."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=rate, steps=1, generator=torch.Generator().manual_seed(seed)
    )
    return np.asarray(next(iter(sampler)), dtype=np.int64).reshape(-1)


@dataclass
class PlannedDevice:
    device: int
    tier: int
    depth: int
    dropped: bool
    first_time: bool  # downloads the bottom weights this round
    up_jitter: float  # bandwidth multipliers of this round's transfers
    down_jitter: float
    task: DeviceTask | None  # None when it drops out


@dataclass
class RoundPlan:
    round: int
    devices: list[PlannedDevice]
    online: int  # devices online when the round started
    idle: list[int] = field(default_factory=list)  # selected devices whose batch this round is empty (sit it out)

    @property
    def tasks(self) -> list[DeviceTask]:
        return [d.task for d in self.devices if d.task is not None]


@dataclass
class Population:
    """Static: tier, depth and partition of each device. Mutable (checkpointed): cursors and counters."""

    sim: SimulationConfig
    seed: int
    tier: np.ndarray  # int16 [N]
    depth: np.ndarray  # int16 [N]
    parts: list[np.ndarray]  # sample indices of each device
    poisson: bool = False  # Poisson rounds for DP-SGD (see the module docstring)
    lengths: np.ndarray | None = None  # tokens per training sample: local batches by length (sim.length_bucketing)
    epoch_batches: Callable[[int, int], list[np.ndarray]] | None = None  # (device, epoch) -> its batches
    epoch: np.ndarray = field(init=False)  # int32 [N]: local epochs begun
    cursor: np.ndarray = field(init=False)  # int32 [N]: batches of the current local epoch already sent
    downloaded: np.ndarray = field(init=False)  # bool [N]: holds the bottom weights

    def __post_init__(self):
        n = len(self.parts)
        self.epoch = np.zeros(n, dtype=np.int32)
        self.cursor = np.zeros(n, dtype=np.int32)
        self.downloaded = np.zeros(n, dtype=bool)
        self._availability = np.array([t.availability for t in self.sim.tiers])[self.tier]
        self._dropout = np.array([t.dropout for t in self.sim.tiers])[self.tier]
        self._jitter = np.array([t.jitter for t in self.sim.tiers])[self.tier]
        self._n_samples = int(sum(len(p) for p in self.parts))
        self.draws = np.zeros(max((int(p.max()) + 1 for p in self.parts if len(p)), default=0), dtype=np.int32)
        self._batches: OrderedDict[tuple[int, int], list[np.ndarray]] = OrderedDict()  # (device, epoch) -> batches

    def __len__(self) -> int:
        return len(self.parts)

    # ------------------------------------------------------------------ planning

    def plan(self, round_: int) -> RoundPlan:
        """Who takes part in ``round_`` and what each sends; changes nothing (see :meth:`commit`)."""
        rng = np.random.default_rng([self.seed, round_, 0x0C0D])
        online = np.flatnonzero(rng.random(len(self)) < self._availability)
        drawn = None
        if self.poisson:
            drawn = {int(i): self._poisson_samples(round_, int(i)) for i in online}
            chosen = np.array([i for i, s in drawn.items() if len(s)], dtype=np.int64)
        else:
            k = min(self.sim.devices_per_round, len(online))
            chosen = np.sort(rng.choice(online, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)
        k = len(chosen)
        dropped = rng.random(k) < self._dropout[chosen]
        jitter = rng.lognormal(0.0, 1.0, size=(k, 2)) ** self._jitter[chosen, None]  # exp(σ·N(0,1))
        devices, idle = [], []
        for j, i in enumerate(chosen.tolist()):
            task = None if dropped[j] else self._task(round_, i, None if drawn is None else drawn[i])
            if task is not None and len(task.samples) == 0:  # an empty batch: nothing to send this round
                idle.append(i)
                continue
            devices.append(
                PlannedDevice(
                    device=i,
                    tier=int(self.tier[i]),
                    depth=int(self.depth[i]),
                    dropped=bool(dropped[j]),
                    first_time=not self.downloaded[i],
                    up_jitter=float(jitter[j, 0]),
                    down_jitter=float(jitter[j, 1]),
                    task=task,
                )
            )
        return RoundPlan(round=round_, devices=devices, online=len(online), idle=idle)

    def _task(self, round_: int, i: int, samples: np.ndarray | None = None) -> DeviceTask:
        if samples is None:  # the next batch of its current local epoch
            epoch, cursor = int(self.epoch[i]), int(self.cursor[i])
            if cursor >= len(self.batches(i, epoch)):
                epoch, cursor = epoch + 1, 0
            batches = self.batches(i, epoch)
            samples = batches[cursor] if batches else np.zeros(0, dtype=np.int64)
        return DeviceTask(
            round=round_,
            device=i,
            depth=int(self.depth[i]),
            samples=samples,
            data=self.parts[i],
            seed=derive_seed(self.seed, i, round_),
            fit_seed=derive_seed(self.seed, i),
        )

    # ------------------------------------------------------------------ Poisson rounds (DP-SGD)

    def _poisson_samples(self, round_: int, i: int) -> np.ndarray:
        return self.parts[i][
            poisson_sample(len(self.parts[i]), self.dp_sample_rate(), derive_seed(self.seed, i, round_, 0x9015))
        ]

    @property
    def n_samples(self) -> int:
        """N: the training samples held by all devices."""
        return self._n_samples

    def dp_sample_rate(self) -> float:
        """q: the probability with which each sample is in a Poisson round's batch (public: K·b / N)."""
        return min(1.0, self.sim.devices_per_round * self.sim.local_batch_size / max(self._n_samples, 1))

    def expected_batch_size(self) -> float:
        """E[samples in a Poisson round]: q · Σ_i availability_i · (1 − dropout_i) · n_i."""
        sizes = np.array([len(p) for p in self.parts])
        return float(self.dp_sample_rate() * (self._availability * (1 - self._dropout) * sizes).sum())

    def batches(self, i: int, epoch: int) -> list[np.ndarray]:
        """Device ``i``'s batches of local epoch ``epoch`` (sample indices), in the order it sends them (module
        docstring). Cached for the last few (device, epoch)."""
        key = (i, epoch)
        if key not in self._batches:
            part, b = self.parts[i], self.sim.local_batch_size
            if self.epoch_batches is not None:
                batches = self.epoch_batches(i, epoch)
            elif self.lengths is not None:
                seed = derive_seed(self.seed, i, epoch, 0x0E0C)
                batches = [
                    part[x] for x in batch_indices(self.lengths[part], b, shuffle=True, bucketing=True, seed=seed)
                ]
            else:
                order = np.random.default_rng([self.seed, i, epoch, 0x0E0C]).permutation(part)
                batches = [order[k : k + b] for k in range(0, len(order), b)]
            self._batches[key] = batches
            if len(self._batches) > 64:
                self._batches.popitem(last=False)
        return self._batches[key]

    def releases(self, i: int) -> int:
        """How many times the device's most-sent sample has been sent (local epochs begun; Poisson: draws)."""
        if self.poisson:
            return int(self.draws[self.parts[i]].max()) if len(self.parts[i]) else 0
        return 0 if self.epoch[i] == 0 and self.cursor[i] == 0 else int(self.epoch[i]) + 1

    # ------------------------------------------------------------------ state

    def commit(self, plan: RoundPlan) -> None:
        """Advance the cursors of the devices that sent (or sat out an empty batch), mark downloads (a dropped
        device has downloaded too)."""
        sent = [d.device for d in plan.devices if d.task is not None]
        for d in plan.devices:
            self.downloaded[d.device] = True
        if self.poisson:
            for d in plan.devices:
                if d.task is not None:
                    self.draws[d.task.samples] += 1
            return
        for i in [*sent, *plan.idle]:
            if self.cursor[i] >= len(self.batches(i, int(self.epoch[i]))):
                self.epoch[i] += 1
                self.cursor[i] = 0
            self.cursor[i] += 1

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch.copy(),
            "cursor_batches": self.cursor.copy(),
            "downloaded": self.downloaded.copy(),
            "draws": self.draws.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.downloaded = state["epoch"].copy(), state["downloaded"].copy()
        if "cursor_batches" in state:
            self.cursor = state["cursor_batches"].copy()
        else:  # a checkpoint from before the batch cursor: "cursor" counted the samples sent
            self.cursor = -(-state["cursor"] // self.sim.local_batch_size)
        self.draws = state["draws"].copy()
