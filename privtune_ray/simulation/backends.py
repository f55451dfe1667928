"""Where the device workers and top-model replicas live: one engine interface, two backends.

* :class:`InProcessBackend`: workers and replicas are plain objects in this process; deterministic, no Ray.
* :class:`RayBackend`: ``simulation.device_workers`` worker actors multiplex the virtual devices and
  ``simulation.top_replicas`` replica actors (fractional ``num_gpus`` where the cluster has GPUs) train the
  top. A dead worker's tasks are re-run on a replacement (a task is deterministic, so nothing is lost or
  counted twice); a dead replica raises :class:`ReplicaLost` and the coordinator rolls back to its last
  checkpoint.

The round's logic (which replica gets which message, the all-reduce, the evaluation) is written once in
:class:`Backend`; the two backends differ only in how a method is called and its result fetched.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from typing import Any

import torch

from ..errors import ConfigError, PrivtuneError
from .protocol import DeviceReport, DeviceTask, TopResult, derive_seed
from .replica import ReplicaSetup, TopReplica
from .worker import DeviceWorker, WorkerSetup


class ReplicaLost(PrivtuneError):
    """A top-model replica died during a round; its weights and optimiser state are gone."""


class Backend(ABC):
    """The engine's interface to its workers and replicas."""

    name = "base"

    def __init__(self, worker_setup: WorkerSetup, replica_setup: ReplicaSetup, n_workers: int, n_replicas: int):
        self.worker_setup, self.replica_setup = worker_setup, replica_setup
        self.workers = [self._start_worker() for _ in range(n_workers)]
        self.replicas = [self._start_replica() for _ in range(n_replicas)]
        self.faults: list[dict[str, Any]] = []  # drained by the coordinator into faults.csv
        self.current_round = -1  # set by the coordinator: the round a fault is recorded under

    # ------------------------------------------------------------------ how a call is made (per backend)

    @abstractmethod
    def _start_worker(self): ...

    @abstractmethod
    def _start_replica(self): ...

    @abstractmethod
    def _call(self, actor, method: str, *args):
        """Start ``actor.method(*args)``; returns a handle :meth:`_get` resolves."""

    @abstractmethod
    def _get(self, handles): ...

    @abstractmethod
    def _run_task(self, worker_index: int, task: DeviceTask):
        """Start a device task on a worker; returns (report handle, payload handle)."""

    # ------------------------------------------------------------------ devices

    def run_devices(self, tasks: list[DeviceTask]) -> list:
        """Start the tasks (round-robin over the workers); :meth:`gather` collects them."""
        return [
            (task, i % len(self.workers), *self._run_task(i % len(self.workers), task)) for i, task in enumerate(tasks)
        ]

    def gather(self, pending: list) -> list[tuple[DeviceReport, Any, int]]:
        """(report, payload handle, attempts) per task, in task order."""
        return [(self._get(report), payload, 1) for _, _, report, payload in pending]

    # ------------------------------------------------------------------ top model

    def train(self, payloads: list, seeds: list[int]) -> tuple[list[TopResult], float, float]:
        """One synchronous step on all of a round's messages: message j → replica j mod R accumulates
        ∇ Σ CE; the replicas' gradients are summed (in replica order) and applied by every replica.
        Returns the per-message results (in message order), the step's measured seconds and the lr used."""
        results: list[TopResult] = self._on_replicas("accumulate", seeds, payloads)
        return (results, *self.step_replicas(sum(r.samples for r in results)))

    def _on_replicas(self, method: str, keys: list[int], payloads: list, *args) -> list:
        """Message j → replica j mod R, as ``replica.method(its messages' keys, *args, *their payloads)`` (payloads
        as top-level arguments, so Ray resolves their object refs); one result per message, in message order."""
        n_rep = len(self.replicas)
        groups = [(i, list(range(i, len(payloads), n_rep))) for i in range(min(n_rep, len(payloads)))]
        handles = [
            self._call(self.replicas[i], method, [keys[j] for j in g], *args, *[payloads[j] for j in g])
            for i, g in groups
        ]
        results = [None] * len(payloads)
        for (_, g), part in zip(groups, self._replica_get(handles)):
            for j, result in zip(g, part, strict=True):
                results[j] = result
        return results

    def step_replicas(self, n: int) -> tuple[float, float]:
        """The replicas' synchronous step on the gradients they accumulated (summed in replica order) over
        ``n`` samples: (measured seconds, the lr used)."""
        if len(self.replicas) == 1:
            return self._replica_get([self._call(self.replicas[0], "step", n)])[0]
        start = time.perf_counter()
        grads = self._replica_get([self._call(r, "gradients") for r in self.replicas])
        total = [_sum(parts) for parts in zip(*grads)]
        reduce_s = time.perf_counter() - start  # the all-reduce, measured
        steps = self._replica_get([self._call(r, "step", n, total) for r in self.replicas])
        return reduce_s + max(s for s, _ in steps), steps[0][1]

    # ------------------------------------------------------------------ GuardedTuning phases (simulation/guarded.py)

    def share(self, obj):
        """An object every actor reads this round (Ray: put in the object store once)."""
        return obj

    def broadcast(self, method: str, *args) -> None:
        self._get([self._call(w, method, *args) for w in self.workers])

    def on_workers(self, method: str, calls: list[tuple]) -> list:
        """``worker.method(*args)`` for each tuple (round-robin over the workers); results in call order."""
        return self._get(
            [self._call(self.workers[j % len(self.workers)], method, *args) for j, args in enumerate(calls)]
        )

    def middle(self, method: str, keys: list[int], payloads: list, *args) -> tuple[list, list[float]]:
        """Message j → replica j mod R (the same replica for a message's forward and backward): (outputs, seconds)."""
        results = self._on_replicas(method, keys, payloads, *args)
        return [out for out, _ in results], [s for _, s in results]

    def _replica_get(self, handles):
        return self._get(handles)

    def fetch(self, handle):
        """The value behind a handle (a payload's bytes)."""
        return self._get(handle)

    def evaluate(self, depth: int, batches: list, seed: int) -> tuple[int, float, int]:
        """(correct, summed loss in nats, samples) of the eval split sent by a device of ``depth``. The batches are
        encoded through :meth:`on_workers`, so a worker that dies meanwhile is replaced and its batches re-run (a
        device-worker fault), not mistaken for a lost replica."""
        payloads = self.on_workers("encode_eval", [(idx, depth, derive_seed(seed, b)) for b, idx in enumerate(batches)])
        results = self._replica_get([self._call(self.replicas[0], "predict", p) for p in payloads])
        return sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results)

    def top_state(self) -> bytes:
        return self._replica_get([self._call(self.replicas[0], "state")])[0]

    def load_top_state(self, blob: bytes) -> None:
        self._replica_get([self._call(r, "load_state", blob) for r in self.replicas])

    def restore_replicas(self, blob: bytes, round_: int) -> None:
        """Replace dead replicas and set every replica to the state ``blob``."""
        self.load_top_state(blob)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device_workers": len(self.workers),
            "top_replicas": len(self.replicas),
            "replica": self._replica_get([self._call(self.replicas[0], "describe")])[0],
        }

    def shutdown(self) -> None:
        return None


