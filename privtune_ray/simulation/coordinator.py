"""The coordinator: rounds of split fine-tuning over a population of virtual devices.

Per round r (the data path, top to bottom):

1. plan: which online devices take part, who drops out, what each sends (``Population.plan``);
2. devices: each task runs bottom_{m_i} → mechanism → serialised message on a device worker;
3. clock: download, compute × factor, upload, arrival, FCFS queue at the replicas (``clock.simulate_round``);
   messages after the deadline are late and discarded;
4. top: one synchronous AdamW step on the mean loss of the round's on-time messages (all replicas); EW-Tune:
   one DP-SGD step on the Poisson round; GuardedTuning: the protocol's remaining phases between devices and the
   middle, then the middle's and the adapters' step (``simulation/guarded.py``);
5. record: ``devices.csv`` (one row per selected device), ``rounds.csv``, ``eval.csv``, ``faults.csv``,
   ``attacks.csv``, appended as produced; a checkpoint every ``checkpoint_every`` rounds.

With ``prefetch`` the devices of round r+1 run while the top trains on round r (the bottom is frozen and
no gradient returns to the devices, so their messages do not depend on the top). A replica that dies
rolls the run back to its last checkpoint; the rounds since are redone identically (every random draw is
seeded by (seed, device, round); with a deadline, which messages are late depends on measured seconds), so
no sample is lost or counted twice; ``faults.csv`` says what happened.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attacks.suite import VictimSample
from ..config import Config
from ..data.batching import TokenizedSplit, batch_indices, collate
from ..data.partition import partition
from ..designs.guarded import CHANNELS, GUARDED, guarded_layout
from ..errors import ConfigError
from ..mechanisms import config_guarantee
from ..message import Message
from ..models.loading import load_task_model, load_tokenizer, resolve_model
from ..models.split import BottomModel, depth_of, split_model
from ..progress import plain_lines, progress_bar
from ..runs import RunDir
from ..training.loop import (
    AttackRounds,
    attacker_data,
    classification_spec,
    load_task_data,
    seed_everything,
    top_device,
)
from .backends import Backend, InProcessBackend, RayBackend, ReplicaLost, connect_ray
from .clock import DeviceTiming, simulate_round, transfer_s
from .population import Population, RoundPlan
from .protocol import derive_seed
from .replica import ReplicaSetup
from .tiers import BottomFootprint, assign_tiers
from .worker import WorkerSetup

EVAL_SEED = 0xE7A1
UPLINKS = ("act_up", "grad_up", "adapter_up")


@dataclass
class Totals:
    """Cumulative totals of a run (checkpointed)."""

    rounds_done: int = 0
    sim_time_s: float = 0.0  # the simulated clock
    train_wall_s: float = 0.0  # real seconds in the round loop (all sessions of a resumed run)
    samples: int = 0  # samples the top model trained on
    sent: int = 0  # samples uploaded (late ones included)
    tokens: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    device_compute_s: float = 0.0  # measured bottom + mechanism seconds
    top_s: float = 0.0  # measured top seconds (accumulate + step)
    dropped: int = 0
    late: int = 0
    rollbacks: int = 0
    channel_bytes: dict = field(default_factory=dict)  # bytes per channel (act_up, grad_down, ...), all devices


@dataclass
class Setup:
    """Everything loaded and checked before the run directory is written."""

    cfg: Config
    population: Population
    train: TokenizedSplit
    eval: TokenizedSplit
    pad_id: int
    download_bytes: dict[int, int]  # depth -> bytes of the bottom's weights
    num_labels: int
    attack_split: object = None  # the split model the attack suite fits on (attack.enabled)
    tokenizer: object = None
    aux: TokenizedSplit | None = None
    dp_plan: object = None  # design ewtune: the DP-SGD plan (designs/ewtune.py DPPlan), one step per round
    guarded: object = None  # designs online / gradfree / offline: simulation/guarded.py GuardedRounds


def prepare(cfg: Config) -> Setup:
    """Load the model and data, size the tiers, draw the population; every bad input fails here."""
    spec = classification_spec(cfg, "simulate")
    sim = cfg.simulation
    seed_everything(cfg.seed)
    task_model = load_task_model(cfg.model.name, cfg.model.task, spec.num_labels)
    requested = split_model(task_model, cfg.model.split_depth, task=cfg.model.task, name=cfg.model.name)  # checks m ≤ L
    full = split_model(task_model, 0, task=cfg.model.task, name=cfg.model.name)
    footprint = BottomFootprint.measure(full, task_model.config, sim.local_batch_size, cfg.model.max_length)
    tier_depth = np.array([footprint.max_depth(t, cfg.model.split_depth) for t in sim.tiers], dtype=np.int16)
    guarded = None
    if cfg.design.name in GUARDED:
        guarded = prepare_guarded(cfg, task_model, footprint)
        requested = split_model(
            task_model, guarded.layout.m + guarded.layout.a, task=cfg.model.task, name=cfg.model.name
        )

    tokenizer = load_tokenizer(cfg.model.name)
    train, evals = load_task_data(cfg, tokenizer, spec)
    aux = None
    if cfg.attack.enabled:
        aux, train = attacker_data(cfg, tokenizer, train)

    tiers = assign_tiers(sim, cfg.seed)
    weights = np.array([t.data_weight for t in sim.tiers])[tiers]
    skew = {"dirichlet": {"alpha": sim.partition_alpha}, "lognormal": {"sigma": sim.partition_sigma}}.get(
        sim.partition, {}
    )
    parts = partition(train.labels, sim.devices, sim.partition, seed=cfg.seed, weights=weights, **skew)
    population = Population(sim, cfg.seed, tiers, tier_depth[tiers], parts, poisson=cfg.design.name == "ewtune")
    downloads = {
        int(m): footprint.download_bytes(BottomModel(full.family, task_model, int(m)))
        for m in np.unique(population.depth)
    }
    attack_split = requested if cfg.attack.enabled else None
    dp_plan = plan_simulated_dp(cfg, population) if cfg.design.name == "ewtune" else None
    return Setup(
        cfg,
        population,
        train,
        evals,
        tokenizer.pad_token_id,
        downloads,
        spec.num_labels,
        attack_split,
        tokenizer,
        aux,
        dp_plan,
        guarded,
    )


def prepare_guarded(cfg: Config, task_model, footprint: BottomFootprint):
    """GuardedTuning's checks and its global adapters. Every device runs the same layout, so every tier must hold
    the frozen bottom and both adapters (memory as for a bottom of m + 2a blocks) [ours]."""
    from .guarded import GuardedRounds

    sim, layout = cfg.simulation, guarded_layout(cfg, depth_of(task_model))
    needs = {
        "mechanism.name": (cfg.mechanism.name == "none", "none (GuardedTuning protects A1 by dCor and quantisation)"),
        "train.lora.enabled": (not cfg.train.lora.enabled, "false (the middle and adapters are fully fine-tuned)"),
        "simulation.prefetch": (not sim.prefetch, "false (a round's uploads depend on the adapters of that round)"),
        "simulation.deadline_s": (sim.deadline_s is None, "null (every exchange of a round is waited for)"),
    }
    for key, (ok, fix) in needs.items():
        if not ok:
            raise ConfigError(f"design.name={cfg.design.name} needs {key}={fix}")
    blocks = layout.m + 2 * layout.a
    for tier in sim.tiers:
        if footprint.max_depth(tier, blocks) < blocks:
            raise ConfigError(
                f"device tier {tier.name!r} (memory_mb={tier.memory_mb:g}) cannot hold GuardedTuning's {layout.m} frozen "
                f"and {2 * layout.a} adapter blocks: raise its memory_mb, or lower model.split_depth or design.adapter_layers"
            )
    return GuardedRounds(cfg, task_model, layout)


def plan_simulated_dp(cfg: Config, population: Population):
    """EW-Tune across devices: one DP-SGD step per round on a Poisson round (``Population.poisson``: every sample
    joins with the public rate q = :meth:`Population.dp_sample_rate`), σ calibrated for ``simulation.rounds``
    steps at q. One top replica (the noise is added once, to the round's clipped sum) and no deadline (which
    messages are late depends on the data's compute time, so a deadline would make inclusion data-dependent)."""
    from ..designs.ewtune import plan_dp_sgd

    sim = cfg.simulation
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
    return plan_dp_sgd(cfg.design, population.dp_sample_rate(), steps=sim.rounds)


def start_backend(setup: Setup) -> Backend:
    """In-process: everything in this process on ``train.threads`` (all cores), the top on ``train.device``.
    Ray: actors with their own threads; replicas take the cluster's GPUs (``simulation.replica_gpus``)."""
    cfg, sim = setup.cfg, setup.cfg.simulation
    cores = os.cpu_count() or 1
    entry = int(setup.population.depth.min())  # the shallowest device's h enters the top first
    dp = None if setup.dp_plan is None else (setup.dp_plan, setup.population.expected_batch_size())
    if sim.backend == "inprocess":
        threads = cfg.train.threads or cores
        torch.set_num_threads(threads)
        worker_setup = WorkerSetup(cfg, setup.num_labels, setup.train, setup.eval, threads=threads)
        replica_setup = ReplicaSetup(cfg, setup.num_labels, entry, threads, device=top_device(cfg.train.device), dp=dp)
        return InProcessBackend(worker_setup, replica_setup, sim.device_workers, sim.top_replicas)
    connect_ray(sim.address)
    worker_setup = WorkerSetup(
        cfg,
        setup.num_labels,
        setup.train,
        setup.eval,
        threads=sim.worker_threads or max(1, cores // sim.device_workers),
    )
    replica_threads = sim.replica_threads or max(1, cores // sim.top_replicas)
    return RayBackend(worker_setup, ReplicaSetup(cfg, setup.num_labels, entry, replica_threads, dp=dp), sim)


class Coordinator:
    """Runs the rounds of one simulation and writes its run directory."""

    def __init__(
        self, setup: Setup, backend: Backend, run: RunDir, log=print, hooks: dict[str, Callable] | None = None
    ):
        self.setup, self.cfg, self.sim = setup, setup.cfg, setup.cfg.simulation
        self.population, self.backend, self.run, self.log = setup.population, backend, run, log
        self.hooks = hooks or {}
        self.totals = Totals()
        self.attacks = None
        self.label_attack = None  # GuardedTuning online: gradient matching on the returned ∂ℓ/∂A2
        self.guarded = setup.guarded
        self._privacy: dict[int, tuple[float, float]] = {}

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_path

    def checkpoint(self) -> None:
        state = {
            "totals": asdict(self.totals),
            "population": self.population.state_dict(),
            "top": self.backend.top_state(),
            "guarded": self.guarded.state_dict() if self.guarded else None,
        }
        self.run.save_checkpoint(state)

    def restore(self, at_round: int) -> None:
        """Back to the last checkpoint (from round ``at_round``): top weights and optimiser, device cursors,
        totals; the rows written after it are dropped."""
        state = self.run.load_checkpoint(self.log)
        self.totals = Totals(**state["totals"])  # (the wall clock of the rounds row keeps counting real time)
        self.population.load_state_dict(state["population"])
        self.backend.restore_replicas(state["top"], at_round)
        if self.guarded is not None:
            self.guarded.load_state_dict(state["guarded"])
        done = self.totals.rounds_done
        for table in ("rounds", "devices"):
            self.run.truncate(table, done - 1, key="round")  # rows of rounds 0..done-1 stay
        self.run.truncate("eval", done, key="rounds_done")
        self.run.truncate("attacks", done)
        if self.attacks is not None:
            self.attacks.sample = VictimSample(self.cfg.attack.victim_samples)  # the redone rounds refill it
        if self.label_attack is not None:
            self.label_attack.victims = VictimSample(self.cfg.attack.victim_samples)

    # ------------------------------------------------------------------ rounds

    def train(self, resume: bool = False) -> None:
        if resume and (self.checkpoint_path.exists() or self.run.previous_checkpoint_path.exists()):
            self.restore(at_round=-1)
            self.log(f"privtune-ray: resuming at round {self.totals.rounds_done}/{self.sim.rounds}")
        else:
            self.checkpoint()  # round 0: the state a replica failure in the first rounds rolls back to
        prefetched = None
        failures: dict[int, int] = {}
        self._wall = (time.perf_counter(), self.totals.train_wall_s)  # (session start, wall before it)
        bar = progress_bar(
            total=self.sim.rounds, initial=self.totals.rounds_done, desc="rounds", enabled=self.cfg.train.progress
        )
        while self.totals.rounds_done < self.sim.rounds:
            r = self.totals.rounds_done
            plan = self.population.plan(r)
            self.backend.current_round = r
            if self.guarded is not None:  # the round's adapters, on every worker before its devices run
                self.backend.broadcast("load_adapters", self.backend.share(self.guarded.state_blob()))
            pending = prefetched[1] if prefetched and prefetched[0] == r else self.backend.run_devices(plan.tasks)
            prefetched = None
            self._hook("devices_started", r)
            try:
                results = self.backend.gather(pending)
                self.population.commit(plan)
                if self.sim.prefetch and r + 1 < self.sim.rounds:
                    prefetched = (r + 1, self.backend.run_devices(self.population.plan(r + 1).tasks))
                self._hook("training", r)
                self._round(plan, results)
                bar.update(1)
                self._after_round()
            except ReplicaLost as exc:
                failures[r] = failures.get(r, 0) + 1
                if failures[r] > self.sim.max_retries:
                    raise
                prefetched = None
                self._fault(r, "top_replica", -1, str(exc), "rolling back to the last checkpoint")
                reached, rollbacks = self.totals.rounds_done, self.totals.rollbacks + 1
                self.restore(r)
                self.totals.rollbacks = rollbacks
                bar.n = self.totals.rounds_done
                self._fault(
                    r,
                    "run",
                    -1,
                    f"{reached - self.totals.rounds_done} completed round(s) to redo",
                    f"rolled back to the checkpoint after {self.totals.rounds_done} rounds",
                )
                continue
            finally:
                self._drain_faults()
        bar.close()

    def _after_round(self) -> None:
        """Evaluation, attack round and checkpoint where they are due (a replica lost here rolls back too)."""
        done = self.totals.rounds_done
        if self.sim.eval_every and done % self.sim.eval_every == 0 and done < self.sim.rounds:
            result = self.evaluate()
            by_depth = ", ".join(f"m={m} {v['accuracy']:.4f}" for m, v in result["per_depth"].items())
            self.log(
                f"privtune-ray: round {done}/{self.sim.rounds}: dev accuracy {result['accuracy']:.4f} "
                f"(by depth: {by_depth}); simulated {self.totals.sim_time_s:.0f} s"
            )
        if self.cfg.attack.every and done % self.cfg.attack.every == 0 and done < self.sim.rounds:
            if self.attacks:
                self.attacks.round(done)
            if self.label_attack:
                self.label_attack.round(done)
        if done % self.sim.checkpoint_every == 0 and done < self.sim.rounds:
            self.checkpoint()

    def _round(self, plan: RoundPlan, results: list) -> None:
        """Clock, top step and records of one round whose device results are in."""
        r, tiers = plan.round, self.sim.tiers
        by_device = {report.device: (report, payload, attempts) for report, payload, attempts in results}
        if self.guarded is not None:
            return self._guarded_round(plan, by_device)
        timings, bytes_down = [], {}
        for d in plan.devices:
            tier = tiers[d.tier]
            latency = tier.latency_ms / 1000
            bytes_down[d.device] = self._download_bytes(r, d)
            down_s = transfer_s(bytes_down[d.device], tier.downlink_mbps, latency, d.down_jitter)
            if d.dropped:
                timings.append(DeviceTiming(d.device, down_s, 0.0, 0.0, 0.0, dropped=True))
                continue
            report = by_device[d.device][0]
            compute = (report.compute_s + report.mechanism_s) * tier.compute_factor
            timings.append(
                DeviceTiming(
                    d.device, down_s, compute, transfer_s(report.bytes_up, tier.uplink_mbps, latency, d.up_jitter), 0.0
                )
            )
        # Which messages are late depends on arrivals only; the top's seconds are known after it trains on the
        # others, so the clock is run again with them for the round's record.
        arrivals = simulate_round(self.totals.sim_time_s, timings, len(self.backend.replicas), 0.0, self.sim.deadline_s)
        on_time = [d.device for d in plan.devices if arrivals.events[d.device].status == "ok"]

        top_results, step_s, lr = [], 0.0, float("nan")
        if on_time:
            payloads = [by_device[i][1] for i in on_time]
            top_results, step_s, lr = self.backend.train(
                payloads, [derive_seed(self.cfg.seed, i, r, 1) for i in on_time]
            )
            if self.attacks is not None:
                self._observe(plan, on_time, payloads)
        elif self.setup.dp_plan is not None:  # an empty Poisson round: DP-SGD still takes its (noise-only) step
            step_s, lr = self.backend.step_replicas(0)
        top_s = {i: res.top_s for i, res in zip(on_time, top_results)}
        for t in timings:
            t.top_s = top_s.get(t.device, 0.0)
        clock = simulate_round(self.totals.sim_time_s, timings, len(self.backend.replicas), step_s, self.sim.deadline_s)
        self._record(plan, by_device, bytes_down, clock, top_results, step_s, lr, timings)

    def _guarded_round(self, plan: RoundPlan, by_device: dict) -> None:
        """GuardedTuning: the protocol's phases for every device that did not drop out (no deadline), then the
        middle's and the adapters' synchronous step. The clock charges each device every transfer of its
        exchange (each with its latency) and all its compute, and serves the middle's seconds FCFS after the
        device's uploads [ours: the phases' interleaving is folded into one service]."""
        r, g = plan.round, self.guarded
        tasks = {d.device: d.task for d in plan.devices if d.task is not None}
        on_time = [d.device for d in plan.devices if d.task is not None]
        exchanges, top_results = g.exchange(
            self.backend, on_time, tasks, {i: by_device[i][1] for i in on_time}, {i: by_device[i][0] for i in on_time}
        )
        n = sum(x.samples for x in top_results)
        step_s, lr = self.backend.step_replicas(n) if on_time else (0.0, float("nan"))
        lr = g.step(n) if on_time else lr
        if self.attacks is not None and g.design != "offline":
            self._observe(plan, on_time, [by_device[i][1] for i in on_time])
        if self.label_attack is not None:
            self.label_attack.observe(g.last_returned, tasks)
        timings, bytes_down, channels = [], {}, {}
        for d in plan.devices:
            tier = self.sim.tiers[d.tier]
            latency, ex = tier.latency_ms / 1000, exchanges.get(d.device)
            model_down = self._download_bytes(r, d)
            down_s = transfer_s(model_down, tier.downlink_mbps, latency, d.down_jitter)
            if ex is None:  # dropped after downloading the round's adapters
                bytes_down[d.device], channels[d.device] = model_down, {"adapter_down": g.trainable_bytes}
                timings.append(DeviceTiming(d.device, down_s, 0.0, 0.0, 0.0, dropped=True))
                continue
            ex.channels["adapter_down"] = g.trainable_bytes
            channels[d.device] = ex.channels
            bytes_down[d.device] = model_down + sum(ex.transfers_down)
            down_s += sum(transfer_s(b, tier.downlink_mbps, latency, d.down_jitter) for b in ex.transfers_down)
            up_s = sum(transfer_s(b, tier.uplink_mbps, latency, d.up_jitter) for b in ex.transfers_up)
            compute = (by_device[d.device][0].compute_s + ex.compute_s) * tier.compute_factor
            timings.append(DeviceTiming(d.device, down_s, compute, up_s, ex.middle_s))
        clock = simulate_round(self.totals.sim_time_s, timings, len(self.backend.replicas), step_s, None)
        self._record(
            plan,
            by_device,
            bytes_down,
            clock,
            top_results,
            step_s,
            lr,
            timings,
            channels,
            {i: x.compute_s for i, x in exchanges.items()},
        )

    def _download_bytes(self, r: int, d) -> int:
        """What a device downloads before its work in round ``r``: the instruction, the bottom's weights on its first
        round and, for GuardedTuning, the round's adapters (and, the first time, A_b for gradfree, the emulator)."""
        n = len(self._request(r, d)) + (self.setup.download_bytes[d.depth] if d.first_time else 0)
        if self.guarded is not None:
            n += self.guarded.trainable_bytes + (self.guarded.first_extra_bytes if d.first_time else 0)
        return n

    def _request(self, r: int, d) -> bytes:
        """The round's instruction to a device (what it downloads besides, once, the bottom's weights)."""
        n = 0 if d.task is None else len(d.task.samples)
        return json.dumps(
            {"round": r, "device": d.device, "samples": n, "split_depth": d.depth, "mechanism": self.cfg.mechanism.name}
        ).encode()

    def _record(
        self, plan, by_device, bytes_down, clock, top_results, step_s, lr, timings, channels=None, extra_compute=None
    ) -> None:
        """``channels``: bytes per channel and device, ``extra_compute``: device seconds after the task (GuardedTuning);
        else the upload is the one ``act_up`` channel."""
        extra_compute = extra_compute or {}
        r, t = plan.round, self.totals
        rows, timing = [], {x.device: x for x in timings}
        loss_sum = sum(x.loss_sum for x in top_results)
        trained = sum(x.samples for x in top_results)
        for d in plan.devices:
            event, tm, tier = clock.events[d.device], timing[d.device], self.sim.tiers[d.tier]
            report, _, attempts = by_device.get(d.device, (None, None, 0))
            ch = channels.get(d.device, {}) if channels is not None else {"act_up": report.bytes_up if report else 0}
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
                    "bytes_up": sum(ch[c] for c in UPLINKS if c in ch)
                    if channels is not None
                    else (report.bytes_up if report else 0),
                    "bytes_down": bytes_down[d.device],
                    **{f"bytes_{c}": ch.get(c, 0) for c in CHANNELS},
                    "compute_s": (report.compute_s + extra_compute.get(d.device, 0.0)) if report else 0.0,
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
                    "attempts": attempts,
                }
            )
        self.run.append_rows("devices", rows)
        status = [row["status"] for row in rows]
        sums = {
            k: sum(row[k] for row in rows)
            for k in ("samples", "tokens", "bytes_up", "bytes_down", "compute_s", "mechanism_s", "top_s")
        }
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
        t.top_s += sums["top_s"] + step_s
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
            "lr": lr,
            "bytes_up": sums["bytes_up"],
            "bytes_down": sums["bytes_down"],
            "device_compute_s": device_s,
            "top_step_s": step_s,
            "sim_start_s": clock.start_s,
            "sim_end_s": clock.end_s,
            "sim_round_s": clock.duration_s,
            "wall_s": t.train_wall_s,
            "samples_total": t.samples,
            **self.dp_spent(),
        }
        self.run.append("rounds", row)
        if plain_lines(self.cfg.train.progress):
            self.log(
                f"privtune-ray: round {t.rounds_done}/{self.sim.rounds}: loss {row['loss']:.4f}, {row['ok']}/{row['selected']} "
                f"devices ok, simulated {t.sim_time_s:.0f} s, {t.bytes_up / 2**20:.1f} MiB up / "
                f"{t.bytes_down / 2**20:.1f} MiB down, {t.train_wall_s:.0f} s"
            )

    def dp_spent(self) -> dict[str, float]:
        """EW-Tune: the DP-SGD ε spent after the rounds done (Edgeworth, PLD, RDP; cumulative); {} otherwise."""
        if self.setup.dp_plan is None:
            return {}
        from ..designs.ewtune import spent_epsilon

        return spent_epsilon(self.setup.dp_plan, self.totals.rounds_done)

    def privacy(self, releases: int) -> tuple[float, float]:
        """(ε of an (ε, δ) statement, η per unit of a metric-DP one) after ``releases`` releases; NaN if n/a."""
        if releases not in self._privacy:
            g = config_guarantee(self.cfg.mechanism, max(releases, 1), self.cfg.model.max_length)
            nan = float("nan")
            self._privacy[releases] = (
                (nan, nan)
                if releases == 0
                else (
                    g.epsilon if g.epsilon is not None else nan,
                    g.eta_per_unit if g.eta_per_unit is not None else nan,
                )
            )
        return self._privacy[releases]

    # ------------------------------------------------------------------ evaluation, attacks, faults

    def evaluate(self) -> dict:
        """Accuracy and loss on the eval split, sent by an evaluation device at every depth in the population."""
        batches = batch_indices(self.setup.eval.lengths, self.cfg.train.eval_batch_size, shuffle=False, bucketing=True)
        self._hook("evaluating", self.totals.rounds_done)
        depths, counts = np.unique(self.population.depth, return_counts=True)
        per_depth = {}
        if self.guarded is not None:
            self.backend.broadcast("load_adapters", self.backend.share(self.guarded.state_blob()))
        for m, count in zip(depths.tolist(), counts.tolist()):
            if self.guarded is not None:
                correct, loss, n = self.guarded.evaluate(self.backend, batches)
            else:
                correct, loss, n = self.backend.evaluate(m, batches, derive_seed(self.cfg.seed, EVAL_SEED, m, 0, 0))
            per_depth[m] = {"accuracy": correct / n, "loss": loss / n, "samples": n, "devices": count}
            self.run.append("eval", {"rounds_done": self.totals.rounds_done, "depth": m, **per_depth[m]})
        weights = np.array([v["devices"] for v in per_depth.values()], dtype=float)
        accuracy = float(np.average([v["accuracy"] for v in per_depth.values()], weights=weights))
        loss = float(np.average([v["loss"] for v in per_depth.values()], weights=weights))
        return {"accuracy": accuracy, "loss": loss, "per_depth": per_depth}

    def _observe(self, plan: RoundPlan, on_time: list[int], payloads: list) -> None:
        """Hand the attack suite the messages of devices at the depth it was fitted for."""
        tasks = {d.device: d.task for d in plan.devices if d.task is not None}
        for i, payload in zip(on_time, payloads):
            if tasks[i].depth == self.cfg.model.split_depth:
                msg = Message.from_bytes(self.backend.fetch(payload))
                batch = collate(self.setup.train, tasks[i].samples, self.setup.pad_id)
                if msg.labels.numel() == 0:  # GuardedTuning keeps labels on the device: ground truth for scoring only
                    msg.labels = batch.labels
                self.attacks.observe(msg, batch)

    def _fault(self, r: int, component: str, index: int, what: str, action: str) -> None:
        self.backend.faults.append({"round": r, "component": component, "index": index, "what": what, "action": action})

    def _drain_faults(self) -> None:
        if self.backend.faults:
            self.run.append_rows("faults", self.backend.faults)
            for f in self.backend.faults:
                self.log(
                    f"privtune-ray: fault in round {f['round']}: {f['component']} {f['index']} {f['what']}; {f['action']}"
                )
            self.backend.faults.clear()

    def _hook(self, name: str, r: int) -> None:
        if name in self.hooks:
            self.hooks[name](self, r)


