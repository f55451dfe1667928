"""The three GuardedTuning designs as :class:`~privtune_ray.designs.base.Design` s (``modules.py`` holds their parts).

[ours] The device-side adapters are one global copy, synchronised as SplitFed does: each round every
selected device downloads the adapters' current weights, runs its share of the protocol on its local batch
and uploads its adapter gradients; the coordinator sums them with the middle's (one synchronous AdamW step
on the mean loss of the round, as the split design's top takes). A round of ``online``, per device:

    worker  device_step     A1 = A_b(bottom(x))                      act_up
    replica middle_forward  A2 = M(A1)                               act_down
    worker  device_top      Σ CE(A_t(A2), y): ∂ℓ/∂A2, ∇A_t           grad_up
    replica middle_backward ∂ℓ/∂A1, ∇M accumulated                   grad_down
    worker  device_bottom   ⟨∂ℓ/∂A1, A1⟩ + α·B·dCor: ∇A_b             adapter_up (∇A_b, ∇A_t)

``gradfree`` stops after device_top (no gradient goes up); ``offline`` is the device step alone (against
the emulator). Workers are stateless between phases (any worker runs any phase); a replica keeps message
j's graph from middle_forward to middle_backward, so message j goes to replica j mod R in both.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dp_accounting
import numpy as np
import torch

from ...accounting.reference import composed_epsilons
from ...errors import ConfigError
from ...message import CHANNELS, tensor_from_bytes
from ...models.split import depth_of
from ...simulation.clock import DeviceTiming, transfer_s
from ...simulation.protocol import DeviceReport, DeviceTask, EvalResult, TopResult, derive_seed
from ...training.server import build_optimizer, summed_loss
from ..base import Design, RoundContext, RoundOutcome, no_step
from ..params import GuardedParams
from .modules import (
    Blocks,
    ClientAdapters,
    GuardedClient,
    GuardedLayout,
    MiddleServer,
    gradients_to_bytes,
    guarded_layout,
)
from .rounds import GuardedRounds


@dataclass
class DeviceExchange:
    """One device's round beyond its task: bytes per channel, measured device and middle seconds, losses."""

    channels: dict[str, int] = field(default_factory=dict)
    compute_s: float = 0.0  # device seconds after the task (device_top, device_bottom)
    middle_s: float = 0.0  # the cloud's seconds on this device's messages
    loss_sum: float = 0.0  # Σ CE (nats)
    penalty: float = 0.0  # α·B·dCor
    transfers_up: list[int] = field(default_factory=list)  # bytes of each upload, in order
    transfers_down: list[int] = field(default_factory=list)

    def up(self, channel: str, n: int) -> None:
        self.channels[channel] = n
        self.transfers_up.append(n)

    def down(self, channel: str, n: int) -> None:
        self.channels[channel] = n
        self.transfers_down.append(n)


