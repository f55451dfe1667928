"""Points over seeds: a sweep that swaps only ``seed`` between runs of one setting, summarised as mean ± std.

A *setting* is a mechanism with every swept key but ``seed`` (its privacy parameter, a warm start, the split depth).
:func:`over_seeds` gives one row per setting: ``utility_mean``/``utility_std`` and, for every attacker model the
runs measured (``max_eia_asr_top1:adaptive``, ``:static``; ``max_eia_asr_top1`` alone for older sweeps), the mean
and std of the max EIA ASR top-1 over its seeds. :func:`frontier_over_seeds` picks, per mechanism and attacker
model, the setting with the best mean utility among those whose **mean** max EIA ASR is at most a threshold.
"""

from __future__ import annotations

import pandas as pd

from .style import REFERENCE, format_value
from .tables import override_columns, short_key

SEED = "seed"
ASR = "max_eia_asr_top1"


def attackers(table: pd.DataFrame) -> list[str]:
    """The attacker models a sweep's rows measured (``adaptive``, ``static``), or ``[""]`` for the plain column."""
    tagged = [c.split(":", 1)[1] for c in table.columns if c.startswith(f"{ASR}:")]
    return tagged or [""]


def asr_column(attacker: str) -> str:
    return f"{ASR}:{attacker}" if attacker else ASR


def setting_keys(table: pd.DataFrame) -> list[str]:
    """The swept keys that define a setting: every override but the seed and the mechanism's name, and the split
    depth where the table's rows differ in it without sweeping it (several sweeps' tables, one per depth)."""
    keys = [c for c in override_columns(table) if c not in (SEED, "mechanism.name")]
    if "model.split_depth" not in keys and "split_depth" in table and table["split_depth"].nunique() > 1:
        keys.insert(0, "split_depth")
    return keys


def setting_label(row: pd.Series, keys: list[str]) -> str:
    """``eta=6, warm=True, split_depth=2``: a setting's swept values, NaN ones left out."""
    return ", ".join(f"{short_key(k)}={format_value(row[k])}" for k in keys if k in row and not pd.isna(row[k]))


def over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (mechanism, setting): ``seeds``, utility and each attacker model's max EIA ASR, mean and std."""
    keys = setting_keys(table)
    measures = ["utility", *[asr_column(a) for a in attackers(table)]]
    groups = table.assign(**{k: table[k].astype(object).where(table[k].notna(), "–") for k in keys}).groupby(
        ["mechanism", *keys], sort=False, dropna=False
    )
    rows = []
    for values, part in groups:
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(["mechanism", *keys], values, strict=True))
        row = {k: (pd.NA if v == "–" else v) for k, v in row.items()}
        row["setting"] = setting_label(pd.Series(row), keys)
        row["seeds"] = int(part[SEED].nunique()) if SEED in part else len(part)
        for m in measures:
            row[f"{m}_mean"] = float(part[m].mean())
            row[f"{m}_std"] = float(part[m].std(ddof=1)) if len(part) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def frontier_over_seeds(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per mechanism and attacker model: the setting of best mean utility whose mean max EIA ASR is at most
    ``threshold`` (a fraction), with the undefended ``none`` utility beside it; a mechanism none of whose settings
    meets the bound gets its lowest-ASR setting, flagged ``meets_bound = False``."""
    summary = over_seeds(table)
    reference = summary[summary["mechanism"] == REFERENCE]
    ref_utility = float(reference["utility_mean"].max()) if not reference.empty else float("nan")
    rows = []
    for attacker in attackers(table):
        asr = f"{asr_column(attacker)}_mean"
        for mechanism, part in summary.groupby("mechanism", sort=True):
            inside = part[part[asr] <= threshold + 1e-12]
            meets = not inside.empty
            best = inside.loc[inside["utility_mean"].idxmax()] if meets else part.loc[part[asr].idxmin()]
            rows.append(
                {
                    "mechanism": mechanism,
                    "attacker": attacker or "adaptive",
                    "setting": best["setting"],
                    "seeds": best["seeds"],
                    "utility_mean": best["utility_mean"],
                    "utility_std": best["utility_std"],
                    "max_eia_asr": best[asr],
                    "max_eia_asr_std": best[f"{asr_column(attacker)}_std"],
                    "meets_bound": meets,
                    "reference_utility": ref_utility,
                    "drop_points": 100 * (ref_utility - best["utility_mean"]),
                }
            )
    return pd.DataFrame(rows)


__all__ = ["asr_column", "attackers", "frontier_over_seeds", "over_seeds", "setting_keys"]
