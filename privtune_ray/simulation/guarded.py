"""GuardedTuning across many devices: the rounds of ``design: online | gradfree | offline`` (``designs/guarded.py``).

[ours] The device-side adapters are one global copy, synchronised as SplitFed does: each round every
selected device downloads the adapters' current weights, runs its share of the protocol on its local batch
and uploads its adapter gradients; the coordinator sums them with the middle's (one synchronous AdamW step
on the mean loss of the round, as the split design's top takes). A round of ``online``, per device:

    worker  run            A1 = A_b(bottom(x))                      act_up     (the device task)
    replica middle_forward A2 = M(A1)                               act_down
    worker  guarded_top    Σ CE(A_t(A2), y): ∂ℓ/∂A2, ∇A_t           grad_up
    replica middle_backward ∂ℓ/∂A1, ∇M accumulated                  grad_down
    worker  guarded_bottom ⟨∂ℓ/∂A1, A1⟩ + α·B·dCor: ∇A_b             adapter_up (∇A_b, ∇A_t)

``gradfree`` stops after guarded_top (no gradient goes up); ``offline`` is the device task alone (against
the emulator). Workers are stateless between phases (any worker runs any phase); a replica keeps message
j's graph from middle_forward to middle_backward, so message j goes to replica j mod R in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import Config
from ..data.batching import collate
from ..designs.guarded import ClientAdapters, GuardedLayout, gradients_from_bytes, module_bytes
from ..training.server import build_optimizer
from .protocol import TopResult


@dataclass
class DeviceExchange:
    """One device's round beyond its task: bytes per channel, measured device and middle seconds, losses."""

    channels: dict[str, int] = field(default_factory=dict)
    compute_s: float = 0.0  # device seconds after the task (guarded_top, guarded_bottom)
    middle_s: float = 0.0  # the cloud's seconds on this device's messages
    loss_sum: float = 0.0  # Σ CE (nats)
    penalty: float = 0.0  # α·B·dCor
    transfers_up: list[int] = field(default_factory=list)  # bytes of each upload, in order
    transfers_down: list[int] = field(default_factory=list)


