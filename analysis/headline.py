"""The headline: per mechanism and split depth, the best dev accuracy among points whose max EIA ASR top-1 is at
most a threshold, against the ``none`` reference at the same depth; and a Markdown table formatter."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .style import REFERENCE
from .tables import mechanisms, privacy_parameter, setting

COLUMNS = [
    "mechanism",
    "split_depth",
    "setting",
    "utility",
    "max_eia_asr_top1",
    "reference_utility",
    "drop_points",
    "drop_relative",
    "note",
]


def _at_depth(table: pd.DataFrame, depth: object) -> pd.DataFrame:
    return table[table["split_depth"].isna()] if pd.isna(depth) else table[table["split_depth"] == depth]


def best_within(points: pd.DataFrame, threshold: float):
    """Index of the best-utility point whose max EIA ASR top-1 is at most ``threshold`` (None if none is)."""
    safe = points[(points["max_eia_asr_top1"] <= threshold + 1e-12) & points["utility"].notna()]
    return None if safe.empty else safe["utility"].idxmax()


def lowest_asr(points: pd.DataFrame):
    """Index of the point with the lowest max EIA ASR top-1, the strongest noise (None if none measured)."""
    return points["max_eia_asr_top1"].idxmin() if points["max_eia_asr_top1"].notna().any() else None


def headline_table(table: pd.DataFrame, threshold: float = 0.10) -> pd.DataFrame:
    """One row per mechanism other than ``none`` and split depth (fractions in [0, 1]):

    ``utility``/``max_eia_asr_top1``/``setting``: its best-utility point with max EIA ASR <= ``threshold``;
    ``reference_utility``: the mean utility of the ``none`` points at that depth (NaN without one);
    ``drop_points`` = 100 × (reference − utility); ``drop_relative`` = (reference − utility) / reference.
    Without a qualifying point, utility is NaN and ``note`` gives the mechanism's lowest ASR and its utility.
    """
    rows = []
    limit = f"{100 * threshold:g}%"
    for depth in sorted(table["split_depth"].unique(), key=lambda d: (pd.isna(d), d)):
        here = _at_depth(table, depth)
        reference = here.loc[here["mechanism"] == REFERENCE, "utility"].mean()
        for mechanism in (m for m in mechanisms(here) if m != REFERENCE):
            points = here[here["mechanism"] == mechanism]
            best, low = best_within(points, threshold), lowest_asr(points)
            row = {
                "mechanism": mechanism,
                "split_depth": depth,
                "setting": "",
                "utility": float("nan"),
                "max_eia_asr_top1": float("nan"),
                "reference_utility": reference,
                "note": "",
            }
            if best is not None:
                best = points.loc[best]
                row.update(
                    setting=setting(best, privacy_parameter(table, mechanism)),
                    utility=best["utility"],
                    max_eia_asr_top1=best["max_eia_asr_top1"],
                )
            elif low is not None:
                low = points.loc[low]
                where = setting(low, privacy_parameter(table, mechanism))
                row["note"] = (
                    f"no point with max EIA ASR <= {limit}; lowest ASR {100 * low['max_eia_asr_top1']:.1f}%"
                    f" at utility {100 * low['utility']:.1f}%" + (f" ({where})" if where else "")
                )
            else:
                row["note"] = f"no point with max EIA ASR <= {limit}; no EIA ASR measured"
            if pd.isna(reference):
                row["note"] = "; ".join(n for n in (row["note"], f"no {REFERENCE} point at this depth") if n)
            rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["drop_points"] = 100 * (out["reference_utility"] - out["utility"])
    out["drop_relative"] = (out["reference_utility"] - out["utility"]) / out["reference_utility"]
    return out


def _cell(value: object, fmt: str) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format(value, fmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    df: pd.DataFrame, floatfmt: str = ".3f", formats: Mapping[str, str] | None = None, index: bool = False
) -> str:
    """A GitHub-Markdown table of ``df``: floats with ``floatfmt`` (or ``formats[column]``), NaN as ``–``,
    numbers right-aligned; ``index`` adds the index as the first column."""
    frame = df.reset_index() if index else df
    formats = formats or {}
    header = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    cells = [
        [_cell(v.item() if hasattr(v, "item") else v, formats.get(c, floatfmt)) for c, v in zip(frame.columns, row)]
        for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
