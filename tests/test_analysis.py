"""The analysis package on small synthetic sweeps and simulation runs (no Ray, no model): frontier, headline,
overhead, timeline and the report."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.attack_success import select_points
from analysis.frontier import pareto_front
from analysis.headline import headline_table, markdown_table
from analysis.overhead import overhead_by_tier
from analysis.report import write_report
from analysis.tables import failed_points, find_simulations, find_sweeps, find_train_runs, load_sweep, privacy_parameter
from analysis.timeline import median_round, timeline_segments
from privtune_ray.errors import ConfigError
from privtune_ray.sweep.runner import ROW_KEYS

ROOT = Path(__file__).parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (mechanism, depth, parameter column, value, utility, max EIA ASR); none is the reference.
POINTS = [
    ("none", 1, None, None, 0.90, 0.80),
    ("none", 2, None, None, 0.88, 0.60),
    ("dchi", 1, "mechanism.eta", 5.0, 0.70, 0.04),
    ("dchi", 1, "mechanism.eta", 10.0, 0.80, 0.09),
    ("dchi", 1, "mechanism.eta", 20.0, 0.86, 0.30),
    ("dchi", 2, "mechanism.eta", 5.0, 0.75, 0.02),
    ("dchi", 2, "mechanism.eta", 10.0, 0.82, 0.10),
    ("gaussian", 1, "mechanism.noise_multiplier", 2.0, 0.60, 0.15),
    ("gaussian", 1, "mechanism.noise_multiplier", 0.5, 0.85, 0.50),
    ("gaussian", 2, "mechanism.noise_multiplier", 2.0, 0.72, 0.08),
]


def _row(mechanism, depth, param, value, utility, asr):
    slug = f"{mechanism}-{param.rsplit('.', 1)[-1]}{value:g}-m{depth}" if param else f"{mechanism}-m{depth}"
    row = {k: np.nan for k in ROW_KEYS}
    row.update(
        point=slug,
        status="done",
        mechanism=mechanism,
        split_depth=depth,
        utility=utility,
        max_eia_asr_top1=asr,
        max_aia_advantage=0.05,
        bytes_up_per_sample=depth * 8192.0,
        bytes_up=1e6,
        train_wall_s=12.0,
        error="",
        **{
            "mechanism.name": mechanism,
            "model.split_depth": depth,
            "mechanism.eta": np.nan,
            "mechanism.noise_multiplier": np.nan,
            "eia_knn_l2:asr_top1": asr,
            "eia_mlp:asr_top1": asr / 2,
            "aia_keyword:advantage": 0.05,
        },
    )
    if param:
        row[param] = value
    return row


def write_sweep(path, points=POINTS, failed=True, attacks=True):
    path.mkdir(parents=True, exist_ok=True)
    rows = [_row(*p) for p in points]
    if failed:
        rows.append(
            {
                **{k: np.nan for k in ROW_KEYS},
                "point": "laplace-sigma1-m1",
                "status": "failed",
                "error": "RuntimeError: out of memory",
                "mechanism.name": "laplace",
                "model.split_depth": 1,
                "mechanism.noise_multiplier": 1.0,
            }
        )
    table = pd.DataFrame(rows)
    if not attacks:
        table = table.drop(columns=[c for c in table.columns if ":" in c])
        table["max_eia_asr_top1"] = np.nan
    table.to_csv(path / "sweep.csv", index=False)
    (path / "points" / rows[0]["point"]).mkdir(parents=True)  # a point's run dir must not be found as a run
    (path / "points" / rows[0]["point"] / "summary.json").write_text("{}")
    (path / "points" / rows[0]["point"] / "metrics.csv").write_text("step\n")
    return path


DEVICES = pd.DataFrame(
    [
        # round, device, tier, depth, status, samples, bytes_up, bytes_down, compute_s, download, compute, upload, arrival, top start, top end
        (0, 1, "phone", 1, "ok", 4, 4096, 2 * 1048576, 0.10, 2.0, 0.5, 1.0, 3.5, 3.5, 3.7),
        (0, 2, "laptop", 2, "ok", 8, 16384, 1048576, 0.02, 1.0, 0.2, 0.3, 1.5, 1.5, 1.6),
        (0, 3, "phone", 1, "dropped", 0, 0, 2 * 1048576, 0.0, 2.5, 0.0, 0.0, np.nan, np.nan, np.nan),
        (1, 1, "phone", 1, "ok", 4, 8192, 0, 0.30, 0.0, 0.6, 1.2, 6.8, 6.9, 7.0),
        (1, 2, "laptop", 2, "ok", 8, 32768, 0, 0.04, 0.0, 0.1, 0.4, 5.5, 5.5, 5.6),
        (1, 3, "phone", 1, "late", 4, 4096, 1048576, 0.20, 3.0, 0.7, 2.0, 10.7, np.nan, np.nan),
        (2, 2, "laptop", 2, "ok", 8, 16384, 0, 0.03, 0.0, 0.1, 0.2, 7.3, 7.3, 7.4),
    ],
    columns=[
        "round",
        "device",
        "tier",
        "depth",
        "status",
        "samples",
        "bytes_up",
        "bytes_down",
        "compute_s",
        "sim_download_s",
        "sim_compute_s",
        "sim_upload_s",
        "sim_arrival_s",
        "sim_top_start_s",
        "sim_top_end_s",
    ],
)
ROUNDS = pd.DataFrame(
    {"round": [0, 1, 2], "sim_start_s": [0.0, 5.0, 7.0], "sim_end_s": [5.0, 7.0, 7.5], "sim_round_s": [5.0, 2.0, 0.5]}
)


def write_simulation(path):
    path.mkdir(parents=True, exist_ok=True)
    DEVICES.to_csv(path / "devices.csv", index=False)
    ROUNDS.to_csv(path / "rounds.csv", index=False)
    pd.DataFrame({"rounds_done": [3, 3], "depth": [1, 2], "accuracy": [0.71, 0.74], "loss": [0.6, 0.5]}).to_csv(
        path / "eval.csv", index=False
    )
    summary = {
        "name": "tiny-sim",
        "dataset": "sst2",
        "mechanism": "none",
        "devices": 3,
        "rounds": 3,
        "tiers": [
            {"name": "phone", "devices": 2, "split_depth": 1, "samples": 20},
            {"name": "laptop", "devices": 1, "split_depth": 2, "samples": 30},
        ],
        "dev_accuracy": 0.7421,
        "dev_by_depth": {
            "1": {"accuracy": 0.71, "loss": 0.6, "samples": 10, "devices": 2},
            "2": {"accuracy": 0.74, "loss": 0.5, "samples": 10, "devices": 1},
        },
        "bytes_up": 81920,
        "bytes_down": 7340032,
        "sim_time_s": 7.5,
        "train_wall_s": 1.0,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_train_run(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(
        json.dumps(
            {
                "name": "tiny-train",
                "dataset": "sst2",
                "mechanism": "privtune",
                "split_depth": 2,
                "dev_accuracy": 0.8123,
                "bytes_up_per_sample": 2048.0,
                "train_wall_s": 3.0,
                "device_compute_s": 1.1,
                "mechanism_compute_s": 0.1,
                "top_compute_s": 1.5,
            }
        )
    )
    (path / "metrics.csv").write_text("step,loss\n1,0.7\n2,0.6\n")
    (path / "eval.csv").write_text("step,split,accuracy,loss,samples\n2,dev,0.8123,0.55,64\n")
    return path


def test_pareto_front_is_exactly_the_non_dominated_points():
    df = pd.DataFrame({"x": [1, 2, 3, 2, 4, 1, 5, np.nan], "y": [5, 6, 9, 4, 9, 3, 10, 99]}, index=list("abcdefgh"))
    # b dominates d (lower-or-equal x, higher y); c dominates e (same y, lower x); a dominates f.
    front = pareto_front(df, "x", "y")
    assert list(front.index) == ["a", "b", "c", "g"]
    assert list(front["x"]) == sorted(front["x"])


def test_discovery_and_loading(tmp_path):
    sweep = write_sweep(tmp_path / "sweeps" / "s1")
    sim = write_simulation(tmp_path / "sim")
    train = write_train_run(tmp_path / "train")
    assert find_sweeps(tmp_path) == [sweep]
    assert find_simulations(tmp_path) == [sim]
    assert find_train_runs(tmp_path) == [train]  # not the point under sweeps/s1/points
    # a train run on the one engine holds its device's devices.csv too: its summary's command says what it is
    engine_train = write_train_run(tmp_path / "train2")
    summary = json.loads((engine_train / "summary.json").read_text())
    (engine_train / "summary.json").write_text(json.dumps({**summary, "command": "train"}))
    (engine_train / "devices.csv").write_text("round,device\n0,0\n")
    assert find_train_runs(tmp_path) == [train, engine_train] and find_simulations(tmp_path) == [sim]
    table = load_sweep(sweep)
    assert len(table) == len(POINTS) and set(table["status"]) == {"done"}
    assert list(failed_points(sweep)["point"]) == ["laplace-sigma1-m1"]
    assert privacy_parameter(table, "dchi") == "mechanism.eta"
    assert privacy_parameter(table, "gaussian") == "mechanism.noise_multiplier"
    assert privacy_parameter(table, "none") is None
    seeded = table.assign(seed=range(len(table)))  # a swept seed is not a privacy parameter
    assert privacy_parameter(seeded, "dchi") == "mechanism.eta" and privacy_parameter(seeded, "none") is None
    assert privacy_parameter(table[table["mechanism"] == "dchi"], "dchi") == "mechanism.eta"  # a one-mechanism sweep


def test_headline_picks_best_point_under_threshold_and_computes_drops(tmp_path):
    head = headline_table(load_sweep(write_sweep(tmp_path / "s")), threshold=0.10).set_index(
        ["mechanism", "split_depth"]
    )
    assert list(head.index) == [("dchi", 1), ("gaussian", 1), ("dchi", 2), ("gaussian", 2)]
    dchi1 = head.loc[("dchi", 1)]
    assert dchi1["setting"] == "eta=10" and dchi1["utility"] == 0.80 and dchi1["max_eia_asr_top1"] == 0.09
    assert dchi1["reference_utility"] == 0.90
    assert dchi1["drop_points"] == pytest.approx(10.0) and dchi1["drop_relative"] == pytest.approx(0.10 / 0.90)
    dchi2 = head.loc[("dchi", 2)]  # ASR exactly at the threshold qualifies
    assert dchi2["utility"] == 0.82 and dchi2["drop_points"] == pytest.approx(6.0)
    assert dchi2["drop_relative"] == pytest.approx(0.06 / 0.88)
    gauss1 = head.loc[("gaussian", 1)]
    assert math.isnan(gauss1["utility"]) and math.isnan(gauss1["drop_points"])
    assert gauss1["note"].startswith("no point with max EIA ASR <= 10%; lowest ASR 15.0% at utility 60.0%")
    assert head.loc[("gaussian", 2)]["drop_points"] == pytest.approx(16.0)


def test_attack_selection_prefers_best_safe_point_then_lowest_asr(tmp_path):
    chosen = select_points(load_sweep(write_sweep(tmp_path / "s")), 0.10).set_index("mechanism")
    assert chosen.loc["dchi", "utility"] == 0.82  # best utility with ASR <= 10 % over both depths
    assert chosen.loc["gaussian", "utility"] == 0.72
    assert chosen.loc["none", "max_eia_asr_top1"] == 0.60  # none never qualifies: its lowest ASR


def test_markdown_table_formats_cells():
    text = markdown_table(pd.DataFrame({"a": ["x|y", "z"], "b": [1.23456, np.nan]}), ".2f")
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1.23 |", "| z | – |"]


def test_overhead_by_tier_equals_hand_computed_means():
    by_tier = overhead_by_tier(DEVICES)
    assert list(by_tier.index) == ["phone", "laptop"]  # by split depth
    phone, laptop = by_tier.loc["phone"], by_tier.loc["laptop"]
    assert (phone["device_rounds"], phone["dropped"], phone["late"], phone["depth"]) == (4, 1, 1, 1)
    # Means over the phone's non-dropped rounds: (round 0 ok, round 1 ok, round 1 late).
    assert phone["up_KiB"] == pytest.approx((4 + 8 + 4) / 3)
    assert phone["down_MiB"] == pytest.approx((2 + 0 + 1) / 3)
    assert phone["compute_s"] == pytest.approx((0.10 + 0.30 + 0.20) / 3)
    assert phone["sim_device_s"] == pytest.approx((3.5 + 1.8 + 5.7) / 3)
    assert laptop["up_KiB"] == pytest.approx((16 + 32 + 16) / 3)
    assert laptop["sim_device_s"] == pytest.approx((1.5 + 0.5 + 0.3) / 3)


def test_timeline_segments_follow_the_device_row():
    assert median_round(ROUNDS) == 1  # sim_round_s 0.5, 2.0, 5.0
    segments = timeline_segments(DEVICES, ROUNDS, 1).set_index(["device", "segment"])
    # Device 1 in round 1 (starts at 5.0 s): no download, compute 0.6, upload 1.2, arrives 6.8, queue to 6.9, top to 7.0.
    dev1 = segments.loc[1]
    assert list(dev1.index) == ["compute", "upload", "queue", "top"]
    assert tuple(dev1.loc["compute", ["start_s", "end_s"]]) == pytest.approx((0.0, 0.6))
    assert tuple(dev1.loc["upload", ["start_s", "end_s"]]) == pytest.approx((0.6, 1.8))
    assert tuple(dev1.loc["queue", ["start_s", "end_s"]]) == pytest.approx((1.8, 1.9))
    assert tuple(dev1.loc["top", ["start_s", "end_s"]]) == pytest.approx((1.9, 2.0))
    late = segments.loc[3]  # download 3.0, compute 0.7, upload 2.0, never processed
    assert list(late.index) == ["download", "compute", "upload"]
    assert tuple(late["end_s"]) == pytest.approx((3.0, 3.7, 5.7))
    round0 = timeline_segments(DEVICES, ROUNDS, 0).set_index(["device", "segment"])
    assert tuple(round0.loc[(1, "download"), ["start_s", "end_s"]]) == pytest.approx((0.0, 2.0))
    assert list(round0.loc[3].index) == ["download"]  # the dropped device only downloaded


def _images(report):
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    for name in names:
        assert (report.parent / name).read_bytes()[:8] == PNG_MAGIC
    return names


def test_write_report_on_a_folder_of_runs(tmp_path):
    write_sweep(tmp_path / "sweeps" / "s1")
    write_simulation(tmp_path / "sim")
    write_train_run(tmp_path / "train")
    report = write_report(tmp_path, tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    names = _images(report)
    assert {n.split("-", 1)[0] for n in names} == {
        "frontier",
        "attacks",
        "communication",
        "overhead",
        "timeline",
        "learning",
        "time",
    }  # the train run: learning curve, time and bytes
    text = report.read_text()
    assert "| dchi | 1 | eta=10 | 80.0 | 9.0 | 90.0 | 10.0 | 11.1 |" in text  # the headline row
    assert "| dchi | 2 | eta=10 | 82.0 | 10.0 | 88.0 | 6.0 | 6.8 |" in text
    assert "lowest ASR 15.0% at utility 60.0%" in text
    assert "laplace-sigma1-m1" in text and "RuntimeError: out of memory" in text  # failed point listed
    assert "tiny-train" in text and "81.2" in text  # train run table
    assert "74.21" in text  # simulation dev accuracy


def test_write_report_without_attacks_or_finished_points(tmp_path):
    write_sweep(tmp_path / "no-attacks", attacks=False, failed=False)
    report = write_report(tmp_path / "no-attacks")
    assert report == tmp_path / "no-attacks" / "report" / "report.md"
    text = report.read_text()
    assert "privacy–utility frontier: not plotted" in text and "attack success per attack: not plotted" in text
    assert "no point with max EIA ASR <= 10%; no EIA ASR measured" in text
    assert _images(report) == ["communication-no-attacks.png"]

    only_failed = tmp_path / "failed"
    only_failed.mkdir()
    write_sweep(tmp_path / "tmp", failed=True)
    table = pd.read_csv(tmp_path / "tmp" / "sweep.csv")
    table[table["status"] == "failed"].to_csv(only_failed / "sweep.csv", index=False)
    text = write_report(only_failed).read_text()
    assert "No point finished." in text and "out of memory" in text
    assert _images(only_failed / "report" / "report.md") == []


def test_bad_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no sweep.csv or summary.json"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="privtune-ray sweep"):
        write_report(tmp_path / "missing")


# ---------------------------------------------------------------- settings over seeds (issue 15)

# (mechanism, eta, warm, seed, utility, adaptive ASR, static ASR)
SEEDED = [
    *[("none", np.nan, np.nan, s, u, 0.9, 0.9) for s, u in ((0, 0.88), (1, 0.86), (2, 0.87))],
    *[("privtune", 4.0, False, s, u, a, 0.03) for s, u, a in ((0, 0.60, 0.06), (1, 0.62, 0.08), (2, 0.58, 0.07))],
    *[("privtune", 4.0, True, s, u, a, 0.03) for s, u, a in ((0, 0.70, 0.06), (1, 0.74, 0.08), (2, 0.72, 0.07))],
    *[("privtune", 6.0, True, s, u, a, 0.08) for s, u, a in ((0, 0.80, 0.10), (1, 0.82, 0.14), (2, 0.81, 0.12))],
    *[("dchi", 4.0, True, s, u, a, 0.05) for s, u, a in ((0, 0.69, 0.09), (1, 0.71, 0.09), (2, 0.70, 0.09))],
]


def _seeded_sweep(path):
    rows = []
    for mechanism, eta, warm, seed, utility, adaptive, static in SEEDED:
        row = {k: np.nan for k in ROW_KEYS}
        slug = f"{mechanism}-eta{eta:g}-seed{seed}-warm{warm}" if mechanism != "none" else f"none-seed{seed}"
        row.update(
            point=slug,
            status="done",
            mechanism=mechanism,
            split_depth=2,
            utility=utility,
            max_eia_asr_top1=adaptive,
            error="",
            **{
                "mechanism.name": mechanism,
                "mechanism.eta": eta,
                "train.warm_start.enabled": warm,
                "seed": seed,
                "max_eia_asr_top1:adaptive": adaptive,
                "max_eia_asr_top1:static": static,
                "eia_knn_l2:asr_top1": static,
            },
        )
        rows.append(row)
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path / "sweep.csv", index=False)
    return path


def test_settings_over_seeds_give_mean_and_std_per_attacker_model(tmp_path):
    from analysis.seeds import frontier_over_seeds, over_seeds

    table = load_sweep(_seeded_sweep(tmp_path / "sweep"))
    summary = over_seeds(table).set_index(["mechanism", "setting"])
    warm4 = summary.loc[("privtune", "eta=4, warm=True")]
    assert warm4["seeds"] == 3 and warm4["utility_mean"] == pytest.approx(0.72)
    assert warm4["utility_std"] == pytest.approx(0.02) and warm4["max_eia_asr_top1:adaptive_mean"] == pytest.approx(
        0.07
    )
    best = frontier_over_seeds(table, 0.10).set_index(["mechanism", "attacker"])
    # adaptive: eta=6 is out (mean ASR 12 %), the warm start wins at eta=4; static: eta=6 is in (8 %)
    assert best.loc[("privtune", "adaptive"), "setting"] == "eta=4, warm=True"
    assert best.loc[("privtune", "static"), "setting"] == "eta=6, warm=True"
    assert best.loc[("privtune", "static"), "utility_mean"] == pytest.approx(0.81)
    assert best.loc[("privtune", "adaptive"), "drop_points"] == pytest.approx(15.0)
    assert bool(best.loc[("dchi", "adaptive"), "meets_bound"]) and not bool(
        best.loc[("none", "adaptive"), "meets_bound"]
    )
    tight = frontier_over_seeds(table, 0.05).set_index(["mechanism", "attacker"])
    assert not bool(tight.loc[("privtune", "adaptive"), "meets_bound"])  # its lowest-ASR setting is shown instead


def test_the_report_of_a_seeded_sweep_has_the_frontier_over_seeds(tmp_path):
    sweep = _seeded_sweep(tmp_path / "sweep")
    out = tmp_path / "report"
    write_report(sweep, out)
    text = (out / "report.md").read_text()
    assert "### Frontier over seeds" in text and "72.0 ± 2.0" in text and "≤ 30%" in text
    assert (out / "frontier-seeds-sweep.png").read_bytes()[:8] == PNG_MAGIC


def test_the_frontier_over_sweeps_of_different_split_depths_keeps_the_depth_in_the_setting(tmp_path):
    from analysis.seeds import frontier_over_seeds

    shallow = load_sweep(_seeded_sweep(tmp_path / "m2"))
    deep = load_sweep(_seeded_sweep(tmp_path / "m4")).assign(split_depth=4)
    deep["utility"] += 0.05  # the deeper split keeps more at the same ASR
    table = pd.concat([shallow, deep], ignore_index=True)
    best = frontier_over_seeds(table, 0.10).set_index(["mechanism", "attacker"])
    assert best.loc[("privtune", "adaptive"), "setting"] == "split_depth=4, eta=4, warm=True"
    assert best.loc[("privtune", "adaptive"), "utility_mean"] == pytest.approx(0.77)
    # one depth alone: the depth is not part of the label
    assert (
        frontier_over_seeds(shallow, 0.10).set_index(["mechanism", "attacker"]).loc[("privtune", "adaptive"), "setting"]
        == "eta=4, warm=True"
    )


def test_bench_frontier_summarises_several_sweep_directories(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_frontier", ROOT / "benchmarks" / "bench_frontier.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shallow = _seeded_sweep(tmp_path / "m2")
    deep = _seeded_sweep(tmp_path / "m4")
    csv = pd.read_csv(deep / "sweep.csv").assign(split_depth=4)
    csv.to_csv(deep / "sweep.csv", index=False)
    result = bench.summarise([shallow, deep])
    assert result["points"] == 2 * len(SEEDED) and result["complete"]
    assert result["privtune"]["adaptive"]["setting"].startswith("split_depth=")
    assert result["privtune"]["adaptive"]["seeds"] == 3


def _ablation_rows(variant, seed, points):
    return [
        {"m": 4, "variant": variant, "seed": seed, "eta": eta, "max_eia_asr": a, "probe_accuracy": u}
        for eta, a, u in points
    ]


def test_utility_at_equal_asr_interpolates_between_the_bracketing_etas_per_seed():
    from analysis.ablation import at_equal_asr, compare_to, interpolate_at

    assert interpolate_at([(0.05, 0.60), (0.15, 0.70)], 0.10) == pytest.approx(0.65)
    assert interpolate_at([(0.12, 0.60), (0.15, 0.70)], 0.10) is None  # never extrapolated
    rows = (
        _ablation_rows("dchi", 0, [(5, 0.06, 0.60), (7, 0.14, 0.64)])
        + _ablation_rows("dchi", 1, [(5, 0.08, 0.61), (7, 0.12, 0.65)])
        + _ablation_rows("privtune", 0, [(5, 0.05, 0.66), (7, 0.15, 0.70)])
        + _ablation_rows("privtune", 1, [(5, 0.02, 0.67), (7, 0.06, 0.70)])  # does not reach the bound
        + [{"m": 4, "variant": "none", "seed": 0, "eta": None, "max_eia_asr": None, "probe_accuracy": 0.8}]
    )
    table = {r["variant"]: r for r in compare_to(at_equal_asr(rows, 0.10), reference="dchi")}
    assert set(table) == {"dchi", "privtune"}
    assert table["dchi"]["probe_accuracy_mean"] == pytest.approx((0.62 + 0.63) / 2)
    assert table["dchi"]["seeds"] == 2 and table["dchi"]["probe_accuracy_std"] > 0
    assert table["privtune"]["seeds"] == 1 and table["privtune"]["seeds_not_bracketed"] == [1]
    assert table["privtune"]["minus_reference"] == pytest.approx(100 * (0.68 - 0.625))
    assert table["privtune"]["beyond_spread"] is False  # one bracketing seed: no spread, no claim
    assert table["dchi"]["minus_reference"] == 0


def test_a_screen_setting_s_variant_is_its_label_without_eta():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_screen", ROOT / "benchmarks" / "bench_screen.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.variant("dchi:4") == "dchi"
    assert bench.variant("privtune:eta=6,importance=false") == "privtune:importance=false"
    assert bench.variant("privtune:radius=0,eta=5") == "privtune:radius=0"
    assert bench.parse_setting("privtune:eta=6,radius=0")[1] == [
        "mechanism.name=privtune",
        "mechanism.eta=6",
        "mechanism.radius=0",
    ]


def test_bench_frontier_tuning_takes_each_mechanisms_best_setting_over_its_seeds():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bft", ROOT / "benchmarks" / "bench_frontier_tuning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def rows(mechanism, seed, settings, knn):
        return [
            {
                "mechanism": mechanism,
                "seed": seed,
                "train.lora.enabled": lora,
                "train.lr": lr,
                "utility": u,
                bench.KNN: knn,
            }
            for lora, lr, u in settings
        ]

    tuning = pd.DataFrame(
        rows("none", 0, [(False, 1e-4, 0.84), (True, 1e-3, 0.83)], 0.75)
        + rows("privtune", 0, [(False, 1e-4, 0.62), (True, 1e-3, 0.66)], 0.03)
    )
    seeds = pd.DataFrame(
        rows("none", 1, [(False, 1e-4, 0.86)], 0.76)
        + rows("privtune", 1, [(True, 1e-3, 0.64)], 0.02)
        + rows("privtune", 2, [(True, 1e-3, 0.65)], 0.04)
        + rows("privtune", 1, [(False, 1e-4, 0.99)], 0.02)  # not the best setting at seed 0: left out
    )
    frontier = {"privtune": {"adaptive": {"max_eia_asr": 0.063, "max_eia_asr_std": 0.006, "seeds": 3}}}
    knn = pd.DataFrame(
        [{"mechanism": "privtune", "seed": s, bench.KNN: k} for s, k in [(0, 0.03), (1, 0.02), (2, 0.05)]]
    )
    out = bench.summarise(tuning, seeds, frontier, knn)
    pt = out["best"]["privtune"]
    assert pt["setting"] == "lora lr=0.001" and pt["seeds"] == 3
    assert pt["utility_mean"] == pytest.approx(0.65) and pt["utility_std"] == pytest.approx(0.01)
    assert pt["knn_asr_matches"] is False and pt["knn_asr_checked_seeds"] == [0, 1, 2]  # seed 2's uploads differ
    assert out["best"]["none"]["setting"] == "full lr=0.0001" and out["best"]["none"]["seeds"] == 2
    assert out["targets"]["drop_points"] == pytest.approx(100 * (0.85 - 0.65))
    assert out["targets"]["privtune_max_eia_asr_adaptive"] == 0.063
    assert out["best"]["none"]["knn_asr_matches"] is None  # the frontier has no undefended row to check against


def test_bench_guarded_takes_each_designs_best_setting_under_the_asr_bound(tmp_path):
    """The defence sweep's summary (issue 17): per design and setting the mean over seeds, the best setting whose
    max EIA ASR on A1 is at most 50 %, the utility drop against split learning and the label defence's cost."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("bg", ROOT / "benchmarks" / "bench_guarded.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # (design, dcor weight, label noise, seed, utility, knn ASR, learned ASR, gm accuracy, label-DP ε)
    points = [
        *[("split", np.nan, np.nan, s, u, 0.99, 0.98, None, None) for s, u in ((0, 0.86), (1, 0.84))],
        *[("online", 0.5, np.nan, s, u, 0.97, 0.99, 0.98, None) for s, u in ((0, 0.85), (1, 0.85))],
        ("online", 8.0, np.nan, 0, 0.81, 0.40, 0.45, 0.97, None),  # the learned inverter is the max: 0.45, 0.55
        ("online", 8.0, np.nan, 1, 0.83, 0.40, 0.55, 0.97, None),
        *[("online", 32.0, np.nan, s, u, 0.10, 0.20, 0.96, None) for s, u in ((0, 0.60), (1, 0.62))],
        *[("online", 8.0, 2.0, s, u, 0.40, 0.45, 0.60, 1.5) for s, u in ((0, 0.81), (1, 0.82))],
        *[("offline", 0.5, np.nan, s, u, None, None, None, None) for s, u in ((0, 0.80), (1, 0.78))],
    ]
    rows = []
    for i, (design, alpha, sigma, seed, utility, knn, learned, gm, eps) in enumerate(points):
        run = tmp_path / f"p{i}"
        run.mkdir()
        attacks = {} if gm is None else {"gm_label": {"accuracy": gm, "majority_accuracy": 0.55}}
        guarded = {} if eps is None else {"label_dp": {"epsilon": eps}}
        (run / "summary.json").write_text(json.dumps({"attacks": attacks, "guarded": guarded}))
        row = {k: np.nan for k in ROW_KEYS}
        row.update(
            point=f"p{i}",
            status="done",
            utility=utility,
            run_dir=str(run),
            **{
                "design.name": design,
                "design.dcor_weight": alpha,
                "design.grad_up_noise_multiplier": sigma,
                "seed": seed,
                "eia_knn_l2:asr_top1": knn,
                "eia_learned:asr_top1": learned,
                "bytes_per_sample:act_up": 1000.0,
                "bytes_per_sample:adapter_up": 500.0,
            },
        )
        rows.append(row)
    out = bench.summarise(pd.DataFrame(rows))
    online = out["online"]
    assert online["setting"] == "dcor_weight=8" and online["utility_mean"] == pytest.approx(0.82)
    assert online["max_eia_asr_a1"] == pytest.approx(0.50)  # the max over attacks, then the mean over seeds
    assert online["utility_drop_vs_split_points"] == pytest.approx(3.0) and online["target_met"]
    assert online["bytes_per_sample"] == pytest.approx(1500.0) and online["majority"] == pytest.approx(0.55)
    assert [f["setting"] for f in online["frontier"]][0] == "dcor_weight=0.5"  # the most useful, over the bound
    (label,) = out["online_label_defence"]
    assert label["setting"] == "dcor_weight=8, grad_up_noise_multiplier=2" and label["label_dp_epsilon"] == 1.5
    assert label["utility_cost_points"] == pytest.approx(0.5) and label["target_met"]  # 0.60 − 0.55 ≤ 10 points
    assert out["offline"]["setting"] == "dcor_weight=0.5" and out["offline"]["max_eia_asr_a1"] is None
    assert out["settings"]["online"]["dcor_weight=32"]["seeds"] == [0, 1]

    # 4x the rounds: online's best under the bound is compared only with split learning at 480 rounds
    def longer(design, utility, seed, learned):
        return {
            **rows[0],
            "point": f"{design}{seed}",
            "design.name": design,
            "design.dcor_weight": 32.0,
            "simulation.rounds": 480,
            "seed": seed,
            "utility": utility,
            "eia_knn_l2:asr_top1": learned,
            "eia_learned:asr_top1": learned,
            "run_dir": rows[0]["run_dir"] if design == "split" else rows[6]["run_dir"],
        }

    long_online = [longer("online", 0.86, s, 0.2) for s in (0, 1)]
    out = bench.summarise(pd.DataFrame(rows + long_online))["online"]
    assert out["setting"] == "dcor_weight=8"  # 480 rounds has no split learning to measure its loss against
    assert out == {**online, "frontier": out["frontier"]} and len(out["frontier"]) == 5
    alone = bench.summarise(pd.DataFrame(rows[:2] + long_online))["online"]  # only the unmeasured one is under it
    assert alone["setting"] == "dcor_weight=32, rounds=480" and alone["utility_mean"] == pytest.approx(0.86)
    assert alone["utility_drop_vs_split_points"] is None and alone["target_met"] is None  # not against 120 rounds
    assert alone["no_split_reference_at_rounds"] == 480

    def with_split_480(utility):
        split = [{**longer("split", utility, s, 0.98), "design.dcor_weight": np.nan} for s in (0, 1)]
        return bench.summarise(pd.DataFrame(rows + long_online + split))["online"]

    assert with_split_480(0.90)["setting"] == "dcor_weight=8"  # a 4-point loss at 480 rounds, 3 at 120
    best = with_split_480(0.87)  # the higher utility and the smaller loss: 1 point at its own budget
    assert best["setting"] == "dcor_weight=32, rounds=480" and best["target_met"] is True
    assert best["utility_drop_vs_split_points"] == pytest.approx(1.0)