def _sum(parts: tuple) -> torch.Tensor | None:
    """Sum of the replicas' gradients of one parameter, in replica order (None where no replica has one)."""
    present = [g for g in parts if g is not None]
    return torch.stack(present).sum(0) if present else None


class InProcessBackend(Backend):
    """Workers and replicas as objects in this process. Results are bit-identical run to run (without a deadline)."""

    name = "inprocess"

    def _start_worker(self):
        return DeviceWorker(self.worker_setup)

    def _start_replica(self):
        return TopReplica(self.replica_setup)

    def _call(self, actor, method: str, *args):
        return getattr(actor, method)(*args)

    def _get(self, handles):
        return handles

    def _run_task(self, worker_index: int, task: DeviceTask):
        return self.workers[worker_index].run(task)


# ---------------------------------------------------------------------------------------------- Ray


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto", "host:port", "ray://...") or start a local Ray (None).

    Reuses a Ray already initialised in this process (tests start one per session).
    """
    import ray

    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Ray cluster at {address!r} ({exc.__class__.__name__}): start its head with "
                f"`ray start --head`, check the address and firewall, or drop simulation.address to run locally"
            ) from None
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "PRIVTUNE_", "TOKENIZERS_"))}
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        return
    try:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address!r}: {exc}. Start one with `ray start --head` "
            f"(then --address auto), or drop simulation.address to start a local Ray"
        ) from None


def replica_gpus(requested: float | None, n_replicas: int, cluster_gpus: float) -> float:
    """GPUs per replica: as configured, else an equal share of the cluster's GPUs (≤ 1 each), else 0."""
    if requested is not None:
        return requested
    return min(1.0, cluster_gpus / n_replicas) if cluster_gpus > 0 else 0.0


