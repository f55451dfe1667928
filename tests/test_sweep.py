"""Sweeps: grid expansion, bad input caught before anything runs, points as Ray tasks, one table, resume."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from privtune_ray.cli import main
from privtune_ray.config import load_config, read_config_file
from privtune_ray.designs.registry import DESIGNS
from privtune_ray.errors import ConfigError
from privtune_ray.sweep import DEFAULT_ARMS, expand, load_sweep, parse_sweep, row_from_summary, run_sweep

SIMULATIONS = Path(__file__).parents[1] / "simulations"
CI_HEADLINE = SIMULATIONS / "ci" / "sst2_headline.yaml"


def quiet(*_):
    pass


def test_points_cross_the_grid_with_each_arm():
    spec = parse_sweep(
        {
            "grid": {"model.split_depth": [1, 2]},
            "arms": [{"mechanism.name": "none"}, {"mechanism.name": "privtune", "mechanism.eta": [5, 10.0]}],
        }
    )
    points = expand(spec)
    assert [p.slug for p in points] == [
        "none-m1",
        "none-m2",
        "privtune-eta5-m1",
        "privtune-eta5-m2",
        "privtune-eta10-m1",
        "privtune-eta10-m2",
    ]
    assert points[3].overrides == {"mechanism.name": "privtune", "mechanism.eta": 5, "model.split_depth": 2}
    assert points[3].override_args() == ["mechanism.name=privtune", "mechanism.eta=5", "model.split_depth=2"]


def test_default_sweep_covers_every_mechanism_and_design_at_every_depth():
    points = expand(parse_sweep(None))
    per_depth = 1 + sum(len(next(iter(grid.values()))) for grid in DEFAULT_ARMS.values() if grid) + 3  # + EW-Tune ε
    assert len(points) == 4 * per_depth
    assert {p.overrides["mechanism.name"] for p in points if "mechanism.name" in p.overrides} == set(DEFAULT_ARMS)
    assert {p.overrides["model.split_depth"] for p in points} == {0, 1, 2, 3}
    assert "ewtune-eps3-cal-pld-m2" in {p.slug for p in points}  # σ calibrated for the PLD bound


@pytest.mark.parametrize(
    "design,mechanism,label",
    [("split", "privtune", "privtune"), ("ewtune", "none", "ewtune"), ("ewtune", "dchi", "ewtune+dchi")],
)
def test_rows_name_the_design_beside_the_mechanism(design, mechanism, label):
    cfg = load_config(None, [f"design.name={design}", f"mechanism.name={mechanism}"])
    assert DESIGNS[design](cfg).defence() == label  # what the run writes as its summary's `defence`
    assert row_from_summary({"design": design, "defence": label, "utility": 0.8})["mechanism"] == label


def test_grid_argument_replaces_the_key_everywhere():
    _, spec, points = load_sweep(CI_HEADLINE, grid_args=["mechanism.eta=3,4", "model.split_depth=1"])
    assert [p.slug for p in points] == ["none-eta3-m1", "none-eta4-m1", "privtune-eta3-m1", "privtune-eta4-m1"]
    assert spec.arms[1] == {"mechanism.name": ["privtune"]}


@pytest.mark.parametrize(
    "section,match",
    [
        ({"runnr": "train"}, r"unknown config key 'sweep.runnr'"),
        ({"runner": "fit"}, r"'sweep.runner'.*train, simulate, attack"),
        ({"arms": [{"mechanism.eta": []}]}, r"'sweep.arms\[0\].mechanism.eta'.*at least one value"),
        ({"arms": {"mechanism.name": "none"}}, r"'sweep.arms' must be a list"),
        ({"local_workers": 0}, r"'sweep.local_workers'"),
        ({"cpus_per_point": "two"}, r"'sweep.cpus_per_point' must be a number"),
    ],
)
def test_bad_sweep_sections_name_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep(section)


def test_a_bad_point_fails_before_anything_runs(tmp_path, capsys):
    assert main(["sweep", str(CI_HEADLINE), "--grid", "mechanism.eta=-1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "sweep point 'none-eta-1-m2'" in err and "'mechanism.eta'" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "grid,slug,match",
    [
        (["model.split_depth=2,7"], "none-m7", r"split depth m=7 is outside 0\.\.6 .*set model\.split_depth"),
        (
            ["design.name=online", "design.adapter_layers=1,2"],
            "online-none-adapter_layers2-m2",
            r"adapter_layers=2 with model\.split_depth=2 .*set design\.adapter_layers=1",
        ),
    ],
)
def test_a_point_the_model_cannot_split_fails_before_anything_runs(tmp_path, capsys, grid, slug, match):
    """The model's depth comes from its config alone, so a sweep whose last point splits past it stops up front."""
    args = ["sweep", str(CI_HEADLINE), "--out", str(tmp_path / "s")]
    for item in grid:
        args += ["--grid", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"sweep point {slug!r}" in err and re.search(match, err), err
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match=r"--grid 'mechanism.eta' must look like key=v1,v2"):
        load_sweep(CI_HEADLINE, grid_args=["mechanism.eta"])
    assert main(["sweep", str(CI_HEADLINE), "--grid", "mechanism.etaa=1", "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_a_sweep_file_runs_its_base_config_outside_sweep():
    cfg = load_config(SIMULATIONS / "sst2_headline.yaml", ["mechanism.name=privtune"])
    assert cfg.mechanism.name == "privtune" and cfg.attack.enabled and cfg.train.max_steps == 600


def test_extends_merges_section_by_section(tmp_path):
    raw = read_config_file(CI_HEADLINE)
    parent = read_config_file(SIMULATIONS / "sst2_headline.yaml")
    assert raw["train"]["max_steps"] == 4 and raw["train"]["lr"] == parent["train"]["lr"]
    assert raw["attack"]["enabled"] and raw["model"] == parent["model"]
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        read_config_file(tmp_path / "a.yaml")


@pytest.fixture(scope="module")
def ray_sweep(ray_session, tmp_path_factory):
    """The CI headline variant's two points as parallel Ray tasks."""
    out = tmp_path_factory.mktemp("sweep") / "headline"
    base, spec, points = load_sweep(CI_HEADLINE)
    spec.executor = "ray"
    return run_sweep(base, spec, points, out, log=quiet)


def test_ray_sweep_collects_one_row_per_point(ray_sweep):
    table = pd.read_csv(ray_sweep / "sweep.csv")
    assert list(table["point"]) == ["none-m2", "privtune-eta5-m2"] and set(table["status"]) == {"done"}
    for _, row in table.iterrows():
        summary = json.loads((ray_sweep / "points" / row["point"] / "summary.json").read_text())
        assert row["utility"] == pytest.approx(summary["dev_accuracy"])
        assert row["max_eia_asr_top1"] == pytest.approx(summary["max_eia_asr_top1"])
        assert row["eia_knn_l2:asr_top1"] == pytest.approx(summary["attacks"]["eia_knn_l2"]["asr_top1"])
        config = yaml.safe_load((ray_sweep / "points" / row["point"] / "config.yaml").read_text())
        assert config["mechanism"]["name"] == row["mechanism.name"] and config["train"]["threads"] == 1
    none, privtune = table.iloc[0], table.iloc[1]
    assert privtune["max_eia_asr_top1"] < none["max_eia_asr_top1"]  # the noise hides tokens from every inverter
    meta = json.loads((ray_sweep / "sweep.json").read_text())
    assert meta["base"]["name"] == "ci-sst2_headline" and len(meta["points"]) == 2 and meta["versions"]["torch"]


def _copy_of(sweep: Path, tmp_path: Path) -> Path:
    """A test's own copy of the module's sweep: the tests that rerun or grow a sweep leave ``ray_sweep`` as it was."""
    return Path(shutil.copytree(sweep, tmp_path / sweep.name))


def test_rerunning_a_sweep_resumes_and_a_grown_grid_adds_points(ray_sweep, tmp_path):
    ray_sweep = _copy_of(ray_sweep, tmp_path)
    summaries = {
        p: (ray_sweep / "points" / p / "summary.json").stat().st_mtime_ns for p in ("none-m2", "privtune-eta5-m2")
    }
    before = pd.read_csv(ray_sweep / "sweep.csv")
    base, spec, points = load_sweep(CI_HEADLINE)
    run_sweep(base, spec, points, ray_sweep, log=quiet)  # local executor: reads the finished points back
    pd.testing.assert_frame_equal(pd.read_csv(ray_sweep / "sweep.csv"), before)
    assert {p: (ray_sweep / "points" / p / "summary.json").stat().st_mtime_ns for p in summaries} == summaries
    base, spec, points = load_sweep(CI_HEADLINE, grid_args=["model.split_depth=2,9"])
    run_sweep(base, spec, points, ray_sweep, log=quiet)
    table = pd.read_csv(ray_sweep / "sweep.csv").set_index("point")
    assert list(table.index) == ["none-m2", "privtune-eta5-m2", "none-m9", "privtune-eta5-m9"]  # earlier points first
    # m = 9 is beyond MiniLM's 6 blocks: those points fail with the model's own message, the others stand.
    assert table.loc["none-m9", "status"] == "failed" and "split_depth" in table.loc["none-m9", "error"]
    assert table.loc["none-m2", "utility"] == before.set_index("point").loc["none-m2", "utility"]
    # A run over other points of the same sweep keeps the earlier rows in the table.
    base, spec, points = load_sweep(CI_HEADLINE, grid_args=["model.split_depth=9"])
    run_sweep(base, spec, points, ray_sweep, log=quiet)
    assert list(pd.read_csv(ray_sweep / "sweep.csv")["point"]) == list(table.index)
    base, spec, points = load_sweep(CI_HEADLINE, overrides=["train.lr=1e-3"])
    with pytest.raises(ConfigError, match="another base config"):
        run_sweep(base, spec, points, ray_sweep, log=quiet)
    base, spec, points = load_sweep(CI_HEADLINE, overrides=["sweep.runner=attack"])
    with pytest.raises(ConfigError, match="run by 'train', not 'attack'"):
        run_sweep(base, spec, points, ray_sweep, log=quiet)


def test_report_of_a_sweep_has_its_headline_and_plots(ray_sweep, tmp_path):
    sweep = _copy_of(ray_sweep, tmp_path)
    base, spec, points = load_sweep(CI_HEADLINE, grid_args=["model.split_depth=9"])  # two points that fail
    run_sweep(base, spec, points, sweep, log=quiet)
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "privtune" in text and "none-m9" in text  # the failed points are listed
    for image in out.glob("*.png"):
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("*.png"))) >= 3


