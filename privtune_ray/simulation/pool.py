"""The actor pool above the transport: device tasks on the workers, messages routed to the replicas, the all-reduce.

Replicas stay in sync by synchronous data-parallel SGD: message j of a round goes to replica j mod R, which
accumulates ∇ Σ CE over its messages; the pool sums the replicas' gradients (in replica order, through the
driver) and every replica applies the same sum with the same step. The same routing serves a design whose
cloud keeps per-message state between calls (GuardedTuning's middle: forward, then backward on one replica).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .backend import Backend, Call
from .protocol import DeviceResult, DeviceTask, StepResult, TopResult


class ActorPool:
    """What the coordinator and the designs ask of the workers and replicas."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @property
    def n_replicas(self) -> int:
        return len(self.backend.replicas)

    # ------------------------------------------------------------------ workers

    def run_devices(self, tasks: list[DeviceTask]) -> list[Call]:
        """Start the round's device tasks (round-robin over the workers); :meth:`gather` collects them."""
        labels = [f"device {t.device}" for t in tasks]
        round_ = tasks[0].round if tasks else -1
        return self.backend.submit("run", [(t,) for t in tasks], num_returns=2, round_=round_, labels=labels)

    def gather(self, pending: list[Call]) -> list[DeviceResult]:
        """Each task's report, upload handle and attempts, in task order."""
        return [DeviceResult(c.value, c.handles[0], c.attempts) for c in self.backend.collect(pending)]

    def on_workers(self, fn: Callable, calls: list[tuple], round_: int = -1) -> list:
        """``fn(design, worker, *args)`` on the workers for each tuple (a design's device phase); in call order."""
        return self.backend.on_workers("phase", [(fn, *args) for args in calls], round_=round_)

    def broadcast(self, fn: Callable, *args, round_: int = -1) -> None:
        """``fn(design, worker, *args)`` on every worker (and on any worker that later replaces one)."""
        self.backend.broadcast("phase", fn, *args, round_=round_)

    def share(self, obj) -> Any:
        """An object many calls read this round (Ray: put in the object store once)."""
        return self.backend.put(obj)

    def fetch(self, handle) -> Any:
        """The value behind a handle (an upload's bytes)."""
        return self.backend.get(handle)

    # ------------------------------------------------------------------ replicas

    def route(self, method: str, keys: list[int], payloads: list, *args) -> list:
        """Message j → replica j mod R as ``replica.method(its keys, *args, *its payloads)`` (payloads as
        top-level arguments, so Ray resolves their object refs); one result per message, in message order."""
        n_rep = self.n_replicas
        groups = [list(range(i, len(payloads), n_rep)) for i in range(min(n_rep, len(payloads)))]
        calls = [(i, method, ([keys[j] for j in g], *args, *[payloads[j] for j in g])) for i, g in enumerate(groups)]
        results: list = [None] * len(payloads)
        for g, part in zip(groups, self.backend.on_replicas(calls)):
            for j, result in zip(g, part, strict=True):
                results[j] = result
        return results

    def cloud_phase(self, fn: Callable, keys: list[int], payloads: list, *args) -> list:
        """``fn(design, replica, keys, *args, *payloads)`` routed as :meth:`route` routes (a design's cloud phase)."""
        return self.route("phase", keys, payloads, fn, *args)

    def train(self, payloads: list, seeds: list[int]) -> tuple[list[TopResult], StepResult]:
        """One synchronous step on all of a round's messages: each replica accumulates ∇ Σ CE of its share
        (message j's dropout seeded by ``seeds[j]``), then :meth:`step`."""
        results: list[TopResult] = self.route("accumulate", seeds, payloads)
        return results, self.step(sum(r.samples for r in results))

    def step(self, n_samples: int) -> StepResult:
        """The replicas' synchronous step on what they accumulated, averaged over ``n_samples``: with R > 1 the
        gradients are summed in replica order first (the all-reduce, measured)."""
        if self.n_replicas == 1:
            seconds, lr = self.backend.on_replicas([(0, "step", (n_samples,))])[0]
            return StepResult(seconds, lr)
        start = time.perf_counter()
        grads = self.backend.on_replicas([(i, "gradients", ()) for i in range(self.n_replicas)])
        total = [_sum(parts) for parts in zip(*grads)]
        reduce_s = time.perf_counter() - start
        steps = self.backend.on_replicas([(i, "step", (n_samples, total)) for i in range(self.n_replicas)])
        return StepResult(reduce_s + max(s for s, _ in steps), steps[0][1])

    def on_first_replica(self, method: str, payloads: list) -> list:
        """``replicas[0].method(payload)`` for each payload (evaluation: one replica predicts all)."""
        return self.backend.on_replicas([(0, method, (p,)) for p in payloads])

    def top_state(self) -> bytes:
        return self.backend.on_replicas([(0, "state", ())])[0]

    def restore(self, blob: bytes, round_: int) -> None:
        """Replace dead replicas and set every replica to the state ``blob``."""
        self.backend.replace_dead_replicas(round_)
        self.backend.on_replicas([(i, "load_state", (blob,)) for i in range(self.n_replicas)])

    def describe(self) -> dict[str, Any]:
        return {**self.backend.describe(), "replica": self.backend.on_replicas([(0, "describe", ())])[0]}

    def shutdown(self) -> None:
        self.backend.shutdown()


def _sum(parts: tuple) -> torch.Tensor | None:
    """Sum of the replicas' gradients of one parameter, in replica order (None where no replica has one)."""
    present = [g for g in parts if g is not None]
    return torch.stack(present).sum(0) if present else None
