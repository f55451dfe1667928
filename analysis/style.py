"""Shared figure plumbing: panels, axis labels, legends, mechanism colours and PNG output (Agg canvas)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

KIB = 1024.0
MIB = 1024.0**2
REFERENCE = "none"  # the mechanism every other one is compared with
# tab10 without its grey (index 7), which is too close to the reference's black.
PALETTE = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]


class NothingToPlot(ValueError):
    """The input is valid but holds nothing this plot can show; the message says why."""


def panels(
    n: int, *, ncols: int | None = None, size: tuple[float, float] = (5.0, 3.6), sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels of ``size`` inches (``ncols`` per row; default: one row up to 3, else about
    square) on an Agg canvas."""
    ncols = ncols or (n if n <= 3 else math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def label(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    """Title and unit-bearing axis labels; a legend when ``legend`` and the panel has more than one series."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    if legend and len(ax.get_legend_handles_labels()[1]) > 1:
        ax.legend(fontsize=8)


def figure_legend(fig: Figure, axes: Iterable[Axes]) -> None:
    """One legend for the whole figure, right of the panels, each label once (first handle wins)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    if len(entries) > 1:
        fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=8)


def bar_chart_width(bars: int) -> float:
    """Figure width (inches) for a bar chart of ``bars`` bars: 5 to 14."""
    return min(14.0, max(5.0, 0.4 * bars + 2.0))


def save(fig: Figure, path: str | Path, title: str | None = None) -> Path:
    """Write the figure as a PNG (with ``title`` over all panels) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.savefig(path, format="png", dpi=120)
    return path


def mechanism_colors(names: Iterable[str]) -> dict[str, Any]:
    """A colour per mechanism: ``none`` is black; others take a tab10 slot chosen by a hash of the name
    (stable across figures and reports), moving to the next free slot on a clash."""
    colors: dict[str, Any] = {}
    taken: set[int] = set()
    for name in sorted({str(n) for n in names}):
        if name == REFERENCE:
            colors[name] = "black"
            continue
        slot = zlib.crc32(name.encode()) % len(PALETTE)
        while slot in taken and len(taken) < len(PALETTE):
            slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        colors[name] = PALETTE[slot]
    return colors


def grouped_bars(
    ax: Axes, values: pd.DataFrame, colors: Mapping[str, Any] | None = None, value_format: str | None = None
) -> None:
    """Bars grouped by ``values.index`` (tick labels), one bar per column (legend label); NaN = no bar;
    ``value_format`` (e.g. ``"{:.1f}"``) writes each bar's value on top of it."""
    n = max(len(values.columns), 1)
    width = 0.8 / n
    x = np.arange(len(values.index))
    for i, column in enumerate(values.columns):
        heights = values[column].to_numpy(dtype=float)
        shown = ~np.isnan(heights)
        bars = ax.bar(
            x[shown] - 0.4 + width * (i + 0.5),
            heights[shown],
            width,
            label=str(column),
            color=None if colors is None else colors.get(str(column)),
        )
        if value_format:
            ax.bar_label(bars, fmt=value_format, fontsize=7, padding=2, rotation=90 if values.size > 12 else 0)
    if value_format:
        ax.margins(y=0.2 if values.size > 12 else 0.15)
    ax.set_xticks(x, [str(v) for v in values.index])


def format_value(value: Any) -> str:
    """A parameter value as written in a config: ``10`` not ``10.0``, strings as is."""
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)
