"""The one engine: rounds of fine-tuning over a population of virtual devices, for any design and both commands.

``privtune-ray simulate`` runs it on the configured population; ``privtune-ray train`` runs it on a population of
one device that holds the whole training split and the bottom, on the in-process backend, with zero latency,
unbounded bandwidth and no drop-out (:func:`one_device`; Flower runs a single client as ``num_supernodes=1``), one
round per optimiser step. What differs between the two is a :class:`Command`; the loop, the records, the
checkpoints and the summary are the same code.

Per round r (the data path, top to bottom):

1. plan: which online devices take part, who drops out, what each sends (``Population.plan``);
2. devices: ``design.device_step`` on the workers (split: bottom_{m_i} → mechanism → serialised message);
3. cloud: ``design.cloud_round``: the clock of the uploads (download, compute × factor, upload, arrival, FCFS
   queue at the replicas; ``clock.simulate_round``), then one synchronous step of the trainable parts (split: the
   top's AdamW step on the on-time messages; EW-Tune: one DP-SGD step on the Poisson round; GuardedTuning: the
   protocol's remaining phases, then the middle's and the adapters' step);
4. record: ``devices.csv`` (one row per selected device), ``rounds.csv``, ``eval.csv``, ``faults.csv``,
   ``attacks.csv``, appended as produced; a checkpoint every ``checkpoint_every`` rounds.

With ``prefetch`` the devices of round r+1 run while the top trains on round r (the bottom is frozen and
no gradient returns to the devices, so their messages do not depend on the top). A replica that dies
rolls the run back to its last checkpoint; the rounds since are redone identically (every random draw is
seeded by (seed, device, round); with a deadline, which messages are late depends on measured seconds), so
no sample is lost or counted twice; ``faults.csv`` says what happened.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks.gradient_matching import held_gradient_matching
from ..attacks.public_text import attacker_data
from ..attacks.rounds import AttackRounds
from ..attacks.suite import AttackSuite
from ..attacks.update_inversion import AdapterUpdate, build_update_inversion
from ..config import Config, TierConfig
from ..data.batching import TokenizedSplit, batch_indices, collate
from ..data.partition import partition
from ..data.public import uses_public_text
from ..designs.base import Design, RoundContext, RoundOutcome
from ..designs.registry import design_for
from ..errors import ConfigError
from ..mechanisms.guarantees import config_guarantee
from ..message import CHANNELS, UPLINKS, Message, tensor_from_bytes
from ..models.loading import load_task_model, load_tokenizer, resolve_model
from ..models.split import BottomModel, depth_of, split_model
from ..progress import plain_lines, progress_bar
from ..runs import RunDir, RunSession, Summary, Totals
from ..seeding import seed_everything
from ..simulation.backend import BACKENDS, ReplicaLost
from ..simulation.clock import simulate_round
from ..simulation.pool import ActorPool
from ..simulation.population import Population, RoundPlan
from ..simulation.protocol import DeviceResult, Fault, derive_seed
from ..simulation.replica import ReplicaSetup
from ..simulation.tiers import BottomFootprint, assign_tiers
from ..simulation.worker import WorkerSetup
from ..training.server import add_cloud_levers, lora_targets
from ..training.warm_start import load_public, prepare_cloud_top
from .tasks import classification_spec, load_task_data, top_device

EVAL_SEED = 0xE7A1


@dataclass(frozen=True)
class Command:
    """What differs between the commands the engine runs."""

    name: str  # "train" | "simulate": the summary's command, the design's check
    preloaded: bool = False  # devices hold the bottom and know their task before round 0: nothing downloaded for it
    log_every: int | None = None  # a metrics.csv row every log_every rounds (train: rounds are optimiser steps)


SIMULATE = Command("simulate")


def train_command(cfg: Config) -> Command:
    return Command("train", preloaded=True, log_every=cfg.train.log_every)


def one_device(cfg: Config, rounds: int) -> Config:
    """``cfg`` as the engine runs ``train``: one always-available device with the whole training split and the
    bottom, zero latency and unbounded bandwidth, a round per step of ``train.batch_size`` samples (length-bucketed
    as ``train.length_bucketing`` says), evaluations and checkpoints every ``train.eval_every`` and
    ``train.checkpoint_every`` steps, in this process."""
    local = TierConfig(
        name="local",
        uplink_mbps=math.inf,
        downlink_mbps=math.inf,
        latency_ms=0.0,
        memory_mb=math.inf,
        availability=1.0,
        dropout=0.0,
    )
    sim = dataclasses.replace(
        cfg.simulation,
        backend="inprocess",
        devices=1,
        tiers=[local],
        partition="iid",
        rounds=rounds,
        devices_per_round=1,
        local_batch_size=cfg.train.batch_size,
        length_bucketing=cfg.train.length_bucketing,
        deadline_s=None,
        top_replicas=1,
        prefetch=False,
        eval_every=cfg.train.eval_every,
        checkpoint_every=cfg.train.checkpoint_every,
    )
    return dataclasses.replace(cfg, simulation=sim)


@dataclass
class Setup:
    """Everything loaded and checked before the run directory is written."""

    cfg: Config
    design: Design
    population: Population
    train: TokenizedSplit
    eval: TokenizedSplit
    pad_id: int
    download_bytes: dict[int, int]  # depth -> bytes of the bottom's weights
    num_labels: int
    cloud: Any = None  # the design's coordinator state (GuardedTuning's adapters)
    task_model: Any = None
    attack_splits: dict = field(default_factory=dict)  # device depth -> split the attacks fit on (attack.enabled)
    tokenizer: Any = None
    aux: TokenizedSplit | None = None
    command: Command = SIMULATE
    public: TokenizedSplit | None = None  # the cloud's public text (train.warm_start, train.denoiser.pretrain_steps)
    public_dropped: int = 0  # public sentences dropped because a device or the evaluation holds them


def _train_epoch(design: Design, train: TokenizedSplit, per_epoch: int, seed: int, device: int, epoch: int):
    """``train``'s one device sends the design's epoch of batches (``Design.train_batches``: shuffled and
    length-bucketed; EW-Tune's Poisson batches at q = batch / N), the same batches the single-process loop sent."""
    return design.train_batches(train, per_epoch, seed=seed * 1000 + epoch)


def _fit_mechanism(design: Design, worker, task) -> None:
    """On a worker: fit (and cache) the mechanism of ``task``'s device on its data, as its first task would."""
    worker.mechanism(task)


def prepare(cfg: Config, command: Command = SIMULATE) -> Setup:
    """Load the model and data, size the tiers, draw the population; every bad input fails here. For ``train``
    (``command``), the population is :func:`one_device`'s, with a round per step of the design's plan."""
    design = design_for(cfg, command.name)
    if not design.cloud_levers and (
        uses_public_text(cfg) or cfg.train.denoiser.kind != "none" or cfg.train.head_pooling != "token"
    ):
        raise ConfigError(
            f"design {design.name!r} builds its own cloud part, without train.warm_start, train.denoiser or "
            "train.head_pooling: set train.warm_start.enabled=false, train.denoiser.kind=none and "
            "train.head_pooling=token, or use design.name=split"
        )
    spec = classification_spec(cfg, command.name)
    seed_everything(cfg.seed)
    task_model = load_task_model(cfg.model.name, cfg.model.task, spec.num_labels)
    split = split_model(task_model, cfg.model.split_depth, task=cfg.model.task, name=cfg.model.name)  # checks m ≤ L
    if cfg.train.lora.enabled:
        lora_targets(split.top, split.family, cfg.train.lora)
    tokenizer = load_tokenizer(cfg.model.name)
    train, evals = load_task_data(cfg, tokenizer, spec)
    aux = None
    if cfg.attack.enabled:
        aux, train = attacker_data(cfg, tokenizer, train)
    epoch_batches = None
    if command.name == "train":  # one device, a round per batch of the design's epochs (EW-Tune: Poisson batches)
        per_epoch, steps = design.train_plan(len(train), -(-len(train) // cfg.train.batch_size), cfg.train.max_steps)
        cfg = one_device(cfg, steps)
        design = design_for(cfg, command.name)
        epoch_batches = partial(_train_epoch, design, train, per_epoch, cfg.seed)
    sim = cfg.simulation

    depth = depth_of(task_model)
    full = split_model(task_model, 0, task=cfg.model.task, name=cfg.model.name)
    footprint = BottomFootprint.measure(full, task_model.config, sim.local_batch_size, cfg.model.max_length)
    tier_depth = np.array([footprint.max_depth(t, cfg.model.split_depth) for t in sim.tiers], dtype=np.int16)
    design.check_tiers(footprint, sim.tiers, depth)
    cloud = design.cloud_state(task_model)
    public, public_dropped = None, 0  # the cloud's public text for its warm start and denoiser
    if uses_public_text(cfg):
        public, public_dropped = load_public(cfg, tokenizer, [train.texts, evals.texts])

    tiers = assign_tiers(sim, cfg.seed)
    weights = np.array([t.data_weight for t in sim.tiers])[tiers]
    skew = {"dirichlet": {"alpha": sim.partition_alpha}, "lognormal": {"sigma": sim.partition_sigma}}
    parts = partition(
        train.labels, sim.devices, sim.partition, seed=cfg.seed, weights=weights, **skew.get(sim.partition, {})
    )
    population = Population(
        sim,
        cfg.seed,
        tiers,
        tier_depth[tiers],
        parts,
        poisson=design.poisson and epoch_batches is None,
        lengths=train.lengths if sim.length_bucketing else None,
        epoch_batches=epoch_batches,
    )
    downloads = {
        int(m): footprint.download_bytes(BottomModel(full.family, task_model, int(m)))
        for m in np.unique(population.depth)
    }
    attack_splits = {}  # device depth -> the split behind its uploads, which the attacker fits through
    if cfg.attack.enabled:
        for m in np.unique(population.depth):
            cut = design.attack_depth(depth, int(m))
            attack_splits[int(m)] = split_model(task_model, cut, task=cfg.model.task, name=cfg.model.name)
    design.prepare(population)
    return Setup(
        cfg,
        design,
        population,
        train,
        evals,
        tokenizer.pad_token_id,
        downloads,
        spec.num_labels,
        cloud,
        task_model,
        attack_splits,
        tokenizer,
        aux,
        command,
        public,
        public_dropped,
    )


def start_backend(
    setup: Setup, on_fault: Callable[[Fault], None] | None = None, prepared_top: bytes | None = None
) -> ActorPool:
    """The actor pool on ``simulation.backend``. In-process: everything in this process on ``train.threads`` (all
    cores), the top on ``train.device``. Ray: actors with their own threads; replicas take the cluster's GPUs.
    ``prepared_top``: the top's weights after the cloud's levers on public text (:func:`prepare_public_top`)."""
    cfg, sim = setup.cfg, setup.cfg.simulation
    cores = os.cpu_count() or 1
    entry = int(setup.population.depth.min())  # the shallowest device's h enters the top first
    if sim.backend == "inprocess":
        worker_threads = replica_threads = cfg.train.threads or cores
        torch.set_num_threads(worker_threads)
        device = top_device(cfg.train.device)
    else:
        worker_threads = sim.worker_threads or max(1, cores // sim.device_workers)
        replica_threads = sim.replica_threads or max(1, cores // sim.top_replicas)
        device = "cpu"  # the Ray backend moves replicas to cuda where it gives them GPUs
    workers = WorkerSetup(cfg, setup.design, setup.num_labels, setup.train, setup.eval, threads=worker_threads)
    replicas = ReplicaSetup(
        cfg, setup.design, setup.num_labels, entry, replica_threads, device=device, prepared_top=prepared_top
    )
    return ActorPool(BACKENDS[sim.backend].start(workers, replicas, sim, on_fault))


@dataclass
class _Window:
    """The rounds since the last ``metrics.csv`` row: when it began (perf_counter seconds), samples trained on, their
    summed loss (nats), tokens."""

    start: float
    samples: int = 0
    loss_sum: float = 0.0
    tokens: int = 0

    def add(self, samples: int, loss_sum: float, tokens: int) -> None:
        self.samples += samples
        self.loss_sum += loss_sum
        self.tokens += tokens


class Coordinator:
    """Runs the rounds of one run (a simulation, or ``train``'s one device) and writes its run directory."""

    def __init__(self, setup: Setup, pool: ActorPool, session: RunSession, log=print, hooks=None):
        self.setup, self.cfg, self.sim, self.design = setup, setup.cfg, setup.cfg.simulation, setup.design
        self.population, self.pool, self.session, self.log = setup.population, pool, session, log
        self.run = session.run
        self.backend = pool.backend  # the transport (tests kill its actors)
        self.hooks: dict[str, Callable] = hooks or {}
        self.totals = Totals()
        self.cloud = setup.cloud
        self.attacks: AttackRounds | None = None  # on the uploads and, where the design returns them, the gradients
        self.faults: list[Fault] = []
        self._privacy: dict[int, tuple[float, float]] = {}
        self._wall = (time.perf_counter(), 0.0)
        self.command = setup.command
        self._window = _Window(time.perf_counter())  # metrics.csv: the rounds since its last row

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        self.session.save(
            {
                "totals": asdict(self.totals),
                "population": self.population.state_dict(),
                "top": self.pool.top_state(),
                "cloud": self.cloud.state_dict() if self.cloud is not None else None,
                # after the last round no round is redone to refill the attacks' victims: keep them
                "victims": self.attacks.victims()
                if self.attacks and self.totals.rounds_done == self.sim.rounds
                else None,
            }
        )

    def restore(self, at_round: int) -> None:
        """Back to the last checkpoint (from round ``at_round``): top weights and optimiser, device cursors,
        totals; the rows written after it are dropped."""
        state = self.session.load(self.log)
        self.totals = Totals(**state["totals"])  # (the wall clock of the rounds row keeps counting real time)
        self.population.load_state_dict(state["population"])
        self.pool.restore(state["top"], at_round)
        if self.cloud is not None:
            self.cloud.load_state_dict(state["cloud"])
        done = self.totals.rounds_done
        for table in ("rounds", "devices"):
            self.run.truncate(table, done - 1, key="round")  # rows of rounds 0..done-1 stay
        self.run.truncate("eval", done, key="rounds_done")
        self.run.truncate("attacks", done)
        self.run.truncate("metrics", done)
        self._window = _Window(time.perf_counter())
        if self.attacks is not None:
            self.attacks.reset()  # the redone rounds refill the victim samples
            if state.get("victims") is not None:  # none to redo: the last round's victims
                self.attacks.restore_victims(state["victims"])

    # ------------------------------------------------------------------ rounds

    def train(self, resume: bool = False) -> None:
        """The rounds, then (where due) each round's attack round, checkpoint and evaluation, in that order: the
        checkpoint comes before the evaluation, so a replica lost while evaluating rolls back to that very round
        and only the evaluation is redone. The final evaluation is one of them (after a checkpoint of the last
        round): its result is ``self.final``."""
        self.final: dict | None = None
        eval_due = False  # the evaluation of the round just checkpointed is still to run
        if resume and self.session.has_checkpoint:
            self.restore(at_round=-1)
            self.log(f"privtune-ray: resuming at round {self.totals.rounds_done}/{self.sim.rounds}")
            done = self.totals.rounds_done
            eval_due = self._eval_at(done) and not self.run.has_row("eval", done, key="rounds_done")
            if done == self.sim.rounds:  # the final evaluation and attacks are not read back: redo them, rows and all
                self.run.truncate("eval", done - 1, key="rounds_done")
                self.run.truncate("attacks", done - 1)
                eval_due = True
        else:
            self.checkpoint()  # round 0: the state a replica failure in the first rounds rolls back to
        self._prefetched: tuple[int, list] | None = None
        failures: dict[tuple[str, int], int] = {}
        self._wall = (time.perf_counter(), self.totals.train_wall_s)  # (session start, wall before it)
        bar = progress_bar(
            total=self.sim.rounds, initial=self.totals.rounds_done, desc="rounds", enabled=self.cfg.train.progress
        )
        while eval_due or self.totals.rounds_done < self.sim.rounds:
            r, step = self.totals.rounds_done, "evaluation" if eval_due else "round"
            try:
                if eval_due:
                    self._evaluate_round()
                    eval_due = False
                else:
                    self._one_round(r)
                    bar.update(1)
                    eval_due = self._after_round()
            except ReplicaLost as exc:
                failures[step, r] = failures.get((step, r), 0) + 1
                if failures[step, r] > self.sim.max_retries:
                    raise
                self._prefetched = None
                self._fault(Fault(r, "top_replica", -1, f"{exc} ({step})", "rolling back to the last checkpoint"))
                reached, rollbacks = self.totals.rounds_done, self.totals.rollbacks + 1
                self.restore(r)
                self.totals.rollbacks = rollbacks
                bar.n = self.totals.rounds_done
                done = self.totals.rounds_done
                eval_due = done == reached and self._eval_at(done)  # lost while evaluating the checkpointed round
                what = "its evaluation to redo" if eval_due else f"{reached - done} completed round(s) to redo"
                self._fault(Fault(r, "run", -1, what, f"rolled back to the checkpoint after {done} rounds"))
            finally:
                self.drain_faults()
        bar.close()

    def _one_round(self, r: int) -> None:
        """Round ``r``: plan, the device tasks (or the ones prefetched), the design's cloud round, the records."""
        plan = self.population.plan(r)
        self.design.begin_round(self.pool, self.cloud, r)
        prefetched = self._prefetched
        pending = prefetched[1] if prefetched and prefetched[0] == r else self.pool.run_devices(plan.tasks)
        self._prefetched = None
        self._hook("devices_started", r)
        results = self.pool.gather(pending)
        self.population.commit(plan)
        if self.sim.prefetch and r + 1 < self.sim.rounds:
            self._prefetched = (r + 1, self.pool.run_devices(self.population.plan(r + 1).tasks))
        self._hook("training", r)
        self._round(plan, results)

    def _eval_at(self, done: int) -> bool:
        """An evaluation follows round ``done``: every ``eval_every`` rounds, and the final one after the last."""
        every = self.sim.eval_every
        return done == self.sim.rounds or (every is not None and done % every == 0)

    def _after_round(self) -> bool:
        """The attack round and the checkpoint where they are due; returns whether an evaluation is due now."""
        done = self.totals.rounds_done
        if self.attacks and self.cfg.attack.every and done % self.cfg.attack.every == 0 and done < self.sim.rounds:
            self.attacks.round(done)
        if done % self.sim.checkpoint_every == 0 or done == self.sim.rounds:
            self.checkpoint()
        return self._eval_at(done)

    def _evaluate_round(self) -> None:
        done = self.totals.rounds_done
        result = self.evaluate()
        if done == self.sim.rounds:
            self.final = result
            return
        if self.command.name == "train":
            self.log(
                f"privtune-ray: step {done}: {self.cfg.data.eval_split} accuracy {result['accuracy']:.4f}, "
                f"loss {result['loss']:.4f}"
            )
            return
        by_depth = ", ".join(f"m={m} {v['accuracy']:.4f}" for m, v in result["per_depth"].items())
        self.log(
            f"privtune-ray: round {done}/{self.sim.rounds}: dev accuracy {result['accuracy']:.4f} "
            f"(by depth: {by_depth}); simulated {self.totals.sim_time_s:.0f} s"
        )

    def _round(self, plan: RoundPlan, results: list[DeviceResult]) -> None:
        """The design's cloud side of a round whose device results are in, its clock and its records."""
        ctx = RoundContext(
            self.cfg,
            self.pool,
            plan,
            {res.report.device: res for res in results},
            self.totals.sim_time_s,
            self._download_bytes,
            lambda on_time, payloads: self._observe(plan, on_time, payloads),
            self.cloud,
            observe_updates=self.attacks is not None and self.attacks.update_attack is not None,
        )
        outcome = self.design.cloud_round(ctx)
        if self.attacks is not None and outcome.updates:
            tasks = {d.device: d.task for d in plan.devices if d.task is not None}
            for i, gradients in outcome.updates.items():
                batch = collate(self.setup.train, tasks[i].samples, self.setup.pad_id)
                self.attacks.observe_update(AdapterUpdate(gradients, batch.input_ids, batch.attention_mask))
        if self.attacks is not None and self.design.returns_gradients:
            tasks = {d.device: d.task for d in plan.devices if d.task is not None}
            for i, (a2, grad) in outcome.returned.items():
                batch = collate(self.setup.train, tasks[i].samples, self.setup.pad_id)
                self.attacks.observe_returned(tensor_from_bytes(a2), tensor_from_bytes(grad), batch)
        clock = simulate_round(
            self.totals.sim_time_s, outcome.timings, self.pool.n_replicas, outcome.step.seconds, outcome.deadline_s
        )
        self._record(plan, ctx.results, outcome, clock)

    def _download_bytes(self, r: int, d) -> int:
        """What a device downloads before its work in round ``r``: the instruction, the bottom's weights on its
        first round, and what the design adds (GuardedTuning: the round's adapters)."""
        if self.command.preloaded:  # the device holds its bottom and its task (train's one local device)
            return self.design.download_bytes(self.cloud, d.first_time)
        n = len(self._request(r, d)) + (self.setup.download_bytes[d.depth] if d.first_time else 0)
        return n + self.design.download_bytes(self.cloud, d.first_time)

    def _request(self, r: int, d) -> bytes:
        """The round's instruction to a device (what it downloads besides, once, the bottom's weights)."""
        n = 0 if d.task is None else len(d.task.samples)
        instruction = {
            "round": r,
            "device": d.device,
            "samples": n,
            "split_depth": d.depth,
            "mechanism": self.cfg.mechanism.name,
        }
        return json.dumps(instruction).encode()

    def _record(self, plan: RoundPlan, results: dict[int, DeviceResult], outcome: RoundOutcome, clock) -> None:
        """One ``devices.csv`` row per selected device and the ``rounds.csv`` row; the totals."""
        r, t = plan.round, self.totals
        rows, timing = [], {x.device: x for x in outcome.timings}
        loss_sum = sum(x.loss_sum for x in outcome.top)
        trained = sum(x.samples for x in outcome.top)
        for d in plan.devices:
            event, tm, tier = clock.events[d.device], timing[d.device], self.sim.tiers[d.tier]
            res = results.get(d.device)
            report = res.report if res else None
            if outcome.channels is not None:
                ch = outcome.channels.get(d.device, {})
                bytes_up = sum(ch[c] for c in UPLINKS if c in ch)
            else:
                bytes_up = report.bytes_up if report else 0
                ch = {"act_up": bytes_up}
            releases = self.population.releases(d.device)
            eps, eta = self.privacy(releases)
            rows.append(
                {
                    "round": r,
                    "device": d.device,
                    "tier": tier.name,
                    "depth": d.depth,
                    "status": event.status,
                    "samples": report.samples if report else 0,
                    "tokens": report.tokens if report else 0,
                    "bytes_up": bytes_up,
                    "bytes_down": outcome.bytes_down[d.device],
                    **{f"bytes_{c}": ch.get(c, 0) for c in CHANNELS},
                    "compute_s": (report.compute_s + outcome.extra_compute_s.get(d.device, 0.0)) if report else 0.0,
                    "mechanism_s": report.mechanism_s if report else 0.0,
                    "top_s": tm.top_s,
                    "sim_download_s": tm.download_s,
                    "sim_compute_s": tm.compute_s,
                    "sim_upload_s": tm.upload_s,
                    "sim_arrival_s": event.arrival_s,
                    "sim_top_start_s": event.top_start_s,
                    "sim_top_end_s": event.top_end_s,
                    "releases": releases,
                    "epsilon": eps,
                    "eta_per_unit": eta,
                    "worker": report.worker if report else "",
                    "attempts": res.attempts if res else 0,
                }
            )
        self.run.append_rows("devices", rows)
        status = [row["status"] for row in rows]
        keys = ("samples", "tokens", "bytes_up", "bytes_down", "compute_s", "mechanism_s", "top_s")
        sums = {k: sum(row[k] for row in rows) for k in keys}
        device_s = sums["compute_s"] + sums["mechanism_s"]
        t.rounds_done += 1
        t.train_wall_s = self._wall[1] + time.perf_counter() - self._wall[0]
        t.sim_time_s = clock.end_s
        t.samples += trained
        t.sent += sums["samples"]
        t.tokens += sums["tokens"]
        t.bytes_up += sums["bytes_up"]
        t.bytes_down += sums["bytes_down"]
        for c in CHANNELS:
            t.channel_bytes[c] = t.channel_bytes.get(c, 0) + sum(row[f"bytes_{c}"] for row in rows)
        t.device_compute_s += device_s
        t.mechanism_compute_s += sums["mechanism_s"]
        t.top_compute_s += sums["top_s"] + outcome.step.seconds
        t.dropped += status.count("dropped")
        t.late += status.count("late")
        row = {
            "round": r,
            "online": plan.online,
            "selected": len(rows),
            "ok": status.count("ok"),
            "dropped": status.count("dropped"),
            "late": status.count("late"),
            "samples": trained,
            "loss": loss_sum / trained if trained else float("nan"),
            "lr": outcome.step.lr,
            "bytes_up": sums["bytes_up"],
            "bytes_down": sums["bytes_down"],
            "device_compute_s": device_s,
            "top_step_s": outcome.step.seconds,
            "sim_start_s": clock.start_s,
            "sim_end_s": clock.end_s,
            "sim_round_s": clock.duration_s,
            "wall_s": t.train_wall_s,
            "samples_total": t.samples,
            **self.design.round_fields(t.rounds_done),
        }
        self.run.append("rounds", row)
        if self.command.name == "train":
            t.step, t.epoch = t.rounds_done, int(self.population.epoch[0])
        self._window.add(trained, loss_sum, sums["tokens"])
        every = self.command.log_every
        if every and (t.rounds_done % every == 0 or t.rounds_done == self.sim.rounds):
            self._metrics_row(row, sums)
        if plain_lines(self.cfg.train.progress):
            self._log_round(row)

    def _metrics_row(self, row: dict, sums: dict) -> None:
        """``metrics.csv``: a row per ``log_every`` rounds: the window's mean loss (nats) and samples/s, the totals."""
        t, w = self.totals, self._window
        now = time.perf_counter()
        self.run.append(
            "metrics",
            {
                "step": t.rounds_done,
                "epoch": int(self.population.epoch.max()),
                "loss": w.loss_sum / w.samples if w.samples else float("nan"),
                "lr": row["lr"],
                "samples": t.samples,
                "tokens": t.tokens,
                "bytes_up": t.bytes_up,
                "bytes_down": t.bytes_down,
                "samples_per_s": w.samples / max(now - w.start, 1e-9),
                "bottom_s": t.device_compute_s - t.mechanism_compute_s,
                "mechanism_s": t.mechanism_compute_s,
                "top_s": t.top_compute_s,
                "comm_s": t.comm_s,
                "elapsed_s": t.train_wall_s,
                **self.design.round_fields(t.rounds_done),
            },
        )
        self._window = _Window(now)

    def _log_round(self, row: dict) -> None:
        t = self.totals
        if self.command.name == "train":
            self.log(
                f"privtune-ray: step {t.rounds_done}/{self.sim.rounds}: loss {row['loss']:.4f}, "
                f"{t.bytes_up / 2**20:.1f} MiB up, {t.train_wall_s:.0f} s"
            )
            return
        self.log(
            f"privtune-ray: round {t.rounds_done}/{self.sim.rounds}: loss {row['loss']:.4f}, {row['ok']}/"
            f"{row['selected']} devices ok, simulated {t.sim_time_s:.0f} s, {t.bytes_up / 2**20:.1f} MiB up / "
            f"{t.bytes_down / 2**20:.1f} MiB down, {t.train_wall_s:.0f} s"
        )

    def privacy(self, releases: int) -> tuple[float, float]:
        """(ε of an (ε, δ) statement, η per unit of a metric-DP one) after ``releases`` releases; NaN if n/a."""
        if releases not in self._privacy:
            nan = float("nan")
            if releases == 0:
                self._privacy[releases] = (nan, nan)
            else:
                g = config_guarantee(self.cfg.mechanism, releases, self.cfg.model.max_length)
                self._privacy[releases] = (
                    g.epsilon if g.epsilon is not None else nan,
                    g.eta_per_unit if g.eta_per_unit is not None else nan,
                )
        return self._privacy[releases]

    # ------------------------------------------------------------------ evaluation, attacks, faults

    def evaluate(self) -> dict:
        """Accuracy and loss on the eval split, sent by an evaluation device at every depth in the population."""
        batches = batch_indices(self.setup.eval.lengths, self.cfg.train.eval_batch_size, shuffle=False, bucketing=True)
        self._hook("evaluating", self.totals.rounds_done)
        depths, counts = np.unique(self.population.depth, return_counts=True)
        per_depth, rows = {}, []
        for m, count in zip(depths.tolist(), counts.tolist()):
            seed = derive_seed(self.cfg.seed, EVAL_SEED, m, 0, 0)
            res = self.design.evaluate(self.pool, self.cloud, m, batches, seed)
            n = res.samples
            per_depth[m] = {
                "accuracy": res.correct / n,
                "loss": res.loss_sum / n,
                "samples": n,
                "devices": count,
                "bytes_up": res.bytes_up,
                "bytes_down": res.bytes_down,
            }
            done = self.totals.rounds_done
            rows.append(
                {"rounds_done": done, "step": done, "split": self.cfg.data.eval_split, "depth": m, **per_depth[m]}
            )
        self.run.append_rows("eval", rows)  # all depths or none: an evaluation cut short by a fault leaves no row
        weights = np.array([v["devices"] for v in per_depth.values()], dtype=float)
        accuracy = float(np.average([v["accuracy"] for v in per_depth.values()], weights=weights))
        loss = float(np.average([v["loss"] for v in per_depth.values()], weights=weights))
        bytes_up = sum(v["bytes_up"] for v in per_depth.values())
        bytes_down = sum(v["bytes_down"] for v in per_depth.values())
        return {
            "accuracy": accuracy,
            "loss": loss,
            "per_depth": per_depth,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
        }

    def _observe(self, plan: RoundPlan, on_time: list[int], payloads: list) -> None:
        """Hand the attacks every message, with its device's depth and tier (each depth has its own suite)."""
        if self.attacks is None or not self.attacks.attacks_uploads:
            return
        tasks = {d.device: d.task for d in plan.devices if d.task is not None}
        tiers = self.cfg.simulation.tiers
        for i, payload in zip(on_time, payloads):
            msg = Message.from_bytes(self.pool.fetch(payload))
            batch = collate(self.setup.train, tasks[i].samples, self.setup.pad_id)
            if msg.labels.numel() == 0:  # labels stayed on the device: ground truth for scoring only
                msg.labels = batch.labels
            tier = tiers[int(self.population.tier[i])].name
            self.attacks.observe_message(msg, batch, self.setup.train, depth=tasks[i].depth, tier=tier)

    def _fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def drain_faults(self) -> None:
        """Append the faults handled since the last drain to ``faults.csv`` and log them."""
        if self.faults:
            self.run.append_rows("faults", [asdict(f) for f in self.faults])
            for f in self.faults:
                self.log(f"privtune-ray: fault in round {f.round}: {f.component} {f.index} {f.what}; {f.action}")
            self.faults.clear()

    def _hook(self, name: str, r: int) -> None:
        if name in self.hooks:
            self.hooks[name](self, r)


def prepare_public_top(setup: Setup, log=print) -> tuple[bytes, dict]:
    """The cloud's levers on public text (``train.warm_start``, the denoiser's pre-training), run here once on the
    top from the shallowest device's depth (the top every replica builds): its weights for the replicas to load,
    and the record. Deeper devices' h enter later blocks of the same top."""
    cfg = setup.cfg
    assert setup.public is not None, "prepare() loads the public text when uses_public_text(cfg)"
    entry = int(setup.population.depth.min())
    split = split_model(setup.task_model, entry, task=cfg.model.task, name=cfg.model.name)
    # a copy: the top's blocks are the same modules as the attack splits' deeper bottoms
    split = dataclasses.replace(split, top=copy.deepcopy(split.top))
    add_cloud_levers(split.top, split.hidden_size, cfg.train)
    device = top_device(cfg.train.device) if cfg.simulation.backend == "inprocess" else "cpu"
    model_id = resolve_model(cfg.model.name)
    record = prepare_cloud_top(cfg, split, setup.tokenizer, model_id, setup.public, setup.public_dropped, device, log)
    buffer = io.BytesIO()
    torch.save(split.top.cpu().state_dict(), buffer)
    return buffer.getvalue(), record


def run_engine(
    cfg: Config,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    log=print,
    hooks=None,
    command: Command = SIMULATE,
) -> Path:
    """Run ``cfg`` as ``command`` says (``simulate``, or ``train``'s one device); returns the run directory. The run
    directory records ``cfg`` as given (``config.yaml``), not the one-device population ``train`` derives from it."""
    setup = prepare(cfg, command)
    prepared: bytes | None = None
    public_record: dict = {}
    if setup.public is not None and not (resume and out is not None and RunDir(Path(out)).has_checkpoint):
        prepared, public_record = prepare_public_top(setup, log)  # a checkpoint holds the prepared top
    faults: list[Fault] = []
    pool = start_backend(setup, on_fault=faults.append, prepared_top=prepared)
    try:
        session = RunSession.open(cfg, out, resume)
        if prepared is not None:
            session.run.write_json("public", public_record)
        elif setup.public is not None:
            public_record = session.run.read_json("public")
        if command.name == "train":
            log(f"privtune-ray: writing run to {session.run.path} (one device, {setup.cfg.simulation.rounds} steps)")
        else:
            log(
                f"privtune-ray: writing simulation to {session.run.path} ({pool.backend.name} backend, "
                f"{cfg.simulation.devices} devices)"
            )
        for line in setup.design.log_lines():
            log(f"privtune-ray: {line}")
        if command.preloaded:  # the devices hold their fitted mechanism too (PrivTune's importance) before round 0
            pool.on_workers(_fit_mechanism, [(task,) for task in setup.population.plan(0).tasks])
        coordinator = Coordinator(setup, pool, session, log=log, hooks=hooks)
        coordinator.faults = faults  # the transport's faults land in the coordinator's list
        start_attacks(coordinator, log)
        coordinator.train(resume=resume)  # the final evaluation too: a fault there is redone like any other
        result = coordinator.final
        assert result is not None  # train() ends after the final evaluation
        done = coordinator.totals.rounds_done
        attack_summary = coordinator.attacks.round(done, log=log) if coordinator.attacks else {}
        summary = _summary(coordinator, result, {**public_record, **attack_summary})
        session.finish(summary)
        log(f"privtune-ray: mechanism {cfg.mechanism.name}: {summary.privacy['statement']}")
        log(
            f"privtune-ray: dev accuracy {result['accuracy']:.4f} after {done} {'steps' if command.name == 'train' else 'rounds'}; "
            f"simulated {coordinator.totals.sim_time_s:.1f} s; {summary.bytes_up:,} bytes up"
        )
        log(f"privtune-ray: wrote {session.run.summary_path}")
        return session.run.path
    finally:
        pool.shutdown()


def start_attacks(coordinator: Coordinator, log) -> None:
    """The attack suites on what devices upload (the bottom's h̃, or GuardedTuning's A1), one per device depth, each
    fitted at the depth its uploads are released from; gradient matching where the design returns per-sample gradients (online). A design that uploads
    no per-sample tensor (offline) has nothing to attack."""
    cfg, setup, design = coordinator.cfg, coordinator.setup, coordinator.design
    if not cfg.attack.enabled:
        return
    aux = setup.aux
    assert aux is not None, "prepare() carves the attacker's auxiliary data when attack.enabled"
    update_attack = None
    if design.uploads_bottom_updates:  # ∇A_b of each device's local batch crosses (adapter_up)
        bottom = split_model(setup.task_model, cfg.model.split_depth, task=cfg.model.task, name=cfg.model.name).bottom
        model_id = resolve_model(cfg.model.name)
        update_attack = build_update_inversion(bottom, setup.tokenizer, model_id, aux, setup.train.texts, log=log)
    if not design.uploads_per_sample_tensor:
        log("privtune-ray: no per-sample tensor leaves a device while this design trains; its updates are attacked")
        if update_attack is not None:
            coordinator.attacks = AttackRounds(coordinator.run, cfg.attack.victim_samples, update_attack=update_attack)
        return

    def fit() -> tuple[dict[int, AttackSuite], list]:
        """The attacks on what the cloud holds now, one suite per device depth: the pretrained bottom at that depth,
        with the blocks the cloud holds trained loaded into the adaptive attacker's copy (GuardedTuning's A_b as the
        round sent it down); gradient matching through the A_t it holds, where gradients return."""
        held = design.held_blocks(coordinator.cloud)
        suites = {}
        for m, split in setup.attack_splits.items():
            adaptive = None
            if held is not None:
                adaptive = dataclasses.replace(split, bottom=copy.deepcopy(split.bottom))
                for index, state in held.items():
                    adaptive.bottom.blocks[index].load_state_dict(state)
            if len(setup.attack_splits) > 1:
                log(f"privtune-ray: fitting the attacks on uploads from depth m = {m}")
            suites[m] = AttackSuite.fit_on(
                cfg,
                split,
                setup.tokenizer,
                resolve_model(cfg.model.name),
                aux,
                cfg.data.dataset,
                setup.train.texts,
                log=log,
                adaptive_split=adaptive,
            )
        top = design.held_top(coordinator.cloud) if design.returns_gradients else None
        return suites, [held_gradient_matching(cfg, top, aux, log=log)] if top is not None else []

    # what the cloud holds changes as it trains (GuardedTuning's adapters): fitted at each attack round, not now
    refits = design.held_blocks(coordinator.cloud) is not None or (
        design.returns_gradients and design.held_top(coordinator.cloud) is not None
    )
    suites, gradient_attacks = ({}, []) if refits else fit()
    coordinator.attacks = AttackRounds(
        coordinator.run,
        cfg.attack.victim_samples,
        suites,
        gradient_attacks,
        refit=fit if refits else None,
        update_attack=update_attack,
    )


def _summary(c: Coordinator, result: dict, attack_summary: dict) -> Summary:
    cfg, t, pop = c.cfg, c.totals, c.population
    releases = max(pop.releases(i) for i in range(len(pop)))
    privacy = config_guarantee(cfg.mechanism, max(releases, 1), cfg.model.max_length)
    tiers = []
    for k, tier in enumerate(cfg.simulation.tiers):
        members = pop.tier == k
        tiers.append(
            {
                "name": tier.name,
                "devices": int(members.sum()),
                "split_depth": int(pop.depth[members][0]) if members.any() else None,
                "samples": int(sum(len(pop.parts[i]) for i in np.flatnonzero(members))),
            }
        )
    n_train = len(c.setup.train)
    backend = c.pool.describe()
    return Summary.of(
        cfg,
        c.command.name,
        c.design.defence(),
        privacy=privacy.to_dict(),
        utility=result["accuracy"],
        dev_loss=result["loss"],
        totals=t,
        details={
            "dev_accuracy": result["accuracy"],
            "devices": len(pop),
            "tiers": tiers,
            "rounds": t.rounds_done,
            "steps": t.rounds_done,  # the top's synchronous steps: one per round
            "epochs": round(t.samples / max(n_train, 1), 4),  # samples trained on / training split
            "train_split_size": n_train,
            "dev_samples": int(sum(v["samples"] for v in result["per_depth"].values()) / len(result["per_depth"])),
            "dev_by_depth": {str(m): v for m, v in result["per_depth"].items()},
            "bytes_up_eval": result["bytes_up"],  # the final evaluation's messages, every depth
            "bytes_down_eval": result["bytes_down"],
            "sent_samples": t.sent,
            "bytes_up_per_sample": t.bytes_up / max(t.sent, 1),
            "sim_time_s": t.sim_time_s,
            "dropped": t.dropped,
            "late": t.late,
            "rollbacks": t.rollbacks,
            "max_releases": releases,
            "backend": backend,
            "trainable_params": backend["replica"]["trainable_params"],
            "lora": cfg.train.lora.enabled,
            "bytes_by_channel": dict(t.channel_bytes),
            "warm_start": cfg.train.warm_start.objective if cfg.train.warm_start.enabled else "none",
            "denoiser": cfg.train.denoiser.kind,
            "head_pooling": cfg.train.head_pooling,
            **c.design.summary(c.cloud, t.rounds_done, pop),
            **attack_summary,
        },
        run_dir=c.run.path,
    )
