"""Assign the samples of a split to N devices. Deterministic under a seed; no sample is shared or lost.

* ``iid``: a random permutation cut into N near-equal shards.
* ``dirichlet`` (label skew): for each class c, shares p_c ~ Dir(α·1_N) split the class's samples;
  small α gives devices few classes each, α → ∞ approaches IID.
* ``lognormal`` (quantity skew): device sizes ∝ w_i ~ LogNormal(0, σ²), labels IID; σ = 0 is equal sizes.

``weights`` (optional, one per device) scale the devices' expected sizes in every scheme: a simulated
device tier with ``data_weight`` 4 holds about four times the data of one with weight 1.

A device left with no sample is an error (it names the knob to turn), not a silent empty device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import DataError


def _check(n_samples: int, n_devices: int) -> None:
    if n_devices < 1:
        raise DataError(f"number of devices must be >= 1, got {n_devices}")
    if n_samples < n_devices:
        raise DataError(f"{n_samples} samples cannot fill {n_devices} devices: use more samples or fewer devices")


def _split_by_counts(order: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return [np.sort(part) for part in np.split(order, np.cumsum(counts)[:-1])]


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``shares * total`` (Hamilton's method)."""
    raw = shares * total
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def iid(labels: np.ndarray, n_devices: int, rng: np.random.Generator, weights=None) -> list[np.ndarray]:
    _check(len(labels), n_devices)
    if weights is None:
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n_devices)]
    counts = largest_remainder(_normalised(weights, n_devices), len(labels))
    return _non_empty(_split_by_counts(rng.permutation(len(labels)), counts), "raise the smallest data_weight")


def dirichlet(
    labels: np.ndarray, n_devices: int, rng: np.random.Generator, alpha: float = 0.5, weights=None
) -> list[np.ndarray]:
    _check(len(labels), n_devices)
    if not alpha > 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(n_devices, alpha))
        if weights is not None:
            shares = _normalised(shares * _normalised(weights, n_devices), n_devices)
        counts = largest_remainder(shares, len(members))
        for device, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            parts[device].append(chunk)
    return _non_empty([np.sort(np.concatenate(p)) for p in parts], f"raise the Dirichlet alpha (now {alpha})")


def lognormal(
    labels: np.ndarray, n_devices: int, rng: np.random.Generator, sigma: float = 1.0, weights=None
) -> list[np.ndarray]:
    _check(len(labels), n_devices)
    if sigma < 0:
        raise DataError(f"lognormal sigma must be >= 0, got {sigma}")
    sizes = rng.lognormal(0.0, sigma, size=n_devices)
    if weights is not None:
        sizes = sizes * _normalised(weights, n_devices)
    counts = largest_remainder(sizes / sizes.sum(), len(labels))
    return _non_empty(
        _split_by_counts(rng.permutation(len(labels)), counts), f"lower the lognormal sigma (now {sigma})"
    )


def _normalised(weights, n_devices: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_devices,) or not (w > 0).all():
        raise DataError(f"partition weights must be {n_devices} positive numbers, one per device")
    return w / w.sum()


def _non_empty(parts: list[np.ndarray], fix: str) -> list[np.ndarray]:
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(
            f"partition left {len(empty)} of {len(parts)} devices with no sample (e.g. device {empty[0]}): "
            f"{fix}, use fewer devices, or more samples"
        )
    return parts


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {"iid": iid, "dirichlet": dirichlet, "lognormal": lognormal}


def partition(labels, n_devices: int, scheme: str = "iid", seed: int = 0, **params) -> list[np.ndarray]:
    """Indices of each device's samples, e.g. ``partition(y, 100, "dirichlet", seed=0, alpha=0.3)``."""
    if scheme not in PARTITIONERS:
        raise DataError(f"unknown partition scheme {scheme!r}; choose one of {sorted(PARTITIONERS)}")
    return PARTITIONERS[scheme](np.asarray(labels), n_devices, np.random.default_rng(seed), **params)
