"""Communication per design: uplink KiB per training sample, by mechanism and split depth (sweeps) or by
split depth per simulation run (from ``devices.csv``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from privtune_ray.message import CHANNELS

from .style import KIB, NothingToPlot, bar_chart_width, grouped_bars, label, mechanism_colors, panels, save
from .tables import depth_label, mechanisms


def uplink_per_sample(table: pd.DataFrame) -> pd.DataFrame:
    """Mean uplink KiB per sample over a sweep's finished points: rows = split depth label, columns = mechanism."""
    rows = table.dropna(subset=["bytes_up_per_sample"])
    if rows.empty:
        raise NothingToPlot("no finished point reports bytes_up_per_sample")
    kib = rows.assign(depth=rows["split_depth"].map(depth_label), kib=rows["bytes_up_per_sample"] / KIB)
    wide = kib.pivot_table(index="depth", columns="mechanism", values="kib", aggfunc="mean", sort=True)
    return wide[[m for m in mechanisms(kib) if m in wide.columns]]


def plot_communication(table: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars: uplink KiB per training sample, one group per split depth, one bar per mechanism
    (mean over its points; mechanisms sending the same shape send the same bytes)."""
    values = uplink_per_sample(table)
    fig, (ax,) = panels(1, size=(bar_chart_width(values.size), 3.8))
    grouped_bars(ax, values, mechanism_colors(table["mechanism"].dropna()), value_format="{:.1f}")
    label(ax, "Uplink per training sample", "split depth", "uplink (KiB / sample)")
    return save(fig, path)


def uplink_by_depth(devices: pd.DataFrame) -> pd.Series:
    """A simulation's uplink KiB per sample by split depth: total bytes_up / total samples over device-rounds."""
    sent = devices[devices["samples"] > 0].groupby("depth")[["bytes_up", "samples"]].sum()
    if sent.empty:
        raise NothingToPlot("no device-round sent any sample")
    return (sent["bytes_up"] / sent["samples"] / KIB).rename(index=depth_label)


def plot_simulation_communication(runs: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Grouped bars: uplink KiB per sample, one group per simulation run (name → its ``devices.csv``),
    one bar per split depth."""
    values = pd.DataFrame({name: uplink_by_depth(devices) for name, devices in runs.items()}).T
    fig, (ax,) = panels(1, size=(bar_chart_width(values.size), 3.8))
    grouped_bars(ax, values[sorted(values.columns)], value_format="{:.1f}")
    label(ax, "Uplink per training sample by split depth", "simulation run", "uplink (KiB / sample)")
    return save(fig, path)


CHANNEL_PREFIX = "bytes_per_sample:"


def channels_per_sample(table: pd.DataFrame) -> pd.DataFrame:
    """KiB per sent sample on every channel (act_up, act_down, grad_up, grad_down, adapter_up, adapter_down),
    one row per design/mechanism (mean over its points): what a simulation's devices exchanged beyond the bottom's
    one-time download. Sweeps of ``runner: simulate`` have these columns; others raise NothingToPlot."""
    order = {c: i for i, c in enumerate(CHANNELS)}
    columns = sorted(
        (c for c in table.columns if c.startswith(CHANNEL_PREFIX)),
        key=lambda c: order.get(c.removeprefix(CHANNEL_PREFIX), len(order)),
    )
    rows = table.dropna(subset=columns, how="all") if columns else table.iloc[0:0]
    if rows.empty:
        raise NothingToPlot("no point reports bytes per channel (only `runner: simulate` sweeps do)")
    wide = rows.groupby("mechanism", sort=False)[columns].mean() / KIB
    wide.columns = [c.removeprefix(CHANNEL_PREFIX) for c in columns]
    return wide.loc[[m for m in mechanisms(rows) if m in wide.index]].fillna(0.0)


def plot_channels(table: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars: KiB per sample on each channel, one group per design/mechanism, one bar per channel."""
    values = channels_per_sample(table)
    fig, (ax,) = panels(1, size=(bar_chart_width(values.size), 3.8))
    grouped_bars(ax, values, value_format="{:.0f}")
    ax.set_yscale("symlog", linthresh=1.0)
    label(ax, "Traffic per sample and channel", "design / mechanism", "KiB / sample (symlog)")
    return save(fig, path)
