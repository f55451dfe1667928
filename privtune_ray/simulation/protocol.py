"""What the coordinator, the device workers and the top-model replicas hand each other.

A :class:`DeviceTask` is everything a worker needs to act as one virtual device for one round (so any
worker can run any device); the worker answers with a :class:`DeviceReport` and the upload itself, the
serialised :class:`~privtune_ray.message.Message` (its ``len`` is the bytes sent up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (run seed, device, round): independent streams per device and round.

    The count of parts and a non-zero tag close the entropy, so (0, 1) and (0, 1, 0) give different seeds
    (SeedSequence alone treats trailing zeros as absent).
    """
    entropy = [int(p) for p in parts] + [len(parts), 0x5EED]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class DeviceTask:
    """One virtual device's work in one round."""

    round: int
    device: int
    depth: int  # m_i
    samples: np.ndarray  # indices into the training split: what it sends this round
    data: np.ndarray  # indices of all the device's samples (what its mechanism fits on)
    seed: int  # noise of this device in this round: derive_seed(run seed, device, round)
    fit_seed: int  # the mechanism's per-device fit: derive_seed(run seed, device)


@dataclass
class DeviceReport:
    """Measured by the worker while it ran a task."""

    round: int
    device: int
    depth: int
    samples: int
    tokens: int
    bytes_up: int  # len of the serialised message
    compute_s: float  # bottom forward, measured seconds on this machine
    mechanism_s: float  # the mechanism's perturbation, measured seconds
    worker: str = ""
    loss_sum: float = 0.0  # GuardedTuning offline: Σ CE of the local step (nats)
    penalty: float = 0.0  # GuardedTuning offline: α·B·dCor of the local step

    @classmethod
    def of(
        cls, task: DeviceTask, tokens: int, payload: bytes, worker: str, compute_s: float, **measured
    ) -> DeviceReport:
        """The report of ``task`` whose upload is ``payload`` (``measured``: mechanism_s, loss_sum, penalty)."""
        return cls(
            task.round,
            task.device,
            task.depth,
            len(task.samples),
            tokens,
            len(payload),
            compute_s,
            measured.pop("mechanism_s", 0.0),
            worker,
            **measured,
        )


@dataclass
class TopResult:
    """A replica's work on one message: summed cross-entropy (nats), samples, measured seconds."""

    loss_sum: float
    samples: int
    top_s: float


@dataclass
class DeviceResult:
    """A device task's outcome as the coordinator holds it: the report, the upload (a handle the pool
    resolves: bytes in process, an object ref on Ray) and how many runs it took (a lost worker's task re-runs)."""

    report: DeviceReport
    payload: Any
    attempts: int = 1


@dataclass
class StepResult:
    """The replicas' synchronous step: measured seconds (the all-reduce included) and the learning rate used."""

    seconds: float
    lr: float


@dataclass
class EvalResult:
    """An evaluation's sums: correct predictions, summed cross-entropy (nats), samples, and the bytes its messages
    took up to the cloud and back down."""

    correct: int
    loss_sum: float
    samples: int
    bytes_up: int = 0
    bytes_down: int = 0

    def __add__(self, other: EvalResult) -> EvalResult:
        return EvalResult(
            self.correct + other.correct,
            self.loss_sum + other.loss_sum,
            self.samples + other.samples,
            self.bytes_up + other.bytes_up,
            self.bytes_down + other.bytes_down,
        )


@dataclass
class Fault:
    """One row of ``faults.csv``: what failed in which round, and what the engine did about it."""

    round: int
    component: str  # device_worker | device_task | top_replica | run
    index: int
    what: str
    action: str