def test_bench_ewtune_merges_seeds_measured_in_parts_and_refuses_a_mismatch(tmp_path):
    """EW-Tune's seeds run in separate stops (32 min each on 2 cores): ``--merge`` re-aggregates their runs per kind
    and arm, keeps each part's provenance, and refuses two parts that ran different settings or the same seed."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("be", ROOT / "benchmarks" / "bench_ewtune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def part(name, seed, accuracy, setting="m=2, LoRA r=8", claim=None):
        run = {
            "seed": seed,
            "accuracy": accuracy,
            "pld_epsilon": 3.0,
            "edgeworth_epsilon": 2.5,
            "noise_multiplier": 0.76,
        }
        record = {"train": {"arms": {"pld": {"setting": setting, "delta": 1e-5, "runs": [run]}}}, "seeds": [seed]}
        path = tmp_path / name
        path.write_text(json.dumps({**record, **({"claim": claim} if claim else {}), "git": {"commit": name}}))
        return str(path)

    a, b = part("a.json", 0, 0.81, claim={"target_epsilon": 3.0}), part("b.json", 1, 0.84)
    out = tmp_path / "ewtune.json"
    assert bench.main(["--merge", a, b, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    train = merged["train"]
    assert train["seeds"] == 2 and train["accuracy_mean"] == pytest.approx(0.825)
    assert train["accuracy_std"] == pytest.approx(np.std([0.81, 0.84], ddof=1))
    assert not train["target_met"]  # the mean, 82.5 %, is below the 83 % target
    assert merged["claim"] == {"target_epsilon": 3.0} and [p["git"]["commit"] for p in merged["merged_from"]] == [
        "a.json",
        "b.json",
    ]
    assert not merged["complete"]  # no simulate part
    other = part("c.json", 2, 0.80, setting="m=2, BitFit")
    assert bench.main(["--merge", a, other, "--out", str(tmp_path / "x.json")]) == 2
    assert bench.main(["--merge", a, a, "--out", str(tmp_path / "y.json")]) == 2
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