def run_simulation(
    cfg: Config,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    log=print,
    hooks: dict[str, Callable] | None = None,
) -> Path:
    """``privtune-ray simulate``: returns the run directory."""
    setup = prepare(cfg)
    backend = start_backend(setup)
    try:
        run = RunDir.create(cfg, out, resume=resume)
        if resume and run.summary_path.exists():
            raise ConfigError(
                f"--resume: the run in {str(run.path)!r} has finished (summary.json exists); start a new one"
            )
        log(
            f"privtune-ray: writing simulation to {run.path} ({backend.name} backend, {cfg.simulation.devices} devices)"
        )
        if setup.dp_plan is not None:
            p = setup.dp_plan
            log(f"privtune-ray: EW-Tune DP-SGD, one step per Poisson round: {p.describe()}")
            if p.pld_warning():
                log(f"privtune-ray: {p.pld_warning()}")
        coordinator = Coordinator(setup, backend, run, log=log, hooks=hooks)
        start_attacks(coordinator, log)
        coordinator.train(resume=resume)
        result = coordinator.evaluate()
        coordinator._drain_faults()  # a worker replaced during the final evaluation is recorded too
        done = coordinator.totals.rounds_done
        attack_summary = coordinator.attacks.round(done, log=log) if coordinator.attacks else {}
        if coordinator.label_attack is not None:
            attack_summary = merge_attack_rows(attack_summary, coordinator.label_attack.round(done, log=log))
        summary = _summary(coordinator, result, attack_summary)
        run.write_summary(summary)
        run.remove_checkpoints()
        log(
            f"privtune-ray: dev accuracy {result['accuracy']:.4f} after {summary['rounds']} rounds; "
            f"simulated {summary['sim_time_s']:.1f} s; {summary['bytes_up']:,} bytes up"
        )
        log(f"privtune-ray: wrote {run.summary_path}")
        return run.path
    finally:
        backend.shutdown()


