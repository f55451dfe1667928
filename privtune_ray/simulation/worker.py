"""A device worker: one process that acts as any number of virtual devices, one task at a time.

It loads the pretrained model once and caches a frozen bottom (and a mechanism template) per split
depth. Everything that belongs to a device comes with its :class:`~privtune_ray.simulation.protocol.DeviceTask`,
so any worker can run any device and a re-run of a task gives the same message. The mechanism a device
fitted on its own data is kept in a small LRU cache: a cache only, re-fitted on a miss.
"""

from __future__ import annotations

import copy
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config
from ..data.batching import TokenizedSplit, collate
from ..designs.guarded import GUARDED, Blocks, ClientAdapters, GuardedClient, gradients_to_bytes, guarded_layout
from ..mechanisms import Mechanism, build_mechanism
from ..message import tensor_from_bytes
from ..models.loading import load_task_model, load_tokenizer, resolve_model
from ..models.split import depth_of, split_model
from ..training.client import SplitClient
from ..training.server import summed_loss
from .protocol import DeviceReport, DeviceTask, derive_seed


@dataclass
class WorkerSetup:
    cfg: Config
    num_labels: int
    train: TokenizedSplit
    eval: TokenizedSplit
    threads: int
    fit_cache: int = 256  # devices whose fitted mechanism a worker keeps


