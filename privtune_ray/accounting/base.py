"""The one accountant interface, Opacus' ``IAccountant``'s methods and its (σ, q, steps) history, without
importing Opacus (and torch): the DP plan and ``privtune-ray account`` use it from the config checks.

acc.step(noise_multiplier=σ, sample_rate=q)   one Poisson-subsampled Gaussian step (num_steps=T: T at once)
acc.get_epsilon(delta)                        ε(δ) in nats of every step so far (add-or-remove-one neighbours)
len(acc)                                      the number of steps so far
acc.mechanism()                               the registry name (``registry.ACCOUNTANTS``)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .validation import check_noise_multiplier, check_sample_rate


class Accountant(ABC):
    """``history``: [(σ, q, steps)] as Opacus keeps it, consecutive equal (σ, q) merged into one entry."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        check_noise_multiplier(noise_multiplier)
        check_sample_rate(sample_rate)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history.pop()
            self.history.append((sigma, q, steps + num_steps))
        else:
            self.history.append((noise_multiplier, sample_rate, num_steps))

    def __len__(self) -> int:
        return sum(steps for _, _, steps in self.history)

    @abstractmethod
    def get_epsilon(self, delta: float, **kwargs) -> float:
        """ε(δ) in nats of every step so far."""

    @classmethod
    @abstractmethod
    def mechanism(cls) -> str:
        """The registry name (``registry.ACCOUNTANTS``)."""
