"""``write_report``: discover sweeps and runs under a folder, plot them, and write ``report.md`` beside the PNGs."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from privtune_ray import __version__
from privtune_ray.errors import ConfigError
from privtune_ray.runs import make_output_dir

from .attack_success import attack_by_tier, plot_attack_by_tier, plot_attack_success
from .communication import channels_per_sample, plot_channels, plot_communication, plot_simulation_communication
from .frontier import plot_frontier, plot_frontier_over_seeds
from .headline import headline_table, markdown_table
from .learning_curve import plot_learning_curve, plot_time_and_bytes
from .overhead import overhead_by_tier, plot_overhead
from .seeds import SEED, frontier_over_seeds, over_seeds
from .style import KIB, MIB, NothingToPlot
from .tables import (
    ADVANTAGE,
    ASR,
    DESIGN_KEYS,
    SimulationRun,
    aia_columns,
    depth_label,
    eia_columns,
    failed_points,
    find_simulations,
    find_sweeps,
    find_train_runs,
    load_simulation,
    load_summary,
    load_sweep,
    override_columns,
    short_key,
)
from .timeline import median_round, plot_timeline

# A displayed column: source column -> (header with unit, scale factor, number format).
View = Mapping[str, tuple[str, float, str]]
PCT, PP, KIB_FMT = (100.0, ".1f"), (100.0, "+.1f"), (1 / KIB, ".1f")
SWEEP_VIEW: View = {
    "point": ("point", 1, ""),
    "mechanism": ("mechanism", 1, ""),
    "split_depth": ("m", 1, ""),
    "utility": ("utility (%)", *PCT),
    "max_eia_asr_top1": ("max EIA ASR (%)", *PCT),
    "max_aia_advantage": ("max AIA adv. (pp)", *PP),
    "epsilon": ("ε", 1, ".3g"),
    "eta_per_unit": ("η / unit", 1, ".3g"),
    "bytes_up_per_sample": ("up (KiB/sample)", *KIB_FMT),
    "train_wall_s": ("train wall (s)", 1, ".0f"),
    "sim_time_s": ("sim time (s)", 1, ".0f"),
}
HEADLINE_VIEW: View = {
    "mechanism": ("mechanism", 1, ""),
    "split_depth": ("m", 1, ""),
    "setting": ("setting", 1, ""),
    "utility": ("utility (%)", *PCT),
    "max_eia_asr_top1": ("max EIA ASR (%)", *PCT),
    "reference_utility": ("none utility (%)", *PCT),
    "drop_points": ("drop (pp)", 1, ".1f"),
    "drop_relative": ("drop (% of none)", *PCT),
    "note": ("note", 1, ""),
}
TRAIN_VIEW: View = {
    "name": ("run", 1, ""),
    "dataset": ("dataset", 1, ""),
    "design": ("design", 1, ""),
    "mechanism": ("mechanism", 1, ""),
    "split_depth": ("m", 1, ""),
    "dev_accuracy": ("dev acc. (%)", *PCT),
    "dev_exact_match": ("dev EM (%)", *PCT),
    "dev_f1": ("dev F1 (%)", *PCT),
    "bytes_up_per_sample": ("up (KiB/sample)", *KIB_FMT),
    "train_wall_s": ("train wall (s)", 1, ".1f"),
    "device_compute_s": ("device (s)", 1, ".1f"),
    "mechanism_compute_s": ("of it mechanism (s)", 1, ".2f"),
    "top_compute_s": ("top (s)", 1, ".1f"),
    "max_eia_asr_top1": ("max EIA ASR (%)", *PCT),
    "max_aia_advantage": ("max AIA adv. (pp)", *PP),
}
TIER_VIEW: View = {
    "depth": ("m", 1, ""),
    "device_rounds": ("device-rounds", 1, ""),
    "dropped": ("dropped", 1, ""),
    "late": ("late", 1, ""),
    "up_KiB": ("up (KiB)", 1, ".1f"),
    "down_MiB": ("down (MiB)", 1, ".1f"),
    "compute_s": ("compute (s)", 1, ".4f"),
    "sim_download_s": ("sim download (s)", 1, ".2f"),
    "sim_compute_s": ("sim compute (s)", 1, ".2f"),
    "sim_upload_s": ("sim upload (s)", 1, ".2f"),
    "sim_device_s": ("sim device total (s)", 1, ".2f"),
}


def _view(df: pd.DataFrame, view: View, index: bool = False) -> str:
    """``df``'s columns named in ``view``, in its order, scaled and renamed with their units (split depths as
    labels), all-empty columns left out, as a Markdown table."""
    frame = pd.DataFrame(index=df.index)
    formats = {}
    for column, (header, scale, fmt) in view.items():
        if column in df.columns and (df[column].notna() & (df[column] != "")).any():
            values = df[column]
            if column in ("split_depth", "depth"):
                values = values.map(lambda d: depth_label(d).removeprefix("m="))
            elif scale != 1:
                values = pd.to_numeric(values, errors="coerce") * scale
            frame[header] = values
            formats[header] = fmt or ".3g"
    if index:
        frame.index.name = df.index.name
    return markdown_table(frame, formats=formats, index=index)


def _sweep_view(table: pd.DataFrame) -> View:
    """:data:`SWEEP_VIEW` with the swept parameters after the depth and one % column per attack at the end."""
    params = {c: (short_key(c), 1, "g") for c in override_columns(table) if c not in DESIGN_KEYS}
    attacks = {
        **{c: (c.replace(ASR, " ASR (%)"), *PCT) for c in eia_columns(table)},
        **{c: (c.replace(ADVANTAGE, " adv. (pp)"), *PP) for c in aia_columns(table)},
    }
    head = dict(list(SWEEP_VIEW.items())[:3])
    return {**head, **params, **{k: v for k, v in SWEEP_VIEW.items() if k not in head}, **attacks}


def _slug(path: Path, root: Path) -> str:
    rel = path.resolve().relative_to(root.resolve())
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(rel.parts) or root.resolve().name)


def _figure(out: Path, name: str, caption: str, plot: Callable[..., Path], *args: Any, **kwargs: Any) -> str:
    """Run ``plot(*args, out/name, **kwargs)``; the Markdown image, or why it was not drawn."""
    try:
        path = plot(*args, out / name, **kwargs)
    except NothingToPlot as why:
        return f"*{caption}: not plotted — {why}.*"
    return f"![{caption}]({os.path.relpath(path, out)})"


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``; ``root`` itself as given."""
    return str(path.resolve().relative_to(root.resolve())) if path.resolve() != root.resolve() else str(root)


