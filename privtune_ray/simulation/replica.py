"""A top-model replica: the cloud's trainable part (the design's :meth:`build_cloud`) behind narrow methods.

Replicas stay in sync by synchronous data-parallel SGD (``simulation/pool.py``): in a round each replica
accumulates ∇ Σ CE over its share of the messages; the pool sums the replicas' gradients and every replica
applies the same sum with the same step. All replicas start from the same seeded weights, so they hold
identical weights after every round, and the result does not depend on the number of replicas beyond the
order of float additions. Dropout in the top is seeded per message (derive_seed(run seed, device, round)).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config
from ..message import Message, concat_messages, take_rows
from ..models.loading import load_task_model
from ..seeding import seed_everything
from ..training.server import summed_loss
from .node import node_id
from .protocol import EvalResult, TopResult, derive_seed


@dataclass
class ReplicaSetup:
    cfg: Config
    design: Any  # the run's Design (privtune_ray.designs.base), as the coordinator prepared it
    num_labels: int
    entry_depth: int  # m_min: the shallowest device's depth; deeper devices' h enter later
    threads: int
    device: str = "cpu"  # "cuda" on a GPU replica
    prepared_top: bytes | None = None  # the top's weights after the cloud's levers on public text (torch.save)


@dataclass
class _Unit:
    """A message, or piece ``k`` of it (``rows``), in one forward/backward pass."""

    message: int
    rows: torch.Tensor | None = None
    k: int = 0

    def size(self, msgs: list[Message]) -> int:
        return msgs[self.message].batch_size if self.rows is None else len(self.rows)


class TopReplica:
    def __init__(self, setup: ReplicaSetup):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(setup.threads)
        self.setup, self.design = setup, setup.design
        cfg = setup.cfg
        seed_everything(cfg.seed)  # the fresh head is initialised from the seed: identical on every replica
        task_model = load_task_model(cfg.model.name, cfg.model.task, setup.num_labels)
        self.device = setup.device if setup.device == "cpu" or torch.cuda.is_available() else "cpu"
        self.server = self.design.build_cloud(self, task_model)

    def ping(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return node_id()

    def describe(self) -> dict:
        return {
            "pid": os.getpid(),
            "node": node_id(),
            "device": str(self.server.device),
            "threads": torch.get_num_threads(),
            "trainable_params": sum(p.numel() for p in self.server.trainable()),
        }

    def accumulate(self, seeds: list[int], *payloads: bytes) -> list[TopResult]:
        """Add each message's gradient (summed loss) to the replica's; message j's dropout seeded by ``seeds[j]``.

        The forward/backward passes take pieces of at most ``train.physical_batch_size`` samples where it is set:
        a larger message (``train``'s one device sends its whole logical batch) is cut into pieces by length; a
        design that packs uploads (``Design.packs_uploads``: EW-Tune, whose per-sample clipping does not depend on
        the batch) also has its messages sorted by split depth and length and concatenated into pieces (little
        padding). A piece's dropout is seeded by its first message's seed (the pieces of one message draw on);
        a message's ``top_s`` is its share (by samples) of its pieces' measured seconds."""
        msgs = [Message.from_bytes(p) for p in payloads]
        loss = [0.0] * len(msgs)
        top_s = [0.0] * len(msgs)
        for piece in self._pieces(msgs):
            start = time.perf_counter()
            first = piece[0]
            torch.manual_seed(seeds[first.message] if first.k == 0 else derive_seed(seeds[first.message], first.k))
            parts = [msgs[u.message] if u.rows is None else take_rows(msgs[u.message], u.rows) for u in piece]
            packed = parts[0] if len(parts) == 1 else concat_messages(parts)
            losses = self.server.accumulate_samples(packed)
            seconds = time.perf_counter() - start
            offset = 0
            for unit, part in zip(piece, parts):
                n = part.batch_size
                loss[unit.message] += float(losses[offset : offset + n].sum())
                top_s[unit.message] += seconds * n / packed.batch_size
                offset += n
        return [TopResult(loss[j], msgs[j].batch_size, top_s[j]) for j in range(len(msgs))]

    def _pieces(self, msgs: list[Message]) -> list[list[_Unit]]:
        """What each forward/backward takes, in order. One message each, unless ``train.physical_batch_size`` cuts
        a larger one (its rows by length) or the design packs uploads (whole messages by split depth and length,
        class-id messages only)."""
        limit = self.setup.cfg.train.physical_batch_size
        if limit is None:
            return [[_Unit(j)] for j in range(len(msgs))]

        def class_ids(m: Message) -> bool:
            return tuple(m.labels.shape) == (m.batch_size,)

        units: list[_Unit] = []  # whole messages, and the pieces of those over the limit
        for j, msg in enumerate(msgs):
            if msg.batch_size > limit and class_ids(msg):
                by_length = torch.argsort(msg.attention_mask.sum(1), stable=True)
                units += [_Unit(j, by_length[i : i + limit], k) for k, i in enumerate(range(0, msg.batch_size, limit))]
            else:
                units.append(_Unit(j))
        if not self.design.packs_uploads:
            return [[u] for u in units]
        units.sort(key=lambda u: (msgs[u.message].split_depth or 0, msgs[u.message].hidden.shape[1]))
        pieces: list[list[_Unit]] = []
        filled = 0
        for unit in units:
            msg, size = msgs[unit.message], unit.size(msgs)
            head = pieces[-1][0] if pieces else None
            if (
                head is not None
                and head.rows is None
                and unit.rows is None
                and filled + size <= limit
                and msgs[head.message].split_depth == msg.split_depth
                and class_ids(msgs[head.message])
                and class_ids(msg)
            ):
                pieces[-1].append(unit)
                filled += size
            else:
                pieces.append([unit])
                filled = size
        return pieces

    def phase(self, keys: list[int], fn: Callable, *args):
        """A design's cloud phase ``fn(design, replica, keys, *args)`` (e.g. GuardedTuning's middle forward)."""
        return fn(self.design, self, keys, *args)

    def gradients(self) -> list[torch.Tensor | None]:
        return self.server.gradients()

    def step(self, n_samples: int, gradients: list[torch.Tensor | None] | None = None) -> tuple[float, float]:
        """Apply the round's (all-reduced) gradients averaged over ``n_samples``: (measured seconds, the lr used)."""
        start, lr = time.perf_counter(), self.server.lr
        if gradients is not None:
            self.server.set_gradients(gradients)
        self.server.step(n_samples)
        return time.perf_counter() - start, lr

    def predict(self, payload: bytes) -> EvalResult:
        """Correct predictions, summed cross-entropy (nats) and samples of one eval message."""
        msg = Message.from_bytes(payload)
        logits = self.server.predict(msg)
        loss = float(summed_loss(logits, msg.labels))
        return EvalResult(int((logits.argmax(-1) == msg.labels).sum()), loss, msg.batch_size)

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
            rng = state["noise_rng"]
            self.server.optimizer.generator.set_state(rng.cpu() if self.server.device.type == "cpu" else rng)
        self.server.optimizer.zero_grad(set_to_none=True)  # a survivor of a failed round holds its partial sums