def check_resources(sim, cluster: dict[str, float]) -> float:
    """Refuse a pool the cluster cannot hold (before any actor starts); returns GPUs per replica."""
    cpus = sim.device_workers * sim.worker_cpus + sim.top_replicas * sim.replica_cpus
    have_cpus = cluster.get("CPU", 0.0)
    if cpus > have_cpus + 1e-9:
        raise ConfigError(
            f"the simulation asks Ray for {cpus:g} CPUs ({sim.device_workers} device workers × {sim.worker_cpus:g} + "
            f"{sim.top_replicas} top replicas × {sim.replica_cpus:g}) but the cluster has {have_cpus:g}: lower "
            f"simulation.device_workers / simulation.top_replicas or their *_cpus, or add nodes"
        )
    gpus = replica_gpus(sim.replica_gpus, sim.top_replicas, cluster.get("GPU", 0.0))
    if gpus * sim.top_replicas > cluster.get("GPU", 0.0) + 1e-9:
        raise ConfigError(
            f"{sim.top_replicas} top replicas × {gpus:g} GPUs exceed the cluster's {cluster.get('GPU', 0.0):g} GPUs: "
            f"lower simulation.top_replicas or simulation.replica_gpus (null shares what there is)"
        )
    return gpus


class RayBackend(Backend):
    """Worker and replica actors on a Ray cluster (local or remote)."""

    name = "ray"

    def __init__(self, worker_setup: WorkerSetup, replica_setup: ReplicaSetup, sim):
        import ray

        self.ray, self.sim = ray, sim
        self.gpus = check_resources(sim, ray.cluster_resources())
        if self.gpus > 0:
            replica_setup.device = "cuda"
        self._worker_cls = ray.remote(DeviceWorker).options(num_cpus=sim.worker_cpus, max_restarts=0)
        self._replica_cls = ray.remote(TopReplica).options(
            num_cpus=sim.replica_cpus, num_gpus=self.gpus, max_restarts=0
        )
        self._worker_ref, self._replica_ref = ray.put(worker_setup), ray.put(replica_setup)
        super().__init__(worker_setup, replica_setup, sim.device_workers, sim.top_replicas)
        self._get([w.ping.remote() for w in self.workers] + [r.describe.remote() for r in self.replicas])  # started

    def _start_worker(self):
        worker = self._worker_cls.remote(self._worker_ref)
        if getattr(self, "_broadcast", None):  # a replacement gets what every worker was told this round
            method, args = self._broadcast
            getattr(worker, method).remote(*args)
        return worker

    def broadcast(self, method: str, *args) -> None:
        """As :meth:`Backend.broadcast`; a worker found dead is replaced (the replacement is told the same)."""
        from ray.exceptions import RayActorError

        self._broadcast = (method, args)
        for index, ref in enumerate([self._call(w, method, *args) for w in self.workers]):
            try:
                self.ray.get(ref)
            except RayActorError as exc:
                self._replace_dead_worker(index, exc, method)

    def on_workers(self, method: str, calls: list[tuple]) -> list:
        """As :meth:`Backend.on_workers`; a call whose worker died re-runs on a replacement (the phases are
        stateless and seeded, so the re-run returns what the lost one would have)."""
        from ray.exceptions import RayActorError

        n = len(self.workers)
        refs = [self._call(self.workers[j % n], method, *args) for j, args in enumerate(calls)]
        out = []
        for j, (ref, args) in enumerate(zip(refs, calls)):
            attempts = 1
            while True:
                try:
                    out.append(self.ray.get(ref))
                    break
                except RayActorError as exc:
                    if attempts > self.sim.max_retries:
                        raise PrivtuneError(f"{method} failed {attempts} times: {exc}") from exc
                    self._replace_dead_worker(j % n, exc, method)
                    ref, attempts = self._call(self.workers[j % n], method, *args), attempts + 1
        return out

    def _replace_dead_worker(self, index: int, exc: Exception, what: str, round_: int | None = None) -> None:
        """Replace worker ``index`` if Ray reports it dead (a busy one is left alone) and record the fault."""
        if not self._alive(self.workers[index]):
            self.ray.kill(self.workers[index])  # frees its resources if any part of it lingers
            self.workers[index] = self._start_worker()
            self.faults.append(
                {
                    "round": self.current_round if round_ is None else round_,
                    "component": "device_worker",
                    "index": index,
                    "what": f"died ({exc.__class__.__name__})",
                    "action": f"replaced; {what} re-run",
                }
            )

    def _start_replica(self):
        return self._replica_cls.remote(self._replica_ref)

    def _call(self, actor, method: str, *args):
        return getattr(actor, method).remote(*args)

    def share(self, obj):
        return self.ray.put(obj)

    def _get(self, handles):
        return self.ray.get(handles)

    def _run_task(self, worker_index: int, task: DeviceTask):
        return self.workers[worker_index].run.options(num_returns=2).remote(task)

    def gather(self, pending: list) -> list[tuple[DeviceReport, Any, int]]:
        """Collect reports; a task whose worker died is re-run on a replacement worker (up to max_retries)."""
        from ray.exceptions import RayActorError

        out = []
        for task, worker, report_ref, payload_ref in pending:
            attempts = 1
            while True:
                try:
                    out.append((self.ray.get(report_ref), payload_ref, attempts))
                    break
                except RayActorError as exc:
                    if attempts > self.sim.max_retries:
                        raise PrivtuneError(
                            f"device {task.device} failed {attempts} times in round {task.round}: {exc}"
                        ) from exc
                    worker = self._replace_worker(worker, task, exc)
                    report_ref, payload_ref = self._run_task(worker, task)
                    attempts += 1
        return out

    def _replace_worker(self, index: int, task: DeviceTask, exc: Exception) -> int:
        self._replace_dead_worker(index, exc, "tasks", round_=task.round)
        self.faults.append(
            {
                "round": task.round,
                "component": "device_task",
                "index": task.device,
                "what": "lost with its worker",
                "action": f"re-run on worker {index}",
            }
        )
        return index

    def _alive(self, actor) -> bool:
        """False only for an actor Ray reports dead (a busy one is waited for)."""
        from ray.exceptions import RayActorError

        try:
            self.ray.get(actor.ping.remote())
            return True
        except RayActorError:
            return False

    def _replica_get(self, handles):
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(handles)
        except RayActorError as exc:
            raise ReplicaLost(f"a top-model replica died: {exc.__class__.__name__}") from exc

    def restore_replicas(self, blob: bytes, round_: int) -> None:
        for i, replica in enumerate(self.replicas):
            if not self._alive(replica):
                self.ray.kill(replica)
                self.replicas[i] = self._start_replica()
                self.faults.append(
                    {"round": round_, "component": "top_replica", "index": i, "what": "died", "action": "replaced"}
                )
        self.load_top_state(blob)

    def shutdown(self) -> None:
        for actor in self.workers + self.replicas:
            self.ray.kill(actor)