def _provenance(root: Path, sweeps: list[Path], sims: list[Path], trains: list[Path]) -> str:
    lines = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} by privtune-ray {__version__} (`analysis.report`) "
        f"from `{root.resolve()}`.",
        "",
    ]
    for path in sweeps:
        meta_path = path / "sweep.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        git = (meta.get("git") or {}).get("commit")
        extra = ", ".join(
            x
            for x in (
                f"runner {meta.get('spec', {}).get('runner')}" if meta.get("spec") else "",
                f"updated {meta['updated_at']}" if meta.get("updated_at") else "",
                f"commit {git[:10]}" if git else "",
            )
            if x
        )
        lines.append(f"- sweep `{_rel(path, root)}`" + (f" ({extra})" if extra else ""))
    for kind, paths in (("simulation run", sims), ("train run", trains)):
        for path in paths:
            finished = load_summary(path).get("finished_at")
            lines.append(f"- {kind} `{_rel(path, root)}`" + (f" (finished {finished})" if finished else ""))
    return "\n".join(lines)


def _headline(sweeps: list[Path], root: Path, threshold: float) -> str:
    limit = f"{100 * threshold:g}%"
    text = [
        f"## Headline\n\nPer mechanism and split depth: the best utility (dev accuracy; F1 for generation) among "
        f"points whose max EIA ASR top-1 is at most {limit}, and its drop against `none` at the same depth "
        f"(pp = percentage points). The best is taken over every swept variant of a mechanism (its privacy "
        f"parameter and any other swept key, shown in `setting`), so a mechanism swept more widely has more "
        f"chances; one seed unless `seed` is swept."
    ]
    for path in sweeps:
        table = headline_table(load_sweep(path), threshold)
        title = f"\n\n### Sweep `{_rel(path, root)}`\n\n" if len(sweeps) > 1 else "\n\n"
        body = _view(table, HEADLINE_VIEW) if not table.empty else "No finished point of a mechanism other than `none`."
        text.append(title + body)
    return "".join(text)


