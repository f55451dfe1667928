"""Privacy–utility frontier: max EIA ASR top-1 (%) against utility (%: dev accuracy, F1 for generation), one
panel per split depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .style import REFERENCE, NothingToPlot, figure_legend, label, mechanism_colors, panels, save
from .tables import depth_label, mechanisms, privacy_parameter, setting, short_key

X, Y = "max_eia_asr_top1", "utility"


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows no other row dominates (lower-or-equal ``x`` and higher-or-equal ``y``, one strictly),
    sorted by ``x``; rows with NaN in ``x`` or ``y`` are left out. Lower ``x`` and higher ``y`` are better."""
    rows = df.dropna(subset=[x, y])
    xs, ys = rows[x].to_numpy(dtype=float), rows[y].to_numpy(dtype=float)
    keep = [not np.any((xs <= xi) & (ys >= yi) & ((xs < xi) | (ys > yi))) for xi, yi in zip(xs, ys)]
    return rows[keep].sort_values([x, y])


def plot_frontier(table: pd.DataFrame, path: str | Path, threshold: float | None = 0.10) -> Path:
    """Plot every finished point faintly and each mechanism's Pareto front as a line, its points labelled with the
    value of the privacy parameter named in the legend; ``none`` is a black star; a dashed line marks the ASR
    ``threshold`` (a fraction)."""
    rows = table.dropna(subset=[X, Y])
    if rows.empty:
        raise NothingToPlot("no finished point has both a max EIA ASR and a utility (were the attacks off?)")
    colors = mechanism_colors(table["mechanism"].dropna())
    depths = sorted(rows["split_depth"].unique(), key=lambda d: (pd.isna(d), d))
    fig, axes = panels(len(depths), size=(6.0, 4.6), sharey=True)
    for ax, depth in zip(axes, depths):
        here = rows[rows["split_depth"].isna()] if pd.isna(depth) else rows[rows["split_depth"] == depth]
        for mechanism in mechanisms(here):
            points = here[here["mechanism"] == mechanism]
            if mechanism == REFERENCE:
                ax.scatter(
                    100 * points[X],
                    100 * points[Y],
                    marker="*",
                    s=220,
                    color=colors[mechanism],
                    zorder=4,
                    label="none (reference)",
                )
                continue
            ax.scatter(100 * points[X], 100 * points[Y], color=colors[mechanism], alpha=0.25, s=22)
            front = pareto_front(points, X, Y)
            parameter = privacy_parameter(table, mechanism)
            name = f"{mechanism} ({short_key(parameter)})" if parameter else mechanism
            ax.plot(100 * front[X], 100 * front[Y], "o-", color=colors[mechanism], ms=5, label=name)
            for _, point in front.iterrows():
                ax.annotate(
                    setting(point, parameter, extras=False).partition("=")[2],
                    (100 * point[X], 100 * point[Y]),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=7,
                    color=colors[mechanism],
                )
        if threshold is not None:
            ax.axvline(100 * threshold, ls="--", color="grey", lw=1, label=f"ASR threshold {100 * threshold:g}%")
        label(
            ax,
            f"split depth {depth_label(depth)}",
            "max EIA ASR top-1 (%)",
            "utility (%): dev accuracy, F1 for QA",
            legend=False,
        )
    figure_legend(fig, axes)
    return save(fig, path, "Privacy–utility frontier (lower ASR and higher accuracy are better)")


def plot_frontier_over_seeds(
    summary: pd.DataFrame, path: str | Path, thresholds: tuple[float, ...] = (0.05, 0.10, 0.20, 0.30)
) -> Path:
    """One panel per attacker model: each setting (``seeds.over_seeds``) at its mean max EIA ASR and mean utility,
    with the seeds' std as error bars both ways; dotted lines mark the ASR ``thresholds``."""
    tagged = [c[: -len("_mean")] for c in summary.columns if c.startswith(f"{X}:") and c.endswith("_mean")]
    columns = tagged or [X]
    if summary.empty:
        raise NothingToPlot("no setting has finished points")
    colors = mechanism_colors(summary["mechanism"].dropna())
    fig, axes = panels(len(columns), size=(6.0, 4.6), sharey=True)
    for ax, column in zip(axes, columns):
        attacker = column.partition(":")[2] or "adaptive"
        for mechanism in mechanisms(summary):
            part = summary[summary["mechanism"] == mechanism].sort_values(f"{column}_mean")
            ax.errorbar(
                100 * part[f"{column}_mean"],
                100 * part["utility_mean"],
                xerr=100 * part[f"{column}_std"].fillna(0),
                yerr=100 * part["utility_std"].fillna(0),
                fmt="*" if mechanism == REFERENCE else "o",
                ms=12 if mechanism == REFERENCE else 5,
                capsize=3,
                color=colors[mechanism],
                label=mechanism,
            )
            for _, row in part.iterrows():
                if row["setting"]:
                    ax.annotate(
                        row["setting"],
                        (100 * row[f"{column}_mean"], 100 * row["utility_mean"]),
                        textcoords="offset points",
                        xytext=(4, 3),
                        fontsize=6,
                        color=colors[mechanism],
                    )
        for t in thresholds:
            ax.axvline(100 * t, ls=":" if t != 0.10 else "--", color="grey", lw=1)
        label(
            ax,
            f"{attacker} attacker",
            "max EIA ASR top-1 (%), mean ± std over seeds",
            "utility (%), mean ± std",
            legend=False,
        )
    figure_legend(fig, axes)
    return save(fig, path, "Privacy–utility frontier over seeds (dotted: 5 / 20 / 30 % ASR, dashed: 10 %)")
