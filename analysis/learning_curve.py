"""One `train` run as a picture: its learning curve (loss and the evaluation's utility against steps) and where
its time and bytes went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .style import NothingToPlot, label, panels, save

TIME_PARTS = {
    "bottom_compute_s": "bottom (device)",  # device_compute_s less the mechanism's share
    "mechanism_compute_s": "mechanism (device)",
    "top_compute_s": "top (cloud)",
    "comm_s": "serialisation",
}
BYTE_PARTS = {
    "bytes_up": "up, training",
    "bytes_down": "down, training",
    "bytes_up_eval": "up, evaluation",
    "bytes_down_eval": "down, evaluation",
}


def plot_learning_curve(metrics: pd.DataFrame, evals: pd.DataFrame | None, path: str | Path) -> Path:
    """Training loss (nats, mean over each ``log_every`` window) and, when evaluated, the eval split's utility and
    loss, against optimiser steps."""
    if metrics.empty or "loss" not in metrics:
        raise NothingToPlot("metrics.csv has no rows")
    utility = next((c for c in ("accuracy", "f1") if evals is not None and c in evals), None)
    fig, axes = panels(2 if utility else 1)
    axes[0].plot(metrics["step"], metrics["loss"], marker=".", label="training (window mean)")
    if evals is not None and "loss" in evals:
        axes[0].plot(evals["step"], evals["loss"], marker="o", label="evaluation")
    label(axes[0], "loss", "step", "cross-entropy (nats)")
    if utility:
        axes[1].plot(evals["step"], 100 * evals[utility], marker="o", color="tab:green")
        label(axes[1], f"evaluation {utility}", "step", f"{utility} (%)")
    return save(fig, path)


def plot_time_and_bytes(summary: dict[str, Any], path: str | Path) -> Path:
    """Measured seconds per part of the split (device, cloud, serialisation) and bytes per direction (MiB)."""
    parts = {**summary, "bottom_compute_s": summary["device_compute_s"] - summary["mechanism_compute_s"]}
    seconds = {name: parts[key] for key, name in TIME_PARTS.items() if parts.get(key)}
    traffic = {name: summary[key] / 2**20 for key, name in BYTE_PARTS.items() if summary.get(key)}
    if not seconds and not traffic:
        raise NothingToPlot("summary.json records no seconds or bytes")
    fig, axes = panels(2)
    axes[0].barh(list(seconds), list(seconds.values()), color="tab:orange")
    label(axes[0], "where the time went", "measured seconds", "", legend=False)
    axes[1].barh(list(traffic), list(traffic.values()), color="tab:blue")
    label(axes[1], "what crossed the split", "MiB", "", legend=False)
    return save(fig, path)