def _sweep_section(path: Path, root: Path, out: Path, threshold: float) -> str:
    table, failed = load_sweep(path), failed_points(path)
    slug = _slug(path, root)
    parts = [
        f"## Sweep `{_rel(path, root)}`",
        f"{len(table)} finished point(s), {len(failed)} failed.",
        "### Privacy–utility frontier",
        _figure(out, f"frontier-{slug}.png", "privacy–utility frontier", plot_frontier, table, threshold=threshold),
        *_seed_parts(table, out, slug, threshold),
        "### Attack success",
        f"Each mechanism at its best-utility point with max EIA ASR ≤ {100 * threshold:g}%, or, without one,"
        " at its lowest-ASR (strongest-noise) point.",
        _figure(
            out, f"attacks-{slug}.png", "attack success per attack", plot_attack_success, table, threshold=threshold
        ),
        "### Communication",
        _figure(out, f"communication-{slug}.png", "uplink per sample", plot_communication, table),
        *_channel_parts(table, out, slug),
        "### All finished points",
        _view(table, _sweep_view(table)) if not table.empty else "No point finished.",
        "### Failed points",
        markdown_table(failed.dropna(axis=1, how="all"), "g") if not failed.empty else "None.",
    ]
    return "\n\n".join(parts)


def _seed_parts(table: pd.DataFrame, out: Path, slug: str, threshold: float) -> list[str]:
    """The frontier over seeds, where the sweep swept ``seed``: the best setting per mechanism and attacker model
    at each ASR bound (mean ± std), every setting, and the plot with error bars."""
    if SEED not in table.columns or table[SEED].nunique() < 2:
        return []
    summary = over_seeds(table)
    bounds = sorted({0.05, threshold, 0.20, 0.30})
    best = pd.concat([frontier_over_seeds(table, b).assign(bound=b) for b in bounds], ignore_index=True)
    best["utility"] = [_pm(m, s) for m, s in zip(best["utility_mean"], best["utility_std"])]
    best["max EIA ASR"] = [_pm(m, s) for m, s in zip(best["max_eia_asr"], best["max_eia_asr_std"])]
    best["bound"] = [f"≤ {100 * b:g}%" for b in best["bound"]]
    shown = best[
        ["bound", "mechanism", "attacker", "setting", "seeds", "utility", "max EIA ASR", "meets_bound", "drop_points"]
    ]
    return [
        "### Frontier over seeds",
        f"Per mechanism and attacker model, the setting of best mean utility whose mean max EIA ASR top-1 is within "
        f"each bound (mean ± std over {int(table[SEED].nunique())} seeds, in %; `meets_bound` false: no setting is "
        f"within it, the lowest-ASR one is shown). Adaptive: the inverters are fitted through the attacker's copy of "
        f"the mechanism; static: on clean outputs.",
        markdown_table(shown, ".1f"),
        _figure(out, f"frontier-seeds-{slug}.png", "frontier over seeds", plot_frontier_over_seeds, summary),
    ]


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if not pd.isna(std) else f"{100 * mean:.1f}"


