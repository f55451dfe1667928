"""Transport: where the device workers and top-model replicas live, and how a call reaches them.

A :class:`Backend` starts actors, calls a method on one or all of them, replaces a dead one and shuts down;
nothing more. Which replica gets which message, the all-reduce and evaluation live above it, in
:class:`~privtune_ray.simulation.pool.ActorPool`; what a device or the cloud computes lives in the design.

* ``inprocess`` (:class:`InProcessBackend`): workers and replicas are plain objects in this process;
  deterministic, no Ray.
* ``ray`` (:class:`RayBackend`): ``simulation.device_workers`` worker actors multiplex the virtual devices and
  ``simulation.top_replicas`` replica actors (fractional ``num_gpus`` where the cluster has GPUs) host the cloud.

There is one retry path, :meth:`Backend.collect`: a call whose worker died is re-run on a replacement (every
worker call is deterministic given its arguments, so nothing is lost or counted twice) and the fault is
reported. A dead replica raises :class:`ReplicaLost` instead (its weights are gone): the coordinator rolls back.
"""

from __future__ import annotations

import functools
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, PrivtuneError
from .protocol import Fault
from .ray_reaper import children, start_reaper
from .replica import ReplicaSetup, TopReplica
from .worker import DeviceWorker, WorkerSetup


class ReplicaLost(PrivtuneError):
    """A top-model replica died during a round; its weights and optimiser state are gone."""


@dataclass
class Call:
    """A call submitted to a worker: enough to re-run it on a replacement."""

    worker: int
    method: str
    args: tuple
    handle: Any  # one handle, or a tuple of them (``num_returns`` > 1)
    num_returns: int
    round: int
    label: str  # what the call was, for a fault row ("device 12", "encode_eval")


@dataclass
class Collected:
    """A collected call: its first return resolved, the others left as handles (a payload stays where it is)."""

    value: Any
    handles: tuple
    attempts: int


