"""Seeding the global generators a run draws from (Python, NumPy, torch), and keeping a block off them."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (or, as a decorator, a function) without moving the global generators (Python, NumPy, torch):
    what it draws leaves the draws around it as they were. The attacks use it, so that fitting or running them never
    changes the training's dropout: a run's training is the same whichever attacks it runs."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