class GuardedDesign(Design):
    """What the three designs share: the layout, the adapters' round trip, the clock of a multi-phase round."""

    Params = GuardedParams
    commands = ("train", "simulate")
    channels = CHANNELS
    trains_middle: ClassVar[bool] = False  # online: the cloud's middle trains (gradients return up)
    trains_bottom_adapter: ClassVar[bool] = True  # gradfree: A_b is frozen
    uploads_bottom_updates = True  # ∇A_b (adapter_up) reads the bottom's output: eia_update's target
    local_only: ClassVar[bool] = False  # offline: the device trains against an emulator, nothing per sample crosses

    def validate(self, command: str) -> None:
        if command not in self.commands:
            raise ConfigError(
                f"design.name={self.name} (GuardedTuning) runs under `privtune-ray train` and `simulate`, not "
                f"`{command}`: its uploads depend on adapters trained in the run, so `simulate` attacks them"
            )
        self.check()

    def layout(self, model_depth: int) -> GuardedLayout:
        return guarded_layout(self.cfg, model_depth)

    def check_depth(self, model_depth: int) -> None:
        """m + 2a ≤ L − 1: the frozen bottom, both adapters and at least one middle block on the server."""
        self.layout(model_depth)

    def attack_depth(self, model_depth: int, device_depth: int) -> int:
        lay = self.layout(model_depth)  # every device runs the one layout
        return lay.m + lay.a  # A1 = A_b(bottom(x)) is what crosses

    def check_tiers(self, footprint, tiers, model_depth: int) -> None:
        """Every device runs the same layout, so every tier must hold the frozen bottom and both adapters."""
        lay = self.layout(model_depth)
        blocks = lay.m + 2 * lay.a
        for tier in tiers:
            if footprint.max_depth(tier, blocks) < blocks:
                raise ConfigError(
                    f"device tier {tier.name!r} (memory_mb={tier.memory_mb:g}) cannot hold GuardedTuning's {lay.m} "
                    f"frozen and {2 * lay.a} adapter blocks: raise its memory_mb, or lower model.split_depth or "
                    f"design.adapter_layers"
                )

    # ------------------------------------------------------------------ coordinator

    def cloud_state(self, task_model) -> GuardedRounds:
        return GuardedRounds(self.cfg, task_model, self.layout(depth_of(task_model)), self)

    def download_bytes(self, cloud: GuardedRounds, first_time: bool) -> int:
        return cloud.trainable_bytes + (cloud.first_extra_bytes if first_time else 0)

    def held_blocks(self, cloud: GuardedRounds) -> dict[int, dict] | None:
        """The trained A_b the cloud sent down with the latest round (blocks m+1..m+a): what devices ran to make
        A1. None where A_b stays pretrained (gradfree)."""
        if not self.trains_bottom_adapter:
            return None
        blocks = cloud.sent_adapters().bottom.blocks
        return {index: block.state_dict() for index, block in zip(cloud.layout.bottom_adapter, blocks, strict=True)}

    def held_top(self, cloud: GuardedRounds):
        """A_t (blocks L−a+1..L and the head) as the latest round's devices downloaded it."""
        return cloud.sent_adapters().top

    def begin_round(self, pool, cloud: GuardedRounds, round_: int) -> None:
        """The round's adapters, on every worker before its devices run."""
        pool.broadcast(GuardedDesign.load_adapters, pool.share(cloud.send()), round_=round_)

    def cloud_round(self, ctx: RoundContext) -> RoundOutcome:
        """The protocol's phases for every device that did not drop out (no deadline), then the middle's and the
        adapters' synchronous step. The clock charges each device every transfer of its exchange (each with its
        latency) and all its compute, and serves the middle's seconds FCFS after the device's uploads [ours: the
        phases' interleaving is folded into one service]."""
        r, g, sim = ctx.plan.round, ctx.cloud, ctx.cfg.simulation
        tasks = {d.device: d.task for d in ctx.plan.devices if d.task is not None}
        on_time = list(tasks)
        exchanges, top = self.exchange(ctx, on_time, tasks)
        updates = g.device_updates() if self.uploads_bottom_updates and ctx.observe_updates else {}
        n = sum(x.samples for x in top)
        step = ctx.pool.step(n) if on_time else no_step()
        if on_time:
            step.lr = g.step(n)
        if self.uploads_per_sample_tensor:
            ctx.observe(on_time, [ctx.results[i].payload for i in on_time])
        timings, bytes_down, channels = [], {}, {}
        for d in ctx.plan.devices:
            tier = sim.tiers[d.tier]
            latency, ex = tier.latency_ms / 1000, exchanges.get(d.device)
            model_down = ctx.download_bytes(r, d)
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
            compute = (ctx.results[d.device].report.compute_s + ex.compute_s) * tier.compute_factor
            timings.append(DeviceTiming(d.device, down_s, compute, up_s, ex.middle_s))
        extra = {i: x.compute_s for i, x in exchanges.items()}
        return RoundOutcome(timings, bytes_down, top, step, None, channels, extra, g.last_returned, updates)

    def exchange(self, ctx: RoundContext, on_time: list[int], tasks: dict) -> tuple[dict, list[TopResult]]:
        """The phases after the device tasks: (each device's exchange, one result per device). The devices'
        adapter gradients are held by the coordinator state until its step."""
        pool, g = ctx.pool, ctx.cloud
        ex = {i: DeviceExchange() for i in on_time}
        a1 = {i: pool.fetch(ctx.results[i].payload) for i in on_time}
        for i in on_time:
            ex[i].up("act_up", len(a1[i]))
        keys = [tasks[i].seed for i in on_time]  # per (device, round): names the message, seeds the middle's dropout
        forward = pool.cloud_phase(GuardedDesign.middle_forward, keys, [a1[i] for i in on_time], True)
        a2 = [out for out, _ in forward]
        tops = pool.on_workers(
            GuardedDesign.device_top, [(tasks[i], a2[j]) for j, i in enumerate(on_time)], ctx.plan.round
        )
        blobs = {}
        for j, i in enumerate(on_time):
            loss_sum, grad_up, top_blob, seconds = tops[j]
            ex[i].middle_s += forward[j][1]
            ex[i].down("act_down", len(a2[j]))
            ex[i].loss_sum, ex[i].compute_s = loss_sum, ex[i].compute_s + seconds
            blobs[i] = [top_blob]
            if grad_up is not None:
                ex[i].up("grad_up", len(grad_up))
        g.last_returned = {i: (a2[j], tops[j][1]) for j, i in enumerate(on_time)} if self.trains_middle else {}
        if self.trains_middle:
            backward = pool.cloud_phase(GuardedDesign.middle_backward, keys, [tops[j][1] for j in range(len(on_time))])
            calls = [(tasks[i], backward[j][0]) for j, i in enumerate(on_time)]
            bottoms = pool.on_workers(GuardedDesign.device_bottom, calls, ctx.plan.round)
            for j, i in enumerate(on_time):
                penalty, bottom_blob, seconds = bottoms[j]
                ex[i].middle_s += backward[j][1]
                ex[i].down("grad_down", len(backward[j][0]))
                ex[i].penalty, ex[i].compute_s = penalty, ex[i].compute_s + seconds
                blobs[i].insert(0, bottom_blob)
        for i in on_time:
            ex[i].up("adapter_up", sum(len(b) for b in blobs[i]))
        g.hold(blobs)
        return ex, [TopResult(ex[i].loss_sum, len(tasks[i].samples), ex[i].middle_s) for i in on_time]

    def evaluate(self, pool, cloud: GuardedRounds, depth: int, batches: list[np.ndarray], seed: int) -> EvalResult:
        """The deployed model on the eval split: A_t(M(A_b(bottom(x)))) with the full middle (offline too)."""
        pool.broadcast(GuardedDesign.load_adapters, pool.share(cloud.state_blob()))
        a1 = pool.on_workers(GuardedDesign.device_eval_upload, [(idx,) for idx in batches])
        a2 = [out for out, _ in pool.cloud_phase(GuardedDesign.middle_forward, list(range(len(batches))), a1, False)]
        results = pool.on_workers(GuardedDesign.device_predict, [(idx, a2[b]) for b, idx in enumerate(batches)])
        moved = EvalResult(0, 0.0, 0, bytes_up=sum(len(a) for a in a1), bytes_down=sum(len(a) for a in a2))
        return sum(results, moved)

    def summary(self, cloud: GuardedRounds, rounds_done: int, population=None) -> dict[str, Any]:
        """The layout (1-based block numbers) and settings of the run."""
        lay = cloud.layout

        def span(blocks: list[int]) -> str:
            return f"{blocks[0] + 1}..{blocks[-1] + 1}" if blocks else ""

        return {
            "guarded": {
                "design": self.name,
                "frozen_bottom_blocks": span(list(range(lay.m))),
                "bottom_adapter_blocks": span(lay.bottom_adapter),
                "middle_blocks": span(lay.middle),
                "top_adapter_blocks": span(list(range(lay.top_adapter_start, lay.depth))),
                "emulator_blocks": [b + 1 for b in lay.emulator] if self.local_only else None,
                "dcor_weight": self.params.dcor_weight if self.trains_bottom_adapter else 0.0,
                "bits": self.cfg.design.bits,
                "adapter_bytes_per_round": cloud.trainable_bytes,
                "first_download_extra_bytes": cloud.first_extra_bytes,
                "label_dp": self.label_dp(population),
            }
        }

    def label_dp(self, population=None) -> dict[str, Any] | None:
        """online's label defence: the (ε, δ)-label-DP of the ∂ℓ/∂A2 uploads of the most-sent sample (R uploads,
        each a Gaussian mechanism of noise multiplier σ_g/2 on its label; ε in nats by PLD, RDP beside it). None
        where the defence is off; ε = inf where it clips without noise."""
        p = self.params
        if not (self.returns_gradients and p.label_defence):
            return None
        releases = max((population.releases(i) for i in range(len(population))), default=0) if population else 0
        sigma = p.grad_up_noise_multiplier
        eps, eps_rdp = float("inf"), float("inf")
        if sigma > 0 and releases > 0:
            eps, eps_rdp = composed_epsilons(dp_accounting.GaussianDpEvent(sigma / 2), releases, p.delta)
        return {
            "clip_norm": p.grad_up_clip_norm,
            "noise_multiplier": sigma,
            "releases": releases,
            "epsilon": eps,
            "epsilon_rdp": eps_rdp,
            "delta": p.delta,
            "statement": f"({eps:.4g}, {p.delta:g})-label-DP of the returned-gradient channel (grad_up) per sample "
            f"over {releases} upload(s) (PLD); the adapters' per-device gradient sums are not covered",
        }

    # ------------------------------------------------------------------ device (worker)

    def client(self, host) -> GuardedClient:
        """The worker's device side, built on first use."""
        if "guarded" not in host.state:
            layout = self.layout(depth_of(host.task_model))
            emulator = None
            if self.local_only:
                emulator = Blocks(copy.deepcopy(host.task_model), layout.emulator).requires_grad_(False).eval()
            adapters = ClientAdapters(host.task_model, layout, self.cfg.model.task)
            bottom = host.split(layout.m).bottom
            p = self.params
            host.state["guarded"] = GuardedClient(
                self.name,
                bottom,
                adapters,
                p.dcor_weight,
                self.cfg.design.bits,
                emulator,
                p.grad_up_clip_norm,
                p.grad_up_noise_multiplier,
            )
        return host.state["guarded"]

    def load_adapters(self, host, blob: bytes) -> None:
        """The round's adapter weights (every device of the round downloads them)."""
        self.client(host).adapters.load_bytes(blob)

    def device_step(self, host, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """online, gradfree: the A1 upload."""
        client, batch = self.client(host), host.batch(task.samples)
        client.compute_s = 0.0
        payload = client.upload(batch)
        return DeviceReport.of(task, batch.num_tokens, payload, host.name, client.compute_s), payload

    def device_top(self, host, task: DeviceTask, a2_payload: bytes) -> tuple[float, bytes | None, bytes, float]:
        """(Σ CE, the ∂ℓ/∂A2 upload or None, A_t's gradients, measured seconds)."""
        client, batch = self.client(host), host.batch(task.samples)
        client.compute_s = 0.0
        torch.manual_seed(derive_seed(task.seed, 2))  # A_t's dropout (the middle's is seeded by task.seed)
        loss_sum, grad_up, grads = client.top_step(batch, a2_payload, derive_seed(task.seed, 3))
        return loss_sum, grad_up, gradients_to_bytes(grads), client.compute_s

    def device_bottom(self, host, task: DeviceTask, grad_a1_payload: bytes) -> tuple[float, bytes, float]:
        """(α·B·dCor, A_b's gradients, measured seconds)."""
        client, batch = self.client(host), host.batch(task.samples)
        client.compute_s = 0.0
        penalty, grads = client.backward_bottom(batch, grad_a1_payload)
        return penalty, gradients_to_bytes(grads), client.compute_s

    def device_eval_upload(self, host, indices: np.ndarray) -> bytes:
        return self.client(host).upload(host.batch(indices, "eval"))

    def device_predict(self, host, indices: np.ndarray, a2_payload: bytes) -> EvalResult:
        """An eval batch's sums, from the A2 the cloud returned."""
        batch = host.batch(indices, "eval")
        logits = self.client(host).predict(batch, tensor_from_bytes(a2_payload))
        loss = float(summed_loss(logits, batch.labels))
        return EvalResult(int((logits.argmax(-1) == batch.labels).sum()), loss, len(indices))

    # ------------------------------------------------------------------ cloud (replica)

    def build_cloud(self, host, task_model) -> MiddleServer:
        """The cloud holds the middle M (trained by online only)."""
        cfg = self.cfg
        middle = Blocks(task_model, self.layout(depth_of(task_model)).middle)
        middle.requires_grad_(self.trains_middle)
        optimizer, scheduler = build_optimizer(middle, cfg.train, cfg.simulation.rounds)
        return MiddleServer(middle, optimizer, scheduler, self.trains_middle, cfg.design.bits, host.device)

    def middle_forward(self, host, keys: list[int], train: bool, *payloads: bytes) -> list[tuple[bytes, float]]:
        """A2 = M(A1) per message (key j seeds its dropout and names it for ``middle_backward``): (A2, seconds)."""
        out = []
        for key, payload in zip(keys, payloads, strict=True):
            start = time.perf_counter()
            torch.manual_seed(key)
            out.append((host.server.forward(key, payload, train), time.perf_counter() - start))
        return out

    def middle_backward(self, host, keys: list[int], *payloads: bytes) -> list[tuple[bytes, float]]:
        """online: ∂ℓ/∂A2 in, ∂ℓ/∂A1 out, the middle's gradients accumulated: (∂ℓ/∂A1, seconds)."""
        out = []
        for key, payload in zip(keys, payloads, strict=True):
            start = time.perf_counter()
            out.append((host.server.backward(key, payload), time.perf_counter() - start))
        return out


class OnlineDesign(GuardedDesign):
    """``online``: A_b, M and A_t all train; ∂ℓ/∂A2 goes up and ∂ℓ/∂A1 comes back; labels stay on the device."""

    name = "online"
    trains_middle = True
    returns_gradients = True


class GradfreeDesign(GuardedDesign):
    """``gradfree``: A1 ↑, A2 ↓, the middle runs without autograd and only A_t trains; nothing returns up."""

    name = "gradfree"
    trains_bottom_adapter = False
    uploads_bottom_updates = False


class OfflineDesign(GuardedDesign):
    """``offline`` (offsite-tuning): the device trains A_b and A_t against a frozen emulator of the middle and
    uploads only their gradients; nothing per sample crosses."""

    name = "offline"
    local_only = True
    uploads_per_sample_tensor = False

    def device_step(self, host, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """The local step against the emulator: its adapter gradients are the upload."""
        client, batch = self.client(host), host.batch(task.samples)
        client.compute_s = 0.0
        torch.manual_seed(derive_seed(task.seed, 2))  # A_t's dropout
        loss_sum, penalty, grads = client.offline_step(batch)
        payload = gradients_to_bytes(grads)
        report = DeviceReport.of(
            task, batch.num_tokens, payload, host.name, client.compute_s, loss_sum=loss_sum, penalty=penalty
        )
        return report, payload

    def exchange(self, ctx: RoundContext, on_time: list[int], tasks: dict) -> tuple[dict, list[TopResult]]:
        ex = {i: DeviceExchange() for i in on_time}
        blobs = {i: [ctx.pool.fetch(ctx.results[i].payload)] for i in on_time}
        for i in on_time:
            report = ctx.results[i].report
            ex[i].loss_sum, ex[i].penalty = report.loss_sum, report.penalty
            ex[i].up("adapter_up", len(blobs[i][0]))
        ctx.cloud.hold(blobs)
        return ex, [TopResult(ex[i].loss_sum, len(tasks[i].samples), ex[i].middle_s) for i in on_time]