def guarded_summary(cfg: Config, g) -> dict:
    """The GuardedTuning layout (1-based block numbers) and settings of a run."""
    lay = g.layout
    span = lambda blocks: f"{blocks[0] + 1}..{blocks[-1] + 1}" if blocks else ""
    return {
        "design": cfg.design.name,
        "frozen_bottom_blocks": span(list(range(lay.m))),
        "bottom_adapter_blocks": span(lay.bottom_adapter),
        "middle_blocks": span(lay.middle),
        "top_adapter_blocks": span(list(range(lay.top_adapter_start, lay.depth))),
        "emulator_blocks": [b + 1 for b in lay.emulator] if cfg.design.name == "offline" else None,
        "dcor_weight": cfg.design.dcor_weight if cfg.design.name != "gradfree" else 0.0,
        "bits": cfg.design.bits,
        "adapter_bytes_per_round": g.trainable_bytes,
        "first_download_extra_bytes": g.first_extra_bytes,
    }


def start_attacks(coordinator: Coordinator, log) -> None:
    """The attack suite on what devices upload (the bottom's h̃, or GuardedTuning's A1), fitted at the depth it is
    released from; gradient matching on online's returned gradients. Offline releases no per-sample tensor."""
    cfg, setup = coordinator.cfg, coordinator.setup
    if not cfg.attack.enabled:
        return
    if cfg.design.name == "offline":
        log("privtune-ray: design offline: no per-sample tensor leaves a device while it trains; no attack to run")
        return
    from ..attacks.suite import AttackSuite

    suite = AttackSuite.fit_on(
        cfg,
        setup.attack_split,
        setup.tokenizer,
        resolve_model(cfg.model.name),
        setup.aux,
        cfg.data.dataset,
        setup.train.texts,
        log=log,
    )
    coordinator.attacks = AttackRounds(suite, cfg.attack, setup.train, coordinator.run)
    if cfg.design.name == "online":
        from .guarded import LabelAttackRounds

        task_model = load_task_model(cfg.model.name, cfg.model.task, setup.num_labels)
        coordinator.label_attack = LabelAttackRounds(
            cfg, task_model, setup.guarded.layout, setup.aux, setup.train, setup.pad_id, coordinator.run, log=log
        )


