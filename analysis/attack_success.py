"""Attack success per attack for one chosen point per mechanism: EIA ASR top-1 (%) and AIA advantage (pp)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .headline import best_within, lowest_asr
from .style import NothingToPlot, bar_chart_width, figure_legend, grouped_bars, label, mechanism_colors, panels, save
from .tables import ADVANTAGE, ASR, aia_columns, depth_label, eia_columns, mechanisms, privacy_parameter, setting


def select_points(table: pd.DataFrame, threshold: float = 0.10) -> pd.DataFrame:
    """One row per mechanism: its best-utility point with max EIA ASR <= ``threshold``; failing that, its
    strongest-noise point, taken as the one with the lowest max EIA ASR (its first point if none measured).
    All at one split depth where they can be: that of the best qualifying point of any defence."""
    best = best_within(table[table["mechanism"] != "none"], threshold)
    if best is not None and "split_depth" in table:
        same = table[table["split_depth"] == table.loc[best, "split_depth"]]
        if set(mechanisms(same)) == set(mechanisms(table)):
            table = same
    chosen = []
    for mechanism in mechanisms(table):
        points = table[table["mechanism"] == mechanism]
        pick = best_within(points, threshold)
        pick = lowest_asr(points) if pick is None else pick
        chosen.append(points.index[0] if pick is None else pick)
    return table.loc[chosen]


def point_label(table: pd.DataFrame, row: pd.Series) -> str:
    """``privtune (eta=10, m=2)``: mechanism, privacy setting and split depth of a point."""
    parameter = privacy_parameter(table, row["mechanism"])
    details = [s for s in (setting(row, parameter), depth_label(row["split_depth"])) if s]
    return f"{row['mechanism']} ({', '.join(details)})"


def plot_attack_success(
    table: pd.DataFrame, path: str | Path, selection: pd.DataFrame | None = None, threshold: float = 0.10
) -> Path:
    """Grouped bars, one group per attack and one bar per selected point (default :func:`select_points`):
    inversion ASR top-1 in % (dashed line at ``threshold``), and attribute-attack advantage in percentage points."""
    selection = select_points(table, threshold) if selection is None else selection
    kinds = [
        (c, suffix)
        for c, suffix in ((eia_columns(table), ASR), (aia_columns(table), ADVANTAGE))
        if c and selection[c].notna().any().any()
    ]
    if selection.empty or not kinds:
        raise NothingToPlot("the sweep has no per-attack results (attacks were off, or no point finished)")
    labels = [point_label(table, row) for _, row in selection.iterrows()]
    colors = mechanism_colors(table["mechanism"].dropna())
    bars = max(len(c) for c, _ in kinds) * len(selection)
    fig, axes = panels(len(kinds), ncols=1, size=(bar_chart_width(bars) + 2.5, 3.6))
    for ax, (columns, suffix) in zip(axes, kinds):
        attacks = [c.removesuffix(suffix) for c in columns]
        values = pd.DataFrame(100 * selection[columns].to_numpy(dtype=float), columns=attacks, index=labels).T
        grouped_bars(ax, values, {lab: colors[str(m)] for lab, m in zip(labels, selection["mechanism"])})
        if suffix == ASR:
            ax.axhline(100 * threshold, ls="--", color="grey", lw=1, label=f"ASR threshold {100 * threshold:g}%")
            label(ax, "Embedding inversion attacks", "attack", "ASR top-1 (%)", legend=False)
        else:
            ax.axhline(0, color="black", lw=0.8)
            label(ax, "Attribute inference attacks", "attack", "advantage over majority (pp)", legend=False)
    figure_legend(fig, axes)
    return save(fig, path, "Attack success per attack")


def attack_by_tier(summary: dict) -> pd.DataFrame:
    """A simulation's attack success per device tier (``summary['attack_by_depth']``): tier, depth m, victims,
    best inversion ASR top-1 (%) and best attribute advantage (pp), worst first."""
    rows = [
        {
            "tier": part["tier"],
            "m": int(depth),
            "victims": part["victims"],
            "max EIA ASR top-1 (%)": None if part["max_eia_asr_top1"] is None else 100 * part["max_eia_asr_top1"],
            "max AIA advantage (pp)": None if part["max_aia_advantage"] is None else 100 * part["max_aia_advantage"],
        }
        for depth, parts in (summary.get("attack_by_depth") or {}).items()
        for part in parts
    ]
    if not rows:
        raise NothingToPlot("the run attacked no upload (attack.enabled was off, or its design uploads none)")
    return pd.DataFrame(rows).sort_values("max EIA ASR top-1 (%)", ascending=False, na_position="last")


def plot_attack_by_tier(summary: dict, path: str | Path, threshold: float = 0.10) -> Path:
    """Bars, one per tier (labelled with its depth m): the best inversion attack's top-1 ASR on that tier's uploads,
    each depth's attacked by suites fitted through the bottom at that depth; dashed line at ``threshold``."""
    table = attack_by_tier(summary).dropna(subset=["max EIA ASR top-1 (%)"])
    if table.empty:
        raise NothingToPlot("no inversion attack ran on the uploads")
    fig, (ax,) = panels(1, size=(bar_chart_width(len(table)), 3.6))
    names = [f"{t} (m={m})" for t, m in zip(table["tier"], table["m"])]
    ax.bar(names, table["max EIA ASR top-1 (%)"], color="tab:red")
    ax.axhline(100 * threshold, ls="--", color="grey", lw=1, label=f"ASR threshold {100 * threshold:g}%")
    label(ax, "Best inversion attack per tier", "device tier (split depth)", "ASR top-1 (%)")
    return save(fig, path, "Attack success per tier")
