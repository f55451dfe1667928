"""Per-device overhead of a simulation by tier, from ``devices.csv``: bytes, measured compute and simulated time
per device-round. Dropped device-rounds are left out of the means (they did not finish the round's work)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import KIB, MIB, NothingToPlot, label, panels, save

SIM_PARTS = ["sim_download_s", "sim_compute_s", "sim_upload_s"]
# (column of the per-device-round frame, panel title, axis label)
PANELS = [
    ("up_KiB", "Uplink per device-round", "uplink (KiB)"),
    ("down_MiB", "Downlink per device-round", "downlink (MiB)"),
    ("compute_s", "Measured device compute per round", "compute (s, wall clock)"),
    ("sim_device_s", "Simulated device time per round", "download + compute + upload (simulated s)"),
]


def _per_device_round(devices: pd.DataFrame) -> pd.DataFrame:
    done = devices[devices["status"] != "dropped"]
    return done.assign(
        up_KiB=done["bytes_up"] / KIB,
        down_MiB=done["bytes_down"] / MIB,
        sim_device_s=done[SIM_PARTS].sum(axis=1, min_count=1),
    )


def tier_order(devices: pd.DataFrame) -> list[str]:
    """Tiers by split depth, then by first appearance."""
    first = devices.drop_duplicates("tier")
    return list(first.sort_values("depth", kind="stable")["tier"])


def overhead_by_tier(devices: pd.DataFrame) -> pd.DataFrame:
    """One row per tier: its split depth, device-rounds (all selected), dropped and late counts, and the means over
    non-dropped device-rounds of uplink (KiB), downlink (MiB), measured compute (s) and simulated
    download / compute / upload / total device time (s)."""
    if devices.empty:
        raise NothingToPlot("devices.csv has no rows")
    rows = _per_device_round(devices)
    counts = devices.groupby("tier").agg(
        depth=("depth", "first"),
        device_rounds=("status", "size"),
        dropped=("status", lambda s: int((s == "dropped").sum())),
        late=("status", lambda s: int((s == "late").sum())),
    )
    means = rows.groupby("tier")[["up_KiB", "down_MiB", "compute_s", *SIM_PARTS, "sim_device_s"]].mean()
    return counts.join(means).reindex(tier_order(devices))


def plot_overhead(devices: pd.DataFrame, path: str | Path) -> Path:
    """Box plots by tier (boxes: quartiles, whiskers: 1.5 IQR, triangles: means) of the four per-device-round
    costs in :data:`PANELS`, over non-dropped device-rounds."""
    rows = _per_device_round(devices)
    if rows.empty:
        raise NothingToPlot("every device-round was dropped")
    tiers = [t for t in tier_order(devices) if t in set(rows["tier"])]
    depth = rows.groupby("tier")["depth"].first()
    ticks = [f"{t}\n(m={depth[t]})" for t in tiers]
    fig, axes = panels(len(PANELS), ncols=2, size=(5.0, 3.4))
    for ax, (column, title, unit) in zip(axes, PANELS):
        data = [rows.loc[rows["tier"] == t, column].dropna().to_numpy() for t in tiers]
        ax.boxplot(data, showmeans=True, flierprops={"markersize": 3, "alpha": 0.4})
        ax.set_xticks(range(1, len(ticks) + 1), ticks)
        label(ax, title, "device tier (split depth)", unit)
    return save(fig, path, "Per-device overhead by tier (non-dropped device-rounds; ▲ = mean)")