class GuardedRounds:
    """The coordinator's side of a GuardedTuning simulation: the global adapters, their optimiser, the phases."""

    def __init__(self, cfg: Config, task_model, layout: GuardedLayout):
        self.cfg, self.design, self.layout = cfg, cfg.design.name, layout
        self.adapters = ClientAdapters(task_model, layout, cfg.model.task)
        self.adapters.bottom.requires_grad_(self.design != "gradfree")
        self.params = self.adapters.trainable(self.design)
        self.optimizer, self.scheduler = build_optimizer(self.adapters, cfg.train, cfg.simulation.rounds)
        self.trainable_bytes = module_bytes(self.adapters.top if self.design == "gradfree" else self.adapters)
        self.first_extra_bytes = self.first_download_bytes(task_model)  # once, beside the bottom
        self._blobs: dict[int, list[bytes]] = {}  # the round's adapter gradients per device, until step
        self.last_returned: dict[
            int, tuple[bytes, bytes]
        ] = {}  # online: (A2, ∂ℓ/∂A2) per device, for gradient matching

    def first_download_bytes(self, task_model) -> int:
        """What a device downloads once besides the bottom: A_b where it is frozen (gradfree), the emulator (offline)."""
        from ..designs.guarded import Blocks

        extra = module_bytes(self.adapters.bottom) if self.design == "gradfree" else 0
        if self.design == "offline":
            extra += module_bytes(Blocks(task_model, self.layout.emulator))
        return extra

    def state_blob(self) -> bytes:
        """The trainable adapters' weights as devices download them this round."""
        return self.adapters.state_bytes()

    # ------------------------------------------------------------------ a round

    def exchange(
        self, backend, on_time: list[int], tasks: dict, payloads: dict, reports: dict
    ) -> tuple[dict, list[TopResult]]:
        """Run the phases after the device tasks for the ``on_time`` devices; returns their exchanges and results.
        The devices' adapter gradients are held until :meth:`step`."""
        ex = {i: DeviceExchange() for i in on_time}
        if self.design == "offline":
            blobs = {i: [backend.fetch(payloads[i])] for i in on_time}
            for i in on_time:
                ex[i].loss_sum, ex[i].penalty = reports[i].loss_sum, reports[i].penalty
                self._adapter_upload(ex[i], *blobs[i])
        else:
            a1 = {i: backend.fetch(payloads[i]) for i in on_time}
            for i in on_time:
                ex[i].channels["act_up"] = len(a1[i])
                ex[i].transfers_up.append(len(a1[i]))
            keys = [
                tasks[i].seed for i in on_time
            ]  # per (device, round): names the message, seeds the middle's dropout
            a2, middle_s = backend.middle("middle_forward", keys, [a1[i] for i in on_time], True)
            tops = backend.on_workers("guarded_top", [(tasks[i], a2[j]) for j, i in enumerate(on_time)])
            blobs = {}
            for j, i in enumerate(on_time):
                loss_sum, grad_up, top_blob, seconds = tops[j]
                e = ex[i]
                e.middle_s += middle_s[j]
                e.channels["act_down"] = len(a2[j])
                e.transfers_down.append(len(a2[j]))
                e.loss_sum, e.compute_s = loss_sum, e.compute_s + seconds
                blobs[i] = [top_blob]
                if grad_up is not None:
                    e.channels["grad_up"] = len(grad_up)
                    e.transfers_up.append(len(grad_up))
            self.last_returned = (
                {i: (a2[j], tops[j][1]) for j, i in enumerate(on_time)} if self.design == "online" else {}
            )
            if self.design == "online":
                ga1, back_s = backend.middle("middle_backward", keys, [tops[j][1] for j in range(len(on_time))])
                bottoms = backend.on_workers("guarded_bottom", [(tasks[i], ga1[j]) for j, i in enumerate(on_time)])
                for j, i in enumerate(on_time):
                    penalty, bottom_blob, seconds = bottoms[j]
                    e = ex[i]
                    e.middle_s += back_s[j]
                    e.channels["grad_down"] = len(ga1[j])
                    e.transfers_down.append(len(ga1[j]))
                    e.penalty, e.compute_s = penalty, e.compute_s + seconds
                    blobs[i].insert(0, bottom_blob)
            for i in on_time:
                self._adapter_upload(ex[i], *blobs[i])
        self._blobs = blobs
        results = [
            TopResult(loss_sum=ex[i].loss_sum, samples=len(tasks[i].samples), top_s=ex[i].middle_s) for i in on_time
        ]
        return ex, results

    def _adapter_upload(self, e: DeviceExchange, *blobs: bytes) -> None:
        n = sum(len(b) for b in blobs)
        e.channels["adapter_up"] = n
        e.transfers_up.append(n)

    def step(self, n_samples: int) -> float:
        """Sum the round's adapter gradients (as a secure aggregator would), ÷ n, AdamW; returns the lr used."""
        lr = self.optimizer.param_groups[0]["lr"]
        n_params = len(self.params)
        total: list[torch.Tensor | None] = [None] * n_params
        for blobs in self._blobs.values():
            grads = self._device_gradients(blobs)
            for k, g in enumerate(grads):
                if g is not None:
                    total[k] = g.clone() if total[k] is None else total[k] + g
        for p, g in zip(self.params, total, strict=True):
            p.grad = None if g is None else g / max(n_samples, 1)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._blobs = {}
        return lr

    def _device_gradients(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """One device's gradients in ``self.params`` order: [A_b, A_t] blobs (online, offline: A_b then A_t)."""
        if self.design != "online":  # one blob: A_t (gradfree) or both adapters (offline)
            return gradients_from_bytes(blobs[0], len(self.params))
        n_bottom = len(list(self.adapters.bottom.parameters()))
        return gradients_from_bytes(blobs[0], n_bottom) + gradients_from_bytes(blobs[1], len(self.params) - n_bottom)

    # ------------------------------------------------------------------ evaluation and checkpoints

    def evaluate(self, backend, batches: list[np.ndarray]) -> tuple[int, float, int]:
        """The deployed model on the eval split: A_t(M(A_b(bottom(x)))) with the full middle (offline too)."""
        a1 = backend.on_workers("guarded_eval_upload", [(idx,) for idx in batches])
        a2, _ = backend.middle("middle_forward", list(range(len(batches))), a1, False)
        results = backend.on_workers("guarded_predict", [(idx, a2[b]) for b, idx in enumerate(batches)])
        return sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results)

    def state_dict(self) -> dict:
        return {
            "adapters": self.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class LabelAttackRounds:
    """Gradient matching (``attacks/gradient_matching.py``) on online's returned ∂ℓ/∂A2: the cloud's attacker
    fits its surrogate A_t on its auxiliary text once, then attacks the latest ``attack.victim_samples``
    samples every ``attack.every`` rounds and at the end; rows go to ``attacks.csv`` as the suite's do."""

    def __init__(self, cfg: Config, task_model, layout: GuardedLayout, aux, train, pad_id: int, run, log=print):
        from ..attacks.gradient_matching import GradientMatchingLabels, surrogate_top
        from ..attacks.suite import VictimSample
        from ..designs.guarded import Blocks
        from ..models.split import BottomModel, family_of

        self.cfg, self.train, self.pad_id, self.run = cfg, train, pad_id, run
        bottom = BottomModel(family_of(task_model), task_model, layout.m)
        adapter, middle = Blocks(task_model, layout.bottom_adapter).eval(), Blocks(task_model, layout.middle).eval()

        def encode(ids, mask):  # the attacker's copy: pretrained bottom, A_b and middle
            return middle(adapter(bottom(ids, mask), mask), mask)

        top = ClientAdapters(task_model, layout, cfg.model.task).top
        self.attack = GradientMatchingLabels(surrogate_top(top, cfg.seed + 0xA77), cfg.attack, cfg.seed)
        history = self.attack.fit(self.attack.observe_aux(encode, aux, pad_id))
        log(
            f"privtune-ray: attack {self.attack.name} fitted its surrogate top adapter on {len(aux)} auxiliary sentences "
            f"(loss {history[0]:.3f} -> {history[-1]:.3f} nats)"
        )
        self.victims = VictimSample(cfg.attack.victim_samples)

    def observe(self, exchanged: dict, tasks: dict) -> None:
        """``exchanged``: device → (A2 payload, ∂ℓ/∂A2 payload) of the round."""
        from ..attacks.observations import Observations
        from ..message import tensor_from_bytes

        for i, (a2, grad) in exchanged.items():
            batch = collate(self.train, tasks[i].samples, self.pad_id)
            self.victims.add(
                Observations(
                    tensor_from_bytes(a2),
                    batch.attention_mask,
                    batch.input_ids,
                    batch.labels,
                    gradients=tensor_from_bytes(grad),
                )
            )

    def round(self, rounds_done: int, log=None) -> list[dict]:
        from ..attacks.suite import long_rows

        if not self.victims.parts:
            return []
        row = self.attack.run(self.victims.take())
        self.run.append_rows("attacks", long_rows([row], step=rounds_done, victims=row["samples"]))
        if log is not None:
            log(
                f"privtune-ray: attack {row['attack']:<22} advantage {row['advantage']:+.3f} on {row['samples']} victim samples"
            )
        return [row]
