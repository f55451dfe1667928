"""The simulation engine, in-process backend: run directory, records, determinism, replicas, resume, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.report import write_report
from privtune_ray.cli import main
from privtune_ray.config import load_config
from privtune_ray.drivers.simulate import Coordinator, prepare, run_simulation, start_backend
from privtune_ray.errors import ConfigError, DataError, ModelError
from privtune_ray.runs import RunSession
from privtune_ray.training.server import TopServer

DEVICES = str(Path(__file__).parents[1] / "simulations" / "sst2_devices.yaml")
# 20 devices in three tiers (the low-end phones' memory caps them at m = 1, the rest run m = 2), 4 rounds of
# 4 devices × 16 samples; an evaluation and a checkpoint every 2 rounds.
SMALL = [
    "data.max_train_samples=400",
    "data.max_eval_samples=64",
    "simulation.devices=20",
    "simulation.rounds=4",
    "simulation.devices_per_round=4",
    "simulation.local_batch_size=16",
    "simulation.partition=iid",
    "simulation.checkpoint_every=2",
    "simulation.eval_every=2",
    "train.progress=false",
]
# Columns that do not depend on measured seconds.
EXACT = ["round", "device", "tier", "depth", "status", "samples", "tokens", "bytes_up", "bytes_down", "releases"]


def small(*extra):
    return load_config(DEVICES, SMALL + list(extra))


def quiet(*_):
    pass


def interrupted_then_resumed(cfg, out: Path, hook: str, at: int) -> Path:
    """Run ``cfg`` into ``out``, stopped (KeyboardInterrupt) as hook ``hook`` fires for round ``at``; resume it."""

    def interrupt(coordinator, r):
        if r == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, out=out, log=quiet, hooks={hook: interrupt})
    return run_simulation(cfg, out=out, resume=True, log=quiet)


def test_simulation_writes_a_complete_run_directory(reference):
    for name in ("config.yaml", "env.json", "devices.csv", "rounds.csv", "eval.csv", "summary.json"):
        assert (reference / name).is_file(), name
    assert not (reference / "checkpoint.pt").exists()
    summary = json.loads((reference / "summary.json").read_text())
    devices = pd.read_csv(reference / "devices.csv")
    rounds = pd.read_csv(reference / "rounds.csv")
    assert summary["rounds"] == 4 and rounds["round"].tolist() == [0, 1, 2, 3]
    assert (rounds["selected"] == 4).all() and len(devices) == 16
    # memory caps the low-end phones at m = 1; both depths train one top and are evaluated
    assert {t["name"]: t["split_depth"] for t in summary["tiers"]} == {"phone-low": 1, "phone-high": 2, "laptop": 2}
    assert set(summary["dev_by_depth"]) == {"1", "2"}
    # bytes: each upload is at least its fp32 h (B × L × 384 × 4), counted from the serialised payload
    ok = devices[devices.status == "ok"]
    assert (ok["bytes_up"] >= ok["tokens"] * 384 * 4).all()
    assert summary["bytes_up"] == devices["bytes_up"].sum() == rounds["bytes_up"].sum()
    # a device downloads the bottom's weights once: its first round costs megabytes, later ones bytes
    first = devices.groupby("device").head(1)
    assert (first["bytes_down"] > 40e6).all()
    assert (devices.drop(first.index)["bytes_down"] < 1000).all()
    # the simulated clock: arrival = round start + download + compute + upload, and rounds follow each other
    starts = rounds.set_index("round")["sim_start_s"]
    arrival = (
        starts[ok["round"]].to_numpy() + ok[["sim_download_s", "sim_compute_s", "sim_upload_s"]].sum(axis=1).to_numpy()
    )
    assert np.allclose(ok["sim_arrival_s"], arrival)
    assert np.allclose(rounds["sim_start_s"].iloc[1:], rounds["sim_end_s"].iloc[:-1])
    assert summary["sim_time_s"] == pytest.approx(rounds["sim_end_s"].iloc[-1])
    assert summary["train_samples"] == ok["samples"].sum() == rounds["samples"].sum()
    env = json.loads((reference / "env.json").read_text())
    assert env["seed"] == 0 and env["versions"]["ray"]


@pytest.mark.slow  # a whole second run; the resume test below also checks a fresh run's records equal `reference`'s
def test_same_seed_same_records(reference, tmp_path):
    again = run_simulation(small(), out=tmp_path / "again", log=quiet)
    pd.testing.assert_frame_equal(
        pd.read_csv(again / "devices.csv")[EXACT], pd.read_csv(reference / "devices.csv")[EXACT]
    )
    assert pd.read_csv(again / "rounds.csv")["loss"].tolist() == pd.read_csv(reference / "rounds.csv")["loss"].tolist()


@pytest.mark.long  # two top replicas in one process
def test_two_replicas_all_reduce_the_same_gradient_as_one(tmp_path, monkeypatch):
    steps = {1: [], 2: []}
    original = TopServer.step

    def spy(self, n_samples):  # the (all-reduced) gradient sum each replica applies
        steps[replicas].append([None if p.grad is None else p.grad.clone() for p in self.trainable()])
        return original(self, n_samples)

    monkeypatch.setattr(TopServer, "step", spy)
    for replicas in (1, 2):
        setup = prepare(small(f"simulation.top_replicas={replicas}", "simulation.rounds=2"))
        pool = start_backend(setup)
        Coordinator(setup, pool, RunSession.open(setup.cfg, tmp_path / str(replicas), resume=False), log=quiet).train()
    assert len(steps[1]) == 2 and len(steps[2]) == 4  # two rounds; every replica steps
    for r in range(2):
        one, (a, b) = steps[1][r], steps[2][2 * r : 2 * r + 2]
        assert [x is None for x in one] == [x is None for x in a] == [x is None for x in b]
        assert all(torch.equal(x, y) for x, y in zip(a, b) if x is not None)  # both replicas apply the same sum
        assert all(
            torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(one, a) if x is not None
        )  # = one's, to float noise
    w1, w2 = (r.server.top.state_dict() for r in pool.backend.replicas)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # in sync after every step


@pytest.mark.long  # a simulation interrupted and resumed; train's resume runs by default
def test_an_interrupted_simulation_resumes_to_the_same_result(reference, tmp_path):
    out = tmp_path / "run"

    def interrupt(coordinator, r):
        if r == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation(small(), out=out, log=quiet, hooks={"training": interrupt})
    assert (out / "checkpoint.pt").is_file() and not (out / "summary.json").exists()
    assert pd.read_csv(out / "rounds.csv")["round"].tolist() == [0, 1, 2]
    assert main(["simulate", DEVICES, "--out", str(out), "--resume", *sum((["--set", s] for s in SMALL), [])]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "devices.csv")[EXACT], pd.read_csv(reference / "devices.csv")[EXACT]
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "eval.csv"), pd.read_csv(reference / "eval.csv")
    )  # after 2 and 4 rounds
    resumed, full = (json.loads((p / "summary.json").read_text()) for p in (out, reference))
    assert resumed["dev_loss"] == pytest.approx(full["dev_loss"], abs=1e-6)
    assert resumed["train_samples"] == full["train_samples"] and resumed["bytes_up"] == full["bytes_up"]


def test_deadline_drops_late_messages_and_mechanism_is_recorded(tmp_path):
    # phones upload ~0.5 MB at 5-20 Mbit/s after downloading ~60 MB: laptops (100 Mbit/s) make an 8 s deadline, phones do not
    out = run_simulation(
        small("simulation.deadline_s=8.0", "mechanism.name=dchi", "mechanism.eta=100", "simulation.rounds=2"),
        out=tmp_path / "d",
        log=quiet,
    )
    devices = pd.read_csv(out / "devices.csv")
    rounds = pd.read_csv(out / "rounds.csv")
    late = devices[devices.status == "late"]
    assert len(late) > 0 and late["sim_top_start_s"].isna().all()
    assert (late["sim_arrival_s"] > rounds.set_index("round")["sim_start_s"][late["round"]].to_numpy() + 8.0).all()
    assert rounds["samples"].sum() == devices.loc[devices.status == "ok", "samples"].sum()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["late"] == len(late) and summary["sent_samples"] > summary["train_samples"]
    sent = devices[devices.status != "dropped"]
    assert np.allclose(sent["eta_per_unit"], sent["releases"] * 100.0)  # d_χ: R·η per unit distance
    assert summary["privacy"]["kind"] == "metric-dp"


@pytest.mark.long  # a simulation with attack rounds; train's are checked by default in test_attacks
def test_attack_rounds_run_on_the_messages_devices_sent(tmp_path):
    attacking = [
        "attack.enabled=true",
        "attack.names=[eia_knn_l2, aia_label]",
        "attack.aux_samples=100",
        "attack.victim_samples=32",
        "attack.every=2",
    ]
    out = run_simulation(small(*attacking), out=tmp_path / "a", log=quiet)
    attacks = pd.read_csv(out / "attacks.csv")
    assert sorted(attacks["step"].unique()) == [2, 4]  # every 2 rounds and at the end
    asr = attacks[(attacks.attack == "eia_knn_l2") & (attacks.metric == "asr_top1")]["value"]
    # no defence at m = 2: KNN inverts most tokens, which it can only do if each message is scored
    # against the token ids of the samples that device actually sent
    assert (asr > 0.8).all()
    summary = json.loads((out / "summary.json").read_text())
    last = asr[attacks.loc[asr.index, "step"] == 4]  # the last round: one row per (depth, tier) attacked
    assert summary["max_eia_asr_top1"] == pytest.approx(last.max()) and summary["attack_setup"]["aux_sentences"] > 0
    assert set(attacks["depth"]) == {1, 2}  # the low-end phones' m = 1 uploads are attacked too

    # stopped as the final evaluation starts, after the last round's checkpoint: the resumed run redoes the
    # evaluation and attacks the last round's victims (kept in that checkpoint), with no row twice
    resumed = interrupted_then_resumed(small(*attacking), tmp_path / "b", "evaluating", at=4)
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "eval.csv"), pd.read_csv(out / "eval.csv"), atol=1e-6)
    scores = lambda t: t[~t["metric"].isin(["seconds", "fit_s"])].reset_index(drop=True)  # noqa: E731
    again, first = scores(pd.read_csv(resumed / "attacks.csv")), scores(attacks)
    pd.testing.assert_frame_equal(again.drop(columns="value"), first.drop(columns="value"))
    assert np.allclose(again["value"], first["value"], atol=1e-6)


def test_every_depth_is_attacked_and_the_headline_is_its_worst(tmp_path):
    # half the devices' memory holds the embeddings only (m = 0: a table look-up), half run m = 2; undefended
    shallow = "{name: shallow, share: 0.5, memory_mb: 60}, {name: deep, share: 0.5, memory_mb: 4096}"
    cfg = small(
        f"simulation.tiers=[{shallow}]",
        "simulation.rounds=2",
        "attack.enabled=true",
        "attack.names=[eia_knn_l2]",
        "attack.aux_samples=100",
        "attack.victim_samples=32",
    )
    out = run_simulation(cfg, out=tmp_path / "a", log=quiet)
    summary = json.loads((out / "summary.json").read_text())
    assert {t["name"]: t["split_depth"] for t in summary["tiers"]} == {"shallow": 0, "deep": 2}
    asr = pd.read_csv(out / "attacks.csv").query("attack == 'eia_knn_l2' and metric == 'asr_top1'")
    by = asr.set_index(["depth", "tier"])["value"]
    assert set(by.index) == {(0, "shallow"), (2, "deep")}  # each depth's uploads, by the suite fitted at it
    assert by[(0, "shallow")] >= 0.95  # nearest-neighbour look-up of the embedding table
    table = summary["attack_by_depth"]
    assert table["0"][0]["max_eia_asr_top1"] == pytest.approx(by[(0, "shallow")])
    assert table["2"][0]["max_eia_asr_top1"] == pytest.approx(by[(2, "deep")])
    assert summary["worst_depth"] == 0 and summary["worst_tier"] == "shallow"
    assert summary["max_eia_asr_top1"] == pytest.approx(by.max()) and by.max() == by[(0, "shallow")]
    report = write_report(tmp_path, tmp_path / "report").read_text()  # the report plots success per tier
    section = report[report.index("### Attack success by tier") :]
    assert "attack-tiers-" in section and any((tmp_path / "report").glob("attack-tiers-*.png"))
    assert section.index("| shallow") < section.index("| deep")  # worst first


def test_bad_input_fails_before_the_run_directory_is_written(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="memory_mb"):
        run_simulation(
            load_config(DEVICES, SMALL + ["simulation.tiers=[{name: tiny, memory_mb: 10}]"]), out=out, log=quiet
        )
    with pytest.raises(ModelError, match="split_depth"):
        run_simulation(small("model.split_depth=9"), out=out, log=quiet)
    with pytest.raises(ConfigError, match="simulation.devices"):
        small("simulation.devices=0")
    with pytest.raises(DataError, match="cannot fill"):
        run_simulation(small("simulation.devices=1000"), out=out, log=quiet)  # 400 samples, 1,000 devices
    assert not out.exists()
    assert (
        main(["simulate", DEVICES, "--set", "simulation.tiers=[{name: tiny, memory_mb: 10}]", "--out", str(out)]) == 2
    )


def test_progress_off_a_terminal_is_one_plain_line_per_round(tmp_path, monkeypatch):
    """Logged to a file or a pipe, `simulate` prints one plain line per round (no bar, no escape codes)."""
    monkeypatch.setattr("privtune_ray.progress.on_terminal", lambda: False)
    lines = []
    run_simulation(
        small("train.progress=true", "simulation.rounds=2", "simulation.eval_every=null"),
        out=tmp_path / "run",
        log=lines.append,
    )
    rounds = [line for line in lines if ": loss " in line]
    assert [line.split(":")[1].strip() for line in rounds] == ["round 1/2", "round 2/2"], lines
    assert all("devices ok, simulated" in line and "MiB up" in line for line in rounds)
    assert not any("\x1b[" in line for line in lines)


def test_a_table_keeps_its_columns_aligned_when_rows_differ_in_keys(tmp_path):
    from privtune_ray.runs import RunDir

    run = RunDir(tmp_path)
    run.append_rows("attacks", [{"step": 1, "depth": 0, "attack": "a", "value": 0.5}])
    run.append_rows("attacks", [{"step": 1, "attack": "b", "value": 0.25}])  # no depth: left empty, not shifted
    run.append_rows("attacks", [{"step": 2, "attack": "c", "tier": "deep", "value": 1.0}])  # a new column
    table = pd.read_csv(tmp_path / "attacks.csv")
    assert list(table["attack"]) == ["a", "b", "c"] and list(table["value"]) == [0.5, 0.25, 1.0]
    assert table["depth"].isna().tolist() == [False, True, True] and table["tier"].tolist()[2] == "deep"
