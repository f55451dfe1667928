"""Timeline of one simulated round: per selected device, download / compute / upload, waiting in the top
model's queue and top-model processing, in simulated seconds since the round started."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.patches import Patch

from .style import NothingToPlot, label, panels, save

SEGMENTS = {
    "download": "tab:blue",
    "compute": "tab:orange",
    "upload": "tab:green",
    "queue": "lightgrey",
    "top": "tab:red",
}
SEGMENT_LABELS = {"queue": "waiting in queue", "top": "top model"}


def median_round(rounds: pd.DataFrame) -> int:
    """The round whose ``sim_round_s`` is the median (the lower middle one for an even count)."""
    if rounds.empty:
        raise NothingToPlot("rounds.csv has no rows")
    ordered = rounds.sort_values(["sim_round_s", "round"], kind="stable")
    return int(ordered["round"].iloc[(len(ordered) - 1) // 2])


def timeline_segments(devices: pd.DataFrame, rounds: pd.DataFrame, round_: int | None = None) -> pd.DataFrame:
    """One row per (device, segment) of a round (default :func:`median_round`): device, tier, status, segment,
    start_s, end_s (simulated s since the round's ``sim_start_s``). Download starts at 0, compute follows it,
    upload follows compute; queue runs from arrival to the top model's start, then top-model processing.
    Segments of zero or unknown length are left out."""
    round_ = median_round(rounds) if round_ is None else round_
    info = rounds[rounds["round"] == round_]
    if info.empty:
        raise NothingToPlot(f"round {round_} is not in rounds.csv")
    t0 = float(info["sim_start_s"].iloc[0])
    segments = []
    for _, d in devices[devices["round"] == round_].iterrows():
        compute_start = d["sim_download_s"]
        upload_start = compute_start + d["sim_compute_s"]
        spans = {
            "download": (0.0, compute_start),
            "compute": (compute_start, upload_start),
            "upload": (upload_start, upload_start + d["sim_upload_s"]),
            "queue": (d["sim_arrival_s"] - t0, d["sim_top_start_s"] - t0),
            "top": (d["sim_top_start_s"] - t0, d["sim_top_end_s"] - t0),
        }
        for segment, (start, end) in spans.items():
            if pd.notna(start) and pd.notna(end) and end > start:
                segments.append(
                    {
                        "device": int(d["device"]),
                        "tier": d["tier"],
                        "status": d["status"],
                        "segment": segment,
                        "start_s": float(start),
                        "end_s": float(end),
                    }
                )
    return pd.DataFrame(segments, columns=["device", "tier", "status", "segment", "start_s", "end_s"])


def plot_timeline(devices: pd.DataFrame, rounds: pd.DataFrame, path: str | Path, round_: int | None = None) -> Path:
    """Gantt chart of :func:`timeline_segments`: one row per selected device (``device id · tier``, ordered by
    when its work ends), a cross after a dropped device's last segment, a diamond at a late arrival, and a
    dashed line at the round's end (``sim_round_s``)."""
    round_ = median_round(rounds) if round_ is None else round_
    segments = timeline_segments(devices, rounds, round_)
    selected = devices[devices["round"] == round_]
    if selected.empty:
        raise NothingToPlot(f"no device was selected in round {round_}")
    ends = segments.groupby("device")["end_s"].max().reindex(selected["device"]).fillna(0.0)
    order = selected.assign(end=ends.to_numpy()).sort_values("end", kind="stable")
    t0 = float(rounds.loc[rounds["round"] == round_, "sim_start_s"].iloc[0])
    fig, (ax,) = panels(1, size=(10.0, 1.6 + 0.32 * len(order)))
    markers = {"dropped": "X", "late": "D"}
    for y, (_, d) in enumerate(order.iterrows()):
        mine = segments[segments["device"] == d["device"]]
        for segment, color in SEGMENTS.items():
            spans = mine[mine["segment"] == segment]
            ax.broken_barh(list(zip(spans["start_s"], spans["end_s"] - spans["start_s"])), (y - 0.35, 0.7), color=color)
        if d["status"] in markers:
            at = d["sim_arrival_s"] - t0 if d["status"] == "late" and pd.notna(d["sim_arrival_s"]) else d["end"]
            ax.plot(at, y, markers[d["status"]], color="black", ms=7, label=d["status"])
    end = float(rounds.loc[rounds["round"] == round_, "sim_round_s"].iloc[0])
    ax.axvline(end, ls="--", color="black", lw=1, label="round end")
    ax.set_yticks(range(len(order)), [f"{int(d)} · {t}" for d, t in zip(order["device"], order["tier"])], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.invert_yaxis()
    marks = dict(zip(*ax.get_legend_handles_labels()[::-1]))
    handles = [Patch(color=c, label=SEGMENT_LABELS.get(s, s)) for s, c in SEGMENTS.items()] + list(marks.values())
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    label(
        ax,
        f"Round {round_}: {len(order)} selected devices, {end:.1f} simulated s",
        "simulated time since round start (s)",
        "device id · tier",
        legend=False,
    )
    return save(fig, path)
