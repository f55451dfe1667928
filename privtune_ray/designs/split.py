"""Split learning (``design: split``): the device uploads h̃ = M(bottom_m(x)) with its labels; the cloud's top
trains on it. The mechanism M (PrivTune, d_χ, Gaussian/Laplace activation noise, or none) protects h.

A round: every selected device runs its task (bottom → mechanism → message) on a worker; messages that
arrive after ``simulation.deadline_s`` are late and discarded; the replicas take one synchronous step on the
mean loss of the on-time messages (``simulation/pool.py``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ..models.split import split_model
from ..simulation.clock import DeviceTiming, simulate_round, transfer_s
from ..simulation.protocol import DeviceReport, DeviceTask, EvalResult, TopResult, derive_seed
from ..training.client import SplitClient
from ..training.server import TopServer, adapt_top, add_cloud_levers, build_optimizer
from .base import Design, RoundContext, RoundOutcome, no_step


class SplitDesign(Design):
    name = "split"
    cloud_levers = True

    def defence(self) -> str:
        """Split learning is labelled by its mechanism alone (``none``, ``privtune``, ...)."""
        return self.cfg.mechanism.name

    # ------------------------------------------------------------------ device (worker)

    def device_step(self, host, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """bottom_{m_i}(x) → mechanism → serialised message."""
        client = SplitClient(
            host.split(task.depth).bottom, host.mechanism(task), device_id=task.device, bits=self.cfg.design.bits
        )
        batch = host.batch(task.samples)
        payload = client.encode(batch).to_bytes()
        report = DeviceReport.of(
            task, batch.num_tokens, payload, host.name, client.compute_s, mechanism_s=client.mechanism_s
        )
        return report, payload

    def encode_eval(self, host, indices: np.ndarray, depth: int, seed: int) -> bytes:
        """A message of eval samples from a device of ``depth`` [ours: its mechanism fitted on the whole training split]."""
        task = DeviceTask(-1, -1, depth, indices, np.arange(len(host.setup.train)), seed, self.cfg.seed)
        client = SplitClient(host.split(depth).bottom, host.mechanism(task), device_id=-1, bits=self.cfg.design.bits)
        return client.encode(host.batch(indices, "eval")).to_bytes()

    # ------------------------------------------------------------------ cloud (replica)

    def build_cloud(self, host, task_model) -> TopServer:
        """The top from the shallowest device's depth with the cloud's levers (weights prepared on public text where
        the coordinator sent them), LoRA or BitFit on it if configured, AdamW over the run's rounds."""
        cfg = self.cfg
        split = split_model(task_model, host.setup.entry_depth, task=cfg.model.task, name=cfg.model.name)
        levered = add_cloud_levers(split.top, split.hidden_size, cfg.train)
        if host.setup.prepared_top is not None:  # warmed up on public text by the coordinator
            levered.load_state_dict(torch.load(io.BytesIO(host.setup.prepared_top), weights_only=True))
        top = adapt_top(levered, split.family, cfg.train)
        optimizer, scheduler = build_optimizer(top, cfg.train, cfg.simulation.rounds)
        return self.top_server(top, optimizer, scheduler, host.device)

    def top_server(self, top, optimizer, scheduler, device) -> TopServer:
        """The cloud's server around the top (``train`` and ``simulate``)."""
        return TopServer(top, optimizer, scheduler, device=device)

    # ------------------------------------------------------------------ coordinator

    def cloud_round(self, ctx: RoundContext) -> RoundOutcome:
        """Time the uploads, drop the late ones, one synchronous step on the rest. Which messages are late
        depends on arrivals only; the top's seconds are known after it trains on the others, so the clock is
        run again with them for the round's record."""
        plan, sim, r = ctx.plan, ctx.cfg.simulation, ctx.plan.round
        timings, bytes_down = [], {}
        for d in plan.devices:
            tier = sim.tiers[d.tier]
            latency = tier.latency_ms / 1000
            bytes_down[d.device] = ctx.download_bytes(r, d)
            down_s = transfer_s(bytes_down[d.device], tier.downlink_mbps, latency, d.down_jitter)
            if d.dropped:
                timings.append(DeviceTiming(d.device, down_s, 0.0, 0.0, 0.0, dropped=True))
                continue
            report = ctx.results[d.device].report
            compute = (report.compute_s + report.mechanism_s) * tier.compute_factor
            up_s = transfer_s(report.bytes_up, tier.uplink_mbps, latency, d.up_jitter)
            timings.append(DeviceTiming(d.device, down_s, compute, up_s, 0.0))
        arrivals = simulate_round(ctx.sim_time_s, timings, ctx.pool.n_replicas, 0.0, sim.deadline_s)
        on_time = [d.device for d in plan.devices if arrivals.events[d.device].status == "ok"]
        top: list[TopResult] = []
        step = no_step()
        if on_time:
            payloads = [ctx.results[i].payload for i in on_time]
            top, step = ctx.pool.train(payloads, [derive_seed(self.cfg.seed, i, r, 1) for i in on_time])
            ctx.observe(on_time, payloads)
        else:
            step = self.empty_round(ctx)
        top_s = {i: res.top_s for i, res in zip(on_time, top)}
        for t in timings:
            t.top_s = top_s.get(t.device, 0.0)
        return RoundOutcome(timings, bytes_down, top, step, sim.deadline_s)

    def empty_round(self, ctx: RoundContext):
        """The step of a round with no on-time message: none."""
        return no_step()

    def evaluate(self, pool, cloud: Any, depth: int, batches: list[np.ndarray], seed: int) -> EvalResult:
        """The eval split encoded on the workers by a device of ``depth``, predicted by replica 0."""
        calls = [(idx, depth, derive_seed(seed, b)) for b, idx in enumerate(batches)]
        payloads = pool.on_workers(SplitDesign.encode_eval, calls)
        up = EvalResult(0, 0.0, 0, bytes_up=sum(len(p) for p in payloads))
        return sum(pool.on_first_replica("predict", payloads), up)