class DeviceWorker:
    """Runs :class:`DeviceTask` s: bottom_m(x) → mechanism → serialised message."""

    def __init__(self, setup: WorkerSetup):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(setup.threads)
        self.setup, self.cfg = setup, setup.cfg
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.task_model = load_task_model(self.cfg.model.name, self.cfg.model.task, setup.num_labels)
        self.tokenizer = load_tokenizer(self.cfg.model.name)
        self.model_id = resolve_model(self.cfg.model.name)
        self.pad_id = self.tokenizer.pad_token_id
        self._splits: dict[int, object] = {}
        self._templates: dict[int, Mechanism] = {}
        self._fitted: OrderedDict[tuple[int, int], Mechanism] = OrderedDict()
        self._client: GuardedClient | None = None  # GuardedTuning: the device side, built on first use

    def _split(self, depth: int):
        if depth not in self._splits:
            self._splits[depth] = split_model(
                self.task_model, depth, task=self.cfg.model.task, name=self.cfg.model.name
            )
        return self._splits[depth]

    def _mechanism(self, task: DeviceTask) -> Mechanism:
        key = (task.device, task.depth)
        if key not in self._fitted:
            if task.depth not in self._templates:
                self._templates[task.depth] = build_mechanism(
                    self.cfg.mechanism, self._split(task.depth), self.tokenizer, self.model_id, seed=self.cfg.seed
                )
            self._fitted[key] = self._templates[task.depth].for_device(
                self.setup.train.subset(task.data), task.fit_seed
            )
            if len(self._fitted) > self.setup.fit_cache:
                self._fitted.popitem(last=False)
        self._fitted.move_to_end(key)
        mech = self._fitted[key]
        mech.reseed(task.seed)
        return mech

    def run(self, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """Act as device ``task.device`` for round ``task.round``: the report and the upload's bytes."""
        if self.cfg.design.name in GUARDED:
            return self._run_guarded(task)
        client = SplitClient(
            self._split(task.depth).bottom, self._mechanism(task), device_id=task.device, bits=self.cfg.design.bits
        )
        batch = collate(self.setup.train, task.samples, self.pad_id)
        payload = client.encode(batch).to_bytes()
        report = DeviceReport(
            round=task.round,
            device=task.device,
            depth=task.depth,
            samples=len(task.samples),
            tokens=batch.num_tokens,
            bytes_up=len(payload),
            compute_s=client.compute_s,
            mechanism_s=client.mechanism_s,
            worker=self.name,
        )
        return report, payload

    def encode_eval(self, indices: np.ndarray, depth: int, seed: int) -> bytes:
        """A message of eval samples from a device of ``depth`` [ours: its mechanism fitted on the whole training split]."""
        task = DeviceTask(
            round=-1,
            device=-1,
            depth=depth,
            samples=indices,
            data=np.arange(len(self.setup.train)),
            seed=seed,
            fit_seed=self.cfg.seed,
        )
        client = SplitClient(self._split(depth).bottom, self._mechanism(task), device_id=-1, bits=self.cfg.design.bits)
        return client.encode(collate(self.setup.eval, indices, self.pad_id)).to_bytes()

    # ------------------------------------------------------------------ GuardedTuning (simulation/guarded.py)

    def _guarded(self) -> GuardedClient:
        if self._client is None:
            cfg = self.cfg
            layout = guarded_layout(cfg, depth_of(self.task_model))
            emulator = None
            if cfg.design.name == "offline":
                emulator = Blocks(copy.deepcopy(self.task_model), layout.emulator).requires_grad_(False).eval()
            self._client = GuardedClient(
                cfg.design.name,
                self._split(layout.m).bottom,
                ClientAdapters(self.task_model, layout, cfg.model.task),
                cfg.design.dcor_weight,
                cfg.design.bits,
                emulator,
            )
        return self._client

    def load_adapters(self, blob: bytes) -> None:
        """The round's adapter weights (every device of the round downloads them)."""
        self._guarded().adapters.load_bytes(blob)

    def _run_guarded(self, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """online, gradfree: the A1 upload; offline: the local step against the emulator, its adapter gradients."""
        client, batch = self._guarded(), collate(self.setup.train, task.samples, self.pad_id)
        client.compute_s, loss_sum, penalty = 0.0, 0.0, 0.0
        if self.cfg.design.name == "offline":
            torch.manual_seed(derive_seed(task.seed, 2))  # A_t's dropout (the middle's is seeded by task.seed)
            loss_sum, penalty, grads = client.offline_step(batch)
            payload = gradients_to_bytes(grads)
        else:
            payload = client.upload(batch)
        report = DeviceReport(
            round=task.round,
            device=task.device,
            depth=task.depth,
            samples=len(task.samples),
            tokens=batch.num_tokens,
            bytes_up=len(payload),
            compute_s=client.compute_s,
            mechanism_s=0.0,
            worker=self.name,
            loss_sum=loss_sum,
            penalty=penalty,
        )
        return report, payload

    def guarded_top(self, task: DeviceTask, a2_payload: bytes) -> tuple[float, bytes | None, bytes, float]:
        """(Σ CE, the ∂ℓ/∂A2 upload or None, A_t's gradients, measured seconds)."""
        client, batch = self._guarded(), collate(self.setup.train, task.samples, self.pad_id)
        client.compute_s = 0.0
        torch.manual_seed(derive_seed(task.seed, 2))  # A_t's dropout (the middle's is seeded by task.seed)
        loss_sum, grad_up, grads = client.top_step(batch, a2_payload)
        return loss_sum, grad_up, gradients_to_bytes(grads), client.compute_s

    def guarded_bottom(self, task: DeviceTask, grad_a1_payload: bytes) -> tuple[float, bytes, float]:
        """(α·B·dCor, A_b's gradients, measured seconds)."""
        client, batch = self._guarded(), collate(self.setup.train, task.samples, self.pad_id)
        client.compute_s = 0.0
        penalty, grads = client.backward_bottom(batch, grad_a1_payload)
        return penalty, gradients_to_bytes(grads), client.compute_s

    def guarded_eval_upload(self, indices: np.ndarray) -> bytes:
        return self._guarded().upload(collate(self.setup.eval, indices, self.pad_id))

    def guarded_predict(self, indices: np.ndarray, a2_payload: bytes) -> tuple[int, float, int]:
        """(correct, Σ CE in nats, samples) of an eval batch, from the A2 the cloud returned."""
        batch = collate(self.setup.eval, indices, self.pad_id)
        logits = self._guarded().predict(batch, tensor_from_bytes(a2_payload))
        loss = float(summed_loss(logits, batch.labels))
        return int((logits.argmax(-1) == batch.labels).sum()), loss, len(indices)

    def ping(self) -> str:
        return self.name
