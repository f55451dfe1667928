"""Utility at equal ASR: compare mechanism variants where they leak the same, not where their η is the same.

A variant (``privtune``, ``privtune:importance=false``, ``dchi``) measured at several η gives, per seed, points
(ASR_η, u_η). Its utility at the bound b is the linear interpolation of u between the two η whose ASR brackets b:

    u(b) = u_lo + (u_hi − u_lo)·(b − ASR_lo)/(ASR_hi − ASR_lo),  ASR_lo ≤ b ≤ ASR_hi,

computed per seed, then summarised as mean ± std over seeds. A seed whose points do not bracket b gives no value
(said in the row, never extrapolated). :func:`compare_to` sets each variant against a reference (plain d_χ) and
says whether the gap exceeds the seeds' spread (the larger of the two std).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable


def interpolate_at(points: Iterable[tuple[float, float]], bound: float) -> float | None:
    """u at ASR = ``bound`` from (ASR, u) points, linear between the nearest bracketing pair; None if not bracketed."""
    pts = sorted(points)
    for (a_lo, u_lo), (a_hi, u_hi) in zip(pts, pts[1:], strict=False):
        if a_lo <= bound <= a_hi:
            return u_lo if a_hi == a_lo else u_lo + (u_hi - u_lo) * (bound - a_lo) / (a_hi - a_lo)
    if len(pts) == 1 and pts[0][0] == bound:
        return pts[0][1]
    return None


def at_equal_asr(
    rows: list[dict], bound: float, asr: str = "max_eia_asr", utility: str = "probe_accuracy"
) -> list[dict]:
    """One row per (m, variant): utility at ASR = ``bound``, mean ± std over the seeds that bracket it.

    ``rows`` carry ``m``, ``variant``, ``seed``, ``eta``, ``asr`` and ``utility``; rows without an η (undefended)
    are skipped."""
    by_seed: dict[tuple, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("eta") is not None and r.get(asr) is not None:
            by_seed[(r["m"], r["variant"])][r.get("seed", 0)].append((float(r[asr]), float(r[utility])))
    out = []
    for (m, variant), seeds in by_seed.items():
        values = {s: interpolate_at(pts, bound) for s, pts in sorted(seeds.items())}
        got = [v for v in values.values() if v is not None]
        out.append(
            {
                "m": m,
                "variant": variant,
                "bound": bound,
                "seeds": len(got),
                "seeds_not_bracketed": [s for s, v in values.items() if v is None],
                f"{utility}_mean": statistics.fmean(got) if got else None,
                f"{utility}_std": statistics.stdev(got) if len(got) > 1 else None,
            }
        )
    return out


def compare_to(table: list[dict], reference: str, utility: str = "probe_accuracy") -> list[dict]:
    """Each row of :func:`at_equal_asr` with ``minus_reference`` (points of utility over the same m's reference
    variant) and ``beyond_spread``: |gap| > the larger std of the two (False where either lacks a spread)."""
    ref = {r["m"]: r for r in table if r["variant"] == reference}
    out = []
    for r in table:
        base = ref.get(r["m"])
        row = dict(r)
        mean, base_mean = r[f"{utility}_mean"], base and base[f"{utility}_mean"]
        if base is None or mean is None or base_mean is None:
            row.update(minus_reference=None, beyond_spread=False)
        else:
            gap = mean - base_mean
            spreads = [s for s in (r[f"{utility}_std"], base[f"{utility}_std"]) if s is not None]
            row.update(
                minus_reference=100 * gap,
                beyond_spread=len(spreads) == 2 and abs(gap) > max(spreads),
            )
        out.append(row)
    return out