@pytest.mark.parametrize(
    "name",
    [
        # one in the default run (the quickest); the others' points are checked in test_config, their data in
        # test_data, blog's author attributes attacked in test_attacks
        "financial_phrasebank",
        pytest.param("blog_topic", marks=pytest.mark.slow),
        pytest.param("ag_news", marks=pytest.mark.slow),
    ],
)
def test_each_dataset_ci_variant_runs(name, tmp_path):
    """The PrivTune point of each dataset's CI variant trains, is attacked and lands in the table."""
    base, spec, points = load_sweep(SIMULATIONS / "ci" / f"{name}.yaml")
    privtune = [p for p in points if p.overrides["mechanism.name"] == "privtune"]
    out = run_sweep(base, spec, privtune, tmp_path / name, log=quiet)
    row = pd.read_csv(out / "sweep.csv").iloc[0]
    assert row["status"] == "done", row["error"]
    assert 0.0 <= row["utility"] <= 1.0 and 0.0 <= row["max_eia_asr_top1"] <= 1.0
    if name == "blog_topic":  # the author attributes are attacked
        assert {"aia_probe_gender:advantage", "aia_probe_age_group:advantage"} <= set(row.index)


@pytest.mark.parametrize("runner", ["simulate", "attack"])
def test_simulate_and_attack_runners_fill_the_table(runner, tmp_path):
    """A `simulate` point runs its devices in-process inside the point; an `attack` point attacks without training."""
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(SIMULATIONS / "ci" / "sst2_headline.yaml"),
                "simulation": {
                    "devices": 12,
                    "rounds": 2,
                    "devices_per_round": 3,
                    "local_batch_size": 8,
                    "tiers": [{"name": "phone", "memory_mb": 4096}],
                },
                "sweep": {"runner": runner, "arms": [{"mechanism.name": "dchi", "mechanism.eta": 5.0}]},
            }
        )
    )
    base, spec, points = load_sweep(config)
    row = pd.read_csv(run_sweep(base, spec, points, tmp_path / "out", log=quiet) / "sweep.csv").iloc[0]
    assert row["status"] == "done", row["error"]
    assert row["point"] == "dchi-eta5-m2" and 0 <= row["max_eia_asr_top1"] <= 1
    summary = json.loads((tmp_path / "out" / "points" / "dchi-eta5-m2" / "summary.json").read_text())
    if runner == "simulate":
        assert (
            row["rounds"] == summary["rounds"] == 2
            and row["sim_time_s"] > 0
            and row["utility"] == summary["dev_accuracy"]
        )
    else:
        assert summary["victims"] == 16 and pd.isna(row["utility"])
        # one summary schema for every command: the attack run's names its command, defence, seed and config
        assert summary["command"] == "attack" and summary["defence"] == row["mechanism"] == "dchi"
        assert summary["seed"] == 0 and summary["utility"] is None and summary["split_depth"] == 2
        assert (tmp_path / "out" / "points" / "dchi-eta5-m2" / "env.json").is_file()