def _channel_parts(table: pd.DataFrame, out: Path, slug: str) -> list[str]:
    """Bytes per channel (simulate sweeps: GuardedTuning's activations, gradients and adapters beside the uploads
    of the split designs); nothing for sweeps without them."""
    try:
        values = channels_per_sample(table)
    except NothingToPlot:
        return []
    return [
        "### Traffic per channel",
        "KiB per sent sample and channel, mean over each design's points (`_up`: device → cloud; the bottom's "
        "and emulator's one-time download is not included):",
        markdown_table(values, ".1f", index=True),
        _figure(out, f"channels-{slug}.png", "traffic per channel", plot_channels, table),
    ]


def _channel_totals(run: SimulationRun) -> str:
    """Bytes per channel of a simulation run (summary ``bytes_by_channel``), total and per sent sample."""
    channels = {k: v for k, v in (run.summary.get("bytes_by_channel") or {}).items() if v}
    if not channels:
        return ""
    sent = max(run.summary.get("sent_samples") or 0, 1)
    frame = pd.DataFrame(
        {
            "channel": list(channels),
            "MiB": [v / MIB for v in channels.values()],
            "KiB per sample": [v / KIB / sent for v in channels.values()],
        }
    )
    return f"Bytes per channel (design `{run.summary.get('design', 'split')}`):\n\n" + markdown_table(frame, ".1f")


def _run_numbers(run: SimulationRun) -> str:
    s = run.summary
    numbers = [
        ("dataset", s.get("dataset")),
        ("mechanism", s.get("mechanism")),
        ("design", s.get("design", "split")),
        ("devices", s.get("devices")),
        ("rounds", s.get("rounds")),
        ("dev accuracy (%)", _scaled(s.get("dev_accuracy"), 100, ".2f")),
        ("uplink total (MiB)", _scaled(s.get("bytes_up"), 1 / MIB, ".1f")),
        ("downlink total (MiB)", _scaled(s.get("bytes_down"), 1 / MIB, ".1f")),
        ("uplink per sample (KiB)", _scaled(s.get("bytes_up_per_sample"), 1 / KIB, ".1f")),
        ("simulated time (s)", _scaled(s.get("sim_time_s"), 1, ".1f")),
        ("train wall clock (s)", _scaled(s.get("train_wall_s"), 1, ".1f")),
        ("dropped device-rounds", s.get("dropped")),
        ("late device-rounds", s.get("late")),
    ]
    return markdown_table(pd.DataFrame([(k, v) for k, v in numbers if v is not None], columns=["quantity", "value"]))


def _scaled(value: Any, scale: float, fmt: str) -> str | None:
    return None if value is None else format(float(value) * scale, fmt)


def _accuracy_by_depth(run: SimulationRun) -> str:
    by_depth = run.summary.get("dev_by_depth") or {}
    text = []
    if by_depth:
        final = pd.DataFrame.from_dict(by_depth, orient="index").rename_axis("m")
        final["accuracy"] = 100 * final["accuracy"]
        final = final.rename(columns={"accuracy": "dev acc. (%)", "loss": "dev loss", "samples": "dev samples"})
        table = markdown_table(final, ".2f", {"dev loss": ".4f"}, index=True)
        text.append(f"Final dev accuracy of each depth's model:\n\n{table}")
    if run.evals is not None and not run.evals.empty:
        curve = run.evals.pivot_table(index="rounds_done", columns="depth", values="accuracy") * 100
        curve.columns = [f"dev acc. m={d} (%)" for d in curve.columns]
        table = markdown_table(curve, ".2f", index=True)
        text.append(f"Dev accuracy (%) by depth during training (`eval.csv`):\n\n{table}")
    return "\n\n".join(text) or "No per-depth evaluation in this run."


