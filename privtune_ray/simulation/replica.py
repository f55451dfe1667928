"""A top-model replica: the cloud's trainable top (blocks m_min+1..L and the head) behind narrow methods.

Replicas stay in sync by synchronous data-parallel SGD: in a round each replica accumulates
∇ Σ CE over its share of the messages; the coordinator sums the replicas' gradients (an all-reduce
through the driver), and every replica applies the same sum with the same AdamW step. All replicas start
from the same seeded weights, so they hold identical weights after every round, and the result does not
depend on the number of replicas beyond the order of float additions. Dropout in the top is seeded per
message (derive_seed(run seed, device, round)), not per replica.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass

import torch

from ..config import Config
from ..designs.guarded import GUARDED, Blocks, MiddleServer, guarded_layout
from ..message import Message
from ..models.loading import load_task_model
from ..models.split import depth_of, split_model
from ..training.loop import seed_everything
from ..training.server import TopServer, apply_lora, build_optimizer, summed_loss
from .protocol import TopResult


@dataclass
class ReplicaSetup:
    cfg: Config
    num_labels: int
    entry_depth: int  # m_min: the shallowest device's depth; deeper devices' h enter later
    threads: int
    device: str = "cpu"  # "cuda" on a GPU replica
    dp: tuple | None = None  # design ewtune: (DPPlan, expected samples per round): DP-SGD steps


class TopReplica:
    def __init__(self, setup: ReplicaSetup):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(setup.threads)
        cfg = setup.cfg
        seed_everything(cfg.seed)  # the fresh head is initialised from the seed: identical on every replica
        task_model = load_task_model(cfg.model.name, cfg.model.task, setup.num_labels)
        device = setup.device if setup.device == "cpu" or torch.cuda.is_available() else "cpu"
        if cfg.design.name in GUARDED:  # the cloud holds GuardedTuning's middle
            middle = Blocks(task_model, guarded_layout(cfg, depth_of(task_model)).middle)
            middle.requires_grad_(cfg.design.name == "online")
            optimizer, scheduler = build_optimizer(middle, cfg.train, cfg.simulation.rounds)
            self.server = MiddleServer(
                middle, optimizer, scheduler, cfg.design.name == "online", cfg.design.bits, device
            )
            return
        split = split_model(task_model, setup.entry_depth, task=cfg.model.task, name=cfg.model.name)
        top = apply_lora(split.top, split.family, cfg.train.lora) if cfg.train.lora.enabled else split.top
        optimizer, scheduler = build_optimizer(top, cfg.train, cfg.simulation.rounds)
        if setup.dp is None:
            self.server = TopServer(top, optimizer, scheduler, device=device)
        else:
            from ..designs.ewtune import DPTopServer

            plan, expected = setup.dp
            self.server = DPTopServer(
                top,
                optimizer,
                scheduler,
                plan,
                expected_batch_size=max(1, round(expected)),
                device=device,
                seed=cfg.seed,
            )

    def ping(self) -> int:
        return os.getpid()

    def describe(self) -> dict:
        return {
            "pid": os.getpid(),
            "device": str(self.server.device),
            "threads": torch.get_num_threads(),
            "trainable_params": sum(p.numel() for p in self.server.trainable()),
        }

    def accumulate(self, seeds: list[int], *payloads: bytes) -> list[TopResult]:
        """Add each message's gradient (summed loss) to the replica's; message j's dropout seeded by ``seeds[j]``."""
        results = []
        for seed, payload in zip(seeds, payloads, strict=True):
            start = time.perf_counter()
            torch.manual_seed(seed)
            msg = Message.from_bytes(payload)
            loss_sum = self.server.accumulate(msg)
            results.append(TopResult(loss_sum=loss_sum, samples=msg.batch_size, top_s=time.perf_counter() - start))
        return results

    def middle_forward(self, keys: list[int], train: bool, *payloads: bytes) -> list[tuple[bytes, float]]:
        """GuardedTuning: A2 = M(A1) per message (key j seeds its dropout and names it for ``middle_backward``)."""
        out = []
        for key, payload in zip(keys, payloads, strict=True):
            start = time.perf_counter()
            torch.manual_seed(key)
            out.append((self.server.forward(key, payload, train), time.perf_counter() - start))
        return out

    def middle_backward(self, keys: list[int], *payloads: bytes) -> list[tuple[bytes, float]]:
        """GuardedTuning online: ∂ℓ/∂A2 in, ∂ℓ/∂A1 out, the middle's gradients accumulated."""
        out = []
        for key, payload in zip(keys, payloads, strict=True):
            start = time.perf_counter()
            out.append((self.server.backward(key, payload), time.perf_counter() - start))
        return out

    def gradients(self) -> list[torch.Tensor]:
        return self.server.gradients()

    def step(self, n_samples: int, gradients: list[torch.Tensor | None] | None = None) -> tuple[float, float]:
        """Apply the round's (all-reduced) gradients averaged over ``n_samples``: (measured seconds, the lr used)."""
        start, lr = time.perf_counter(), self.server.lr
        if gradients is not None:
            self.server.set_gradients(gradients)
        self.server.step(n_samples)
        return time.perf_counter() - start, lr

    def predict(self, payload: bytes) -> tuple[int, float, int]:
        """(correct, summed cross-entropy in nats, samples) of one eval message."""
        msg = Message.from_bytes(payload)
        logits = self.server.predict(msg)
        loss = float(summed_loss(logits, msg.labels))
        return int((logits.argmax(-1) == msg.labels).sum()), loss, msg.batch_size

    def state(self) -> bytes:
        """Top weights, optimiser and schedule, serialised (what a checkpoint holds)."""
        buffer = io.BytesIO()
        s = self.server
        state = {
            "top": s.top.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
        }
        if getattr(s.optimizer, "generator", None) is not None:  # EW-Tune: the DP noise goes on where it left off
            state["noise_rng"] = s.optimizer.generator.get_state()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_state(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=False, map_location=self.server.device)
        self.server.top.load_state_dict(state["top"])
        self.server.optimizer.load_state_dict(state["optimizer"])
        self.server.scheduler.load_state_dict(state["scheduler"])
        if "noise_rng" in state:
            self.server.optimizer.generator.set_state(
                state["noise_rng"].cpu() if self.server.device.type == "cpu" else state["noise_rng"]
            )
        self.server.optimizer.zero_grad(set_to_none=True)  # a survivor of a failed round holds its partial sums