def merge_attack_rows(summary: dict, rows: list[dict]) -> dict:
    """Add attribute-attack rows (gradient matching) to an attack summary and its max AIA advantage."""
    merged = {**summary, "attacks": {**summary.get("attacks", {})}}
    for row in rows:
        merged["attacks"][row["attack"]] = {k: v for k, v in row.items() if k != "attack"}
    advantages = [v["advantage"] for v in merged["attacks"].values() if v.get("kind") == "attribute"]
    merged["max_aia_advantage"] = max(advantages) if advantages else None
    return merged


def _summary(c: Coordinator, result: dict, attack_summary: dict) -> dict:
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
    return {
        "name": cfg.name,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "split_depth": cfg.model.split_depth,
        "mechanism": cfg.mechanism.name,
        "privacy": privacy.to_dict(),
        "seed": cfg.seed,
        "devices": len(pop),
        "tiers": tiers,
        "rounds": t.rounds_done,
        "dev_accuracy": result["accuracy"],
        "dev_loss": result["loss"],
        "dev_by_depth": {str(m): v for m, v in result["per_depth"].items()},
        "train_samples": t.samples,
        "sent_samples": t.sent,
        "tokens": t.tokens,
        "bytes_up": t.bytes_up,
        "bytes_down": t.bytes_down,
        "bytes_up_per_sample": t.bytes_up / max(t.sent, 1),
        "device_compute_s": t.device_compute_s,
        "top_s": t.top_s,
        "sim_time_s": t.sim_time_s,
        "train_wall_s": t.train_wall_s,
        "train_samples_per_s": t.samples / max(t.train_wall_s, 1e-9),
        "dropped": t.dropped,
        "late": t.late,
        "rollbacks": t.rollbacks,
        "max_releases": releases,
        "backend": c.backend.describe(),
        "design": cfg.design.name,
        "bytes_by_channel": dict(t.channel_bytes),
        **({"guarded": guarded_summary(cfg, c.guarded)} if c.guarded else {}),
        **(
            {
                "dp_sgd": {
                    **c.setup.dp_plan.to_dict(),
                    "expected_batch_size": pop.expected_batch_size(),
                    "spent": c.dp_spent(),
                }
            }
            if c.setup.dp_plan
            else {}
        ),
        **attack_summary,
        "run_dir": str(c.run.path),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