@pytest.mark.slow  # each design is run in test_guarded and test_ewtune, a sweep and its report above
def test_designs_sweep_puts_every_design_in_the_table_and_the_report(tmp_path):
    """The designs side by side (CI variant of simulations/sst2_designs.yaml): one row each, bytes per channel, the
    DP-SGD ε of EW-Tune, gradient matching on online; the report's traffic-per-channel table."""
    from analysis.report import write_report

    base, spec, points = load_sweep(SIMULATIONS / "ci" / "sst2_designs.yaml")
    out = run_sweep(base, spec, points, tmp_path / "designs", log=quiet)
    table = pd.read_csv(out / "sweep.csv").set_index("mechanism")
    assert (table["status"] == "done").all(), table["error"].tolist()
    assert set(table.index) == {"none", "ewtune", "online", "gradfree", "offline"}
    assert (
        table.loc["online", "bytes_per_sample:grad_up"] > 0 and table.loc["gradfree", "bytes_per_sample:grad_up"] == 0
    )
    assert table.loc["offline", "bytes_per_sample:act_up"] == 0 and pd.isna(table.loc["offline", "max_eia_asr_top1"])
    assert (
        table.loc["none", "bytes_per_sample:act_up"] > 4 * table.loc["online", "bytes_per_sample:act_up"] * 0.9
    )  # 8-bit
    assert 0 < table.loc["ewtune", "dp_epsilon_edgeworth"] <= 8.0 + 1e-6 and table.loc["ewtune", "dp_epsilon_pld"] > 0
    assert table.loc["online", "gm_label:advantage"] > 0
    report = write_report(out).read_text()
    assert (
        "### Traffic per channel" in report
        and "| online |" in report
        and (out / "report" / "channels-designs.png").is_file()
    )


DRIVER = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from privtune_ray.sweep.executor import _exit_with

if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_exit_with, initargs=(os.getpid(), 0.2)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(120)
"""


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan may wait for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_local_sweep_workers_end_when_the_driver_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(driver.stdout.readline())
        assert _running(worker)
        os.kill(driver.pid, signal.SIGKILL)  # no shutdown of the pool: only the workers' own watch can end them
        driver.wait(10)
        deadline = time.monotonic() + 20
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), "the pool worker outlived its killed driver"
    finally:
        driver.kill()