def _simulation_section(path: Path, root: Path, out: Path) -> str:
    run = load_simulation(path)
    slug = _slug(path, root)
    tiers = pd.DataFrame(run.summary.get("tiers") or [])
    try:
        by_tier = _view(overhead_by_tier(run.devices), TIER_VIEW, index=True)
        timeline_round = f" (round {median_round(run.rounds)}, the median `sim_round_s`)"
    except NothingToPlot as why:
        by_tier, timeline_round = f"No by-tier table: {why}.", ""
    parts = [
        f"## Simulation `{run.name}` (`{_rel(path, root)}`)",
        _run_numbers(run),
        "Tiers:\n\n" + markdown_table(tiers) if not tiers.empty else "",
        "### Per-device overhead by tier",
        _figure(out, f"overhead-{slug}.png", "per-device overhead by tier", plot_overhead, run.devices),
        f"Means over non-dropped device-rounds (sim = simulated s; compute = measured wall clock):\n\n{by_tier}",
        "### Communication",
        _figure(
            out,
            f"communication-{slug}.png",
            "uplink per sample by depth",
            plot_simulation_communication,
            {run.name: run.devices},
        ),
        _channel_totals(run),
        f"### Round timeline{timeline_round}",
        _figure(out, f"timeline-{slug}.png", "round timeline", plot_timeline, run.devices, run.rounds),
        "### Accuracy by depth",
        _accuracy_by_depth(run),
        "### Attack success by tier",
        _attack_by_tier(run, out, slug),
    ]
    return "\n\n".join(p for p in parts if p)


def _attack_by_tier(run: SimulationRun, out: Path, slug: str) -> str:
    try:
        table = attack_by_tier(run.summary)
    except NothingToPlot as why:
        return f"No attack table: {why}."
    worst = run.summary.get("worst_tier")
    return "\n\n".join(
        [
            _figure(out, f"attack-tiers-{slug}.png", "attack success per tier", plot_attack_by_tier, run.summary),
            f"Each depth's uploads attacked by suites fitted through the bottom at that depth; the headline "
            f"(`max_eia_asr_top1`) is the worst tier's ({worst}):\n\n" + markdown_table(table, ".1f"),
        ]
    )


def _train_section(trains: list[Path], root: Path, out: Path) -> str:
    summaries = [(p, load_summary(p)) for p in trains]
    rows = pd.DataFrame([{**s, "name": s.get("name") or _rel(p, root)} for p, s in summaries])
    parts = ["## Train runs", _view(rows, TRAIN_VIEW)]
    for path, summary in summaries:
        slug = _slug(path, root)
        metrics = pd.read_csv(path / "metrics.csv") if (path / "metrics.csv").exists() else pd.DataFrame()
        evals = pd.read_csv(path / "eval.csv") if (path / "eval.csv").exists() else None
        parts += [
            f"### {summary.get('name') or _rel(path, root)}",
            _figure(out, f"learning-curve-{slug}.png", "learning curve", plot_learning_curve, metrics, evals),
            _figure(out, f"time-bytes-{slug}.png", "time and bytes", plot_time_and_bytes, summary),
        ]
    return "\n\n".join(parts)


def write_report(root: str | Path, out: str | Path | None = None, asr_threshold: float = 0.10) -> Path:
    """Write PNGs and ``report.md`` for every sweep, simulation run and train run under ``root`` into ``out``
    (default ``root/report``); returns the report's path. Raises ConfigError when ``root`` holds none."""
    root = Path(root)
    sweeps, sims, trains = find_sweeps(root), find_simulations(root), find_train_runs(root)
    if not (sweeps or sims or trains):
        raise ConfigError(
            f"no sweep.csv or summary.json under {str(root)!r}: run `privtune-ray sweep ...` or "
            f"`privtune-ray simulate ...` first, then pass its output directory"
        )
    out = Path(out) if out is not None else root / "report"
    make_output_dir(out)
    sections = [f"# privtune-ray report: {root.resolve().name}", _provenance(root, sweeps, sims, trains)]
    if sweeps:
        sections.append(_headline(sweeps, root, asr_threshold))
    sections += [_sweep_section(p, root, out, asr_threshold) for p in sweeps]
    sections += [_simulation_section(p, root, out) for p in sims]
    if trains:
        sections.append(_train_section(trains, root, out))
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