class Backend(ABC):
    """Actors and calls; ``on_fault`` receives every fault the transport handles."""

    name: ClassVar[str]

    def __init__(
        self,
        worker_setup: WorkerSetup,
        replica_setup: ReplicaSetup,
        n_workers: int,
        n_replicas: int,
        max_retries: int = 3,
        on_fault: Callable[[Fault], None] | None = None,
    ):
        self.worker_setup, self.replica_setup, self.max_retries = worker_setup, replica_setup, max_retries
        self.on_fault = on_fault or (lambda fault: None)
        self._told: tuple[str, tuple] | None = None  # the last broadcast: a replacement worker is told it too
        self.workers = [self.start_worker() for _ in range(n_workers)]
        self.replicas = [self.start_replica(i) for i in range(n_replicas)]

    @classmethod
    def start(cls, worker_setup: WorkerSetup, replica_setup: ReplicaSetup, sim, on_fault=None) -> Backend:
        """Start the pool of ``sim`` (a :class:`~privtune_ray.config.SimulationConfig`)."""
        return cls(worker_setup, replica_setup, sim.device_workers, sim.top_replicas, sim.max_retries, on_fault)

    # ------------------------------------------------------------------ per backend

    @abstractmethod
    def start_worker(self) -> Any: ...

    @abstractmethod
    def start_replica(self, index: int) -> Any:
        """Start top replica ``index`` (a replacement takes the same index: its place in the pool)."""

    @abstractmethod
    def call(self, actor, method: str, *args, num_returns: int = 1) -> Any:
        """Start ``actor.method(*args)``; returns a handle (a tuple of ``num_returns`` handles) for :meth:`get`."""

    @abstractmethod
    def get(self, handles) -> Any: ...

    def put(self, obj) -> Any:
        """An object many calls read (Ray: stored once in the object store)."""
        return obj

    def is_actor_death(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the called actor died (in process, nothing dies)."""
        return False

    def alive(self, actor) -> bool:
        return True

    replacement_timeout_s = float("inf")  # how long a replacement may wait for room (RayBackend: the config's)

    def started(self, actor, timeout_s: float) -> bool:
        """Whether ``actor`` answers within ``timeout_s`` (a replacement with no node to run on does not)."""
        return True

    def kill(self, actor) -> None:
        return None

    def replacement(self, start: Callable[[], Any], what: str) -> Any:
        """A replacement actor from ``start()``, or one line that stops the run when the cluster has no room for it
        within ``replacement_timeout_s`` (its node was lost and no other holds its resources)."""
        actor = start()
        if not self.started(actor, self.replacement_timeout_s):
            self.kill(actor)
            raise PrivtuneError(
                f"{what} died and its replacement found no node with room within simulation.replacement_timeout_s="
                f"{self.replacement_timeout_s:g} s (a node was lost?): add a node with its resources, then rerun with "
                f"--resume (the run goes on from its last checkpoint)"
            )
        return actor

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device_workers": len(self.workers), "top_replicas": len(self.replicas)}

    def shutdown(self) -> None:
        return None

    # ------------------------------------------------------------------ workers: submit, collect (one retry path)

    def submit(
        self, method: str, calls: list[tuple], num_returns: int = 1, round_: int = -1, labels=None
    ) -> list[Call]:
        """Start ``worker.method(*args)`` for each tuple, round-robin over the workers."""
        out = []
        for j, args in enumerate(calls):
            w = j % len(self.workers)
            handle = self.call(self.workers[w], method, *args, num_returns=num_returns)
            label = labels[j] if labels is not None else (args[0].__name__ if method == "phase" else method)
            out.append(Call(w, method, args, handle, num_returns, round_, label))
        return out

    def collect(self, calls: list[Call]) -> list[Collected]:
        """Resolve each call's first return; a call whose worker died re-runs on a replacement (up to
        ``max_retries`` times), recorded as a device-worker fault (and a device-task fault for a task)."""
        out = []
        for c in calls:
            attempts = 1
            while True:
                first = c.handle[0] if c.num_returns > 1 else c.handle
                try:
                    value = self.get(first)
                    break
                except Exception as exc:
                    if not self.is_actor_death(exc):
                        raise
                    if attempts > self.max_retries:
                        raise PrivtuneError(f"{c.label} failed {attempts} times in round {c.round}: {exc}") from exc
                    self.replace_worker(
                        c.worker, exc, c.round, "tasks re-run" if c.method == "run" else f"{c.label} re-run"
                    )
                    if c.method == "run":
                        self.on_fault(
                            Fault(
                                c.round,
                                "device_task",
                                c.args[0].device,
                                "lost with its worker",
                                f"re-run on worker {c.worker}",
                            )
                        )
                    c.handle = self.call(self.workers[c.worker], c.method, *c.args, num_returns=c.num_returns)
                    attempts += 1
            out.append(Collected(value, tuple(c.handle[1:]) if c.num_returns > 1 else (), attempts))
        return out

    def on_workers(self, method: str, calls: list[tuple], round_: int = -1) -> list:
        """``worker.method(*args)`` for each tuple; the resolved results in call order."""
        return [c.value for c in self.collect(self.submit(method, calls, round_=round_))]

    def broadcast(self, method: str, *args, round_: int = -1) -> None:
        """``method(*args)`` on every worker (a worker started later to replace a dead one is told too)."""
        self._told = (method, args)
        calls = [self.call(w, method, *args) for w in self.workers]
        self.collect([Call(i, method, args, h, 1, round_, method) for i, h in enumerate(calls)])

    def replace_worker(self, index: int, exc: BaseException, round_: int, what: str) -> None:
        """Replace worker ``index`` if it is dead (a busy one is left alone) and report the fault."""
        if self.alive(self.workers[index]):
            return
        self.kill(self.workers[index])  # frees its resources if any part of it lingers
        self.workers[index] = self.replacement(self.start_worker, f"device worker {index}")
        if self._told is not None:
            method, args = self._told
            self.get(self.call(self.workers[index], method, *args))
        self.on_fault(Fault(round_, "device_worker", index, f"died ({exc.__class__.__name__})", f"replaced; {what}"))

    # ------------------------------------------------------------------ replicas

    def on_replicas(self, calls: list[tuple[int, str, tuple]]) -> list:
        """``replicas[i].method(*args)`` for each (i, method, args), resolved; a dead replica is :class:`ReplicaLost`."""
        handles = [self.call(self.replicas[i], method, *args) for i, method, args in calls]
        try:
            return self.get(handles)
        except Exception as exc:
            if self.is_actor_death(exc):
                raise ReplicaLost(f"a top-model replica died: {exc.__class__.__name__}") from exc
            raise

    def replace_dead_replicas(self, round_: int) -> None:
        for i, replica in enumerate(self.replicas):
            if not self.alive(replica):
                self.kill(replica)
                self.replicas[i] = self.replacement(functools.partial(self.start_replica, i), f"top replica {i}")
                self.on_fault(Fault(round_, "top_replica", i, "died", "replaced"))


class InProcessBackend(Backend):
    """Workers and replicas as objects in this process. Results are bit-identical run to run (without a deadline)."""

    name = "inprocess"

    def start_worker(self) -> DeviceWorker:
        return DeviceWorker(self.worker_setup)

    def start_replica(self, index: int) -> TopReplica:
        return TopReplica(self.replica_setup)

    def call(self, actor, method: str, *args, num_returns: int = 1):
        return getattr(actor, method)(*args)

    def get(self, handles):
        return handles


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto", "host:port", "ray://...") or start a local Ray (None).

    None starts a fresh local Ray even where another runs on this host (Ray's own default would join that one),
    except under ``RAY_ADDRESS`` (set by ``ray job submit``), which is joined. Reuses a Ray already initialised in
    this process (tests start one per session).
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
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if address is None:
        before = children()
        # Workers at the driver's priority, as the in-process backend's compute is (Ray's default, 15 nicer, hands
        # each of a 2-core machine's daemon wake-ups a core its actors' threads were using)
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
            _system_config={"worker_niceness": 0},
        )
        start_reaper(before)  # ends the local Ray's processes if this driver is killed (ray_reaper.py)
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
    """Refuse a pool the cluster cannot hold (before any actor starts), naming what is missing: CPUs, GPUs and each
    custom resource of ``simulation.worker_resources`` / ``replica_resources``; returns GPUs per replica."""
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
    for name in sorted(set(sim.worker_resources) | set(sim.replica_resources)):
        need = sim.device_workers * sim.worker_resources.get(name, 0.0)
        need += sim.top_replicas * sim.replica_resources.get(name, 0.0)
        have = cluster.get(name, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"the simulation asks Ray for {need:g} of the custom resource {name!r} (simulation.worker_resources / "
                f"replica_resources) but the cluster has {have:g}: start nodes with `ray start --resources "
                f"'{{\"{name}\": N}}'`, or lower what the pool asks for"
            )
    return gpus


class RayBackend(Backend):
    """Worker and replica actors on a Ray cluster (local or remote)."""

    name = "ray"

    @classmethod
    def start(cls, worker_setup: WorkerSetup, replica_setup: ReplicaSetup, sim, on_fault=None) -> Backend:
        connect_ray(sim.address)
        return cls(worker_setup, replica_setup, sim, on_fault)

    def __init__(self, worker_setup: WorkerSetup, replica_setup: ReplicaSetup, sim, on_fault=None):
        import ray  # only a Ray run pays for importing it
        from ray.exceptions import RayActorError

        self.ray, self._death = ray, RayActorError
        self.gpus = check_resources(sim, ray.cluster_resources())
        if self.gpus > 0:
            replica_setup.device = "cuda"
        # device workers spread over the nodes; the top replicas in one placement group (their bundles reserved
        # together, packed onto as few nodes as fit: the all-reduce stays local where it can)
        self._worker_cls = ray.remote(DeviceWorker).options(
            num_cpus=sim.worker_cpus, resources=dict(sim.worker_resources), scheduling_strategy="SPREAD", max_restarts=0
        )
        self._placement = self._place_replicas(sim)
        self._replica_cls = ray.remote(TopReplica)
        self._replica_options = {"num_cpus": sim.replica_cpus, "num_gpus": self.gpus, "max_restarts": 0}
        self._worker_ref, self._replica_ref = ray.put(worker_setup), ray.put(replica_setup)
        super().__init__(worker_setup, replica_setup, sim.device_workers, sim.top_replicas, sim.max_retries, on_fault)
        self.replacement_timeout_s = sim.replacement_timeout_s
        self.get([w.ping.remote() for w in self.workers] + [r.ping.remote() for r in self.replicas])  # started

    def _place_replicas(self, sim):
        """The replicas' placement group: one bundle each (CPUs, the GPU share, ``replica_resources``), ready
        within ``simulation.placement_timeout_s`` or the run stops, naming the bundle that does not fit."""
        from ray.util.placement_group import placement_group, remove_placement_group

        bundle = {"CPU": sim.replica_cpus, "GPU": self.gpus, **sim.replica_resources}
        bundle = {name: amount for name, amount in bundle.items() if amount > 0}
        if not bundle:  # replicas that reserve nothing: nothing to place
            return None
        group = placement_group([dict(bundle) for _ in range(sim.top_replicas)], strategy="PACK")
        ready, _ = self.ray.wait([group.ready()], timeout=sim.placement_timeout_s)
        if not ready:
            remove_placement_group(group)
            raise ConfigError(
                f"Ray could not place {sim.top_replicas} top replica(s) of {bundle} each within "
                f"simulation.placement_timeout_s={sim.placement_timeout_s:g} s: no set of nodes holds them; add a node "
                f"with those resources, or lower simulation.top_replicas / replica_cpus / replica_resources"
            )
        return group

    def start_worker(self):
        return self._worker_cls.remote(self._worker_ref)

    def start_replica(self, index: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._placement is None:
            return self._replica_cls.options(**self._replica_options).remote(self._replica_ref)
        strategy = PlacementGroupSchedulingStrategy(self._placement, placement_group_bundle_index=index)
        return self._replica_cls.options(**self._replica_options, scheduling_strategy=strategy).remote(
            self._replica_ref
        )

    def call(self, actor, method: str, *args, num_returns: int = 1):
        fn = getattr(actor, method)
        return (fn.options(num_returns=num_returns) if num_returns > 1 else fn).remote(*args)

    def get(self, handles):
        return self.ray.get(handles)

    def put(self, obj):
        return self.ray.put(obj)

    def is_actor_death(self, exc: BaseException) -> bool:
        return isinstance(exc, self._death)

    def alive(self, actor) -> bool:
        """False only for an actor Ray reports dead (a busy one is waited for)."""
        try:
            self.ray.get(actor.ping.remote())
            return True
        except self._death:
            return False

    def started(self, actor, timeout_s: float) -> bool:
        ready, _ = self.ray.wait([actor.ping.remote()], timeout=timeout_s)
        return bool(ready)

    def kill(self, actor) -> None:
        self.ray.kill(actor)

    def describe(self) -> dict[str, Any]:
        """The pool, and the node each device worker and top replica runs on (Ray node ids; None for one lost with
        its node since its last call)."""
        nodes = [self._node(a) for a in self.workers + self.replicas]
        return {
            **super().describe(),
            "worker_nodes": nodes[: len(self.workers)],
            "replica_nodes": nodes[len(self.workers) :],
            "placement_group": None if self._placement is None else self._placement.id.hex(),
        }

    def _node(self, actor) -> str | None:
        try:
            return self.ray.get(actor.node.remote())
        except self._death:
            return None

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.workers + self.replicas:
            self.ray.kill(actor)
        if self._placement is not None:
            remove_placement_group(self._placement)


BACKENDS: dict[str, type[Backend]] = {"inprocess": InProcessBackend, "ray": RayBackend}
