"""A device worker: one process that acts as any number of virtual devices, one task at a time.

It loads the pretrained model once and caches a frozen bottom (and a mechanism template) per split depth.
Everything that belongs to a device comes with its :class:`~privtune_ray.simulation.protocol.DeviceTask`,
so any worker can run any device and a re-run of a task gives the same message. The mechanism a device
fitted on its own data is kept in a small LRU cache: a cache only, re-fitted on a miss. What a device
computes is the design's (:meth:`~privtune_ray.designs.base.Design.device_step` and its phases); the worker
only hosts it.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.batching import Batch, TokenizedSplit, collate
from ..mechanisms.base import Mechanism
from ..mechanisms.registry import build_mechanism
from ..models.loading import load_task_model, load_tokenizer, resolve_model
from ..models.split import SplitModel, split_model
from .node import node_id
from .protocol import DeviceReport, DeviceTask


@dataclass
class WorkerSetup:
    cfg: Config
    design: Any  # the run's Design (privtune_ray.designs.base), as the coordinator prepared it
    num_labels: int
    train: TokenizedSplit
    eval: TokenizedSplit
    threads: int
    fit_cache: int = 256  # devices whose fitted mechanism a worker keeps


class DeviceWorker:
    """Hosts virtual devices: the model, its bottoms per depth, the devices' fitted mechanisms."""

    def __init__(self, setup: WorkerSetup):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(setup.threads)
        self.setup, self.cfg, self.design = setup, setup.cfg, setup.design
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.task_model = load_task_model(self.cfg.model.name, self.cfg.model.task, setup.num_labels)
        self.tokenizer = load_tokenizer(self.cfg.model.name)
        self.model_id = resolve_model(self.cfg.model.name)
        self.pad_id = self.tokenizer.pad_token_id
        self.state: dict[str, Any] = {}  # the design's device-side objects, built on first use
        self._splits: dict[int, SplitModel] = {}
        self._templates: dict[int, Mechanism] = {}
        self._fitted: OrderedDict[tuple[int, int], Mechanism] = OrderedDict()

    def split(self, depth: int) -> SplitModel:
        if depth not in self._splits:
            self._splits[depth] = split_model(
                self.task_model, depth, task=self.cfg.model.task, name=self.cfg.model.name
            )
        return self._splits[depth]

    def mechanism(self, task: DeviceTask) -> Mechanism:
        """Device ``task.device``'s mechanism, fitted on its own data and reseeded for this task."""
        key = (task.device, task.depth)
        if key not in self._fitted:
            if task.depth not in self._templates:
                split = self.split(task.depth)
                self._templates[task.depth] = build_mechanism(
                    self.cfg.mechanism, split, self.tokenizer, self.model_id, seed=self.cfg.seed
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

    def batch(self, indices: np.ndarray, split: str = "train") -> Batch:
        """The samples ``indices`` of the training (or eval) split, padded."""
        return collate(self.setup.train if split == "train" else self.setup.eval, indices, self.pad_id)

    # ------------------------------------------------------------------ what the pool calls

    def run(self, task: DeviceTask) -> tuple[DeviceReport, bytes]:
        """Act as device ``task.device`` for round ``task.round``: the report and the upload's bytes."""
        return self.design.device_step(self, task)

    def phase(self, fn: Callable, *args):
        """A design's device phase ``fn(design, worker, *args)`` (e.g. GuardedTuning's top step)."""
        return fn(self.design, self, *args)

    def ping(self) -> str:
        return self.name

    def node(self) -> str:
        return node_id()
