"""The simulation engine on Ray (one local Ray per test session): same results as in-process, faults, resources."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_simulation import EXACT, quiet, small

from privtune_ray.drivers.simulate import run_simulation
from privtune_ray.errors import ConfigError
from privtune_ray.simulation.backend import check_resources, connect_ray

RAY = ["simulation.backend=ray", "simulation.worker_cpus=1", "simulation.replica_cpus=1"]


def _same_result(a, b):
    pd.testing.assert_frame_equal(pd.read_csv(a / "devices.csv")[EXACT], pd.read_csv(b / "devices.csv")[EXACT])
    # the bottom runs on 1 thread in a worker and on 2 in-process: float noise, amplified a little by AdamW
    assert np.allclose(pd.read_csv(a / "rounds.csv")["loss"], pd.read_csv(b / "rounds.csv")["loss"], atol=1e-4)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["train_samples"] == sb["train_samples"] and sa["bytes_up"] == sb["bytes_up"]
    assert sa["dev_loss"] == pytest.approx(sb["dev_loss"], abs=1e-3)


def test_ray_backend_gives_the_in_process_result(ray_session, reference, tmp_path):
    # two device workers sharing the devices, and devices of round r+1 computed while the top trains on r
    pool = ["simulation.device_workers=2", "simulation.worker_cpus=0.5", "simulation.prefetch=true"]
    out = run_simulation(small(*RAY, *pool), out=tmp_path / "ray", log=quiet)
    _same_result(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"]["backend"] == "ray" and summary["backend"]["replica"]["device"] == "cpu"
    workers = pd.read_csv(out / "devices.csv").groupby("worker")["device"].nunique()
    assert len(workers) == 2 and not (out / "faults.csv").exists()  # any worker runs any device


@pytest.mark.long  # eight actor kills and restarts; the Ray backend's result runs by default above
def test_killed_worker_and_replica_lose_no_sample(ray_session, reference, tmp_path):
    killed = []

    def kill_worker(coordinator, r):
        if r == 0 and "worker" not in killed:  # round 0's tasks are queued on it, the first one running
            ray_session.kill(coordinator.backend.workers[0])
            killed.append("worker")

    def kill_replica(coordinator, r):
        if r == 3 and "replica" not in killed:  # mid-round: its devices are done, the top step is not
            ray_session.kill(coordinator.backend.replicas[0])
            killed.append("replica")

    def kill_worker_at_evaluation(coordinator, done):  # as an evaluation starts: in the round loop and the final one
        ray_session.kill(coordinator.backend.workers[0])
        killed.append(f"worker at evaluation {done}")
        if done in (2, 4) and f"replica at evaluation {done}" not in killed:  # and its replica, once, at both
            ray_session.kill(coordinator.backend.replicas[0])
            killed.append(f"replica at evaluation {done}")

    out = run_simulation(
        small(*RAY),
        out=tmp_path / "faults",
        log=quiet,
        hooks={"devices_started": kill_worker, "training": kill_replica, "evaluating": kill_worker_at_evaluation},
    )
    # the round-2 evaluation and the final one are redone once each (rolled back to the checkpoint written before
    # them), so their hooks fire twice: the final evaluation needs no manual step
    assert killed == [
        "worker",
        "worker at evaluation 2",
        "replica at evaluation 2",
        "worker at evaluation 2",
        "replica",
        "worker at evaluation 4",
        "replica at evaluation 4",
        "worker at evaluation 4",
    ]
    faults = pd.read_csv(out / "faults.csv")
    assert {"device_worker", "device_task", "top_replica"} <= set(faults["component"])
    # an evaluation's dead worker is replaced and its batches re-run: a device-worker fault, not a replica's
    assert (faults["action"] == "replaced; encode_eval re-run").sum() == 4
    # the replicas killed at the round-2 and the final evaluation (faults under rounds 2 and 4), and in round 3
    assert set(faults.loc[faults["component"] == "top_replica", "round"]) == {2, 3, 4}
    runs = faults[faults["component"] == "run"]
    assert runs["what"].tolist() == ["its evaluation to redo", "1 completed round(s) to redo", "its evaluation to redo"]
    assert runs["action"].tolist() == ["rolled back to the checkpoint after 2 rounds"] * 2 + [
        "rolled back to the checkpoint after 4 rounds"
    ]
    devices = pd.read_csv(out / "devices.csv")
    assert not devices.duplicated(["round", "device"]).any()
    sent0 = devices[(devices["round"] == 0) & (devices["status"] != "dropped")]
    assert len(sent0) > 0 and (sent0["attempts"] == 2).all()  # round 0's tasks re-ran on the new worker
    _same_result(out, reference)
    assert json.loads((out / "summary.json").read_text())["rollbacks"] == 3
    ray_eval, in_process = pd.read_csv(out / "eval.csv"), pd.read_csv(reference / "eval.csv")
    assert ray_eval["rounds_done"].tolist() == in_process["rounds_done"].tolist() == [2, 2, 4, 4]  # one row per depth
    assert np.allclose(ray_eval["accuracy"], in_process["accuracy"]) and np.allclose(
        ray_eval["loss"], in_process["loss"], atol=1e-3
    )


def test_pool_larger_than_the_cluster_is_refused_before_work(ray_session, tmp_path):
    cfg = small(*RAY, "simulation.top_replicas=3")
    with pytest.raises(ConfigError, match="asks Ray for 4 CPUs .* the cluster has 2"):
        run_simulation(cfg, out=tmp_path / "never", log=quiet)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="exceed the cluster's 0 GPUs"):
        check_resources(small(*RAY, "simulation.replica_gpus=0.5").simulation, {"CPU": 2.0})
    custom = small(*RAY, "simulation.device_workers=2", "simulation.worker_resources={device_node: 1}")
    with pytest.raises(ConfigError, match=r"asks Ray for 2 of the custom resource 'device_node' .* the cluster has 1"):
        check_resources(custom.simulation, {"CPU": 4.0, "device_node": 1.0})
    assert check_resources(custom.simulation, {"CPU": 4.0, "device_node": 2.0}) == 0.0


def test_unreachable_cluster_address_is_one_clear_error():
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at '127.0.0.1:1'.*ray start --head"):
        connect_ray("127.0.0.1:1")


def test_cluster_launcher_config_passes_rays_schema():
    import yaml
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((Path(__file__).parents[1] / "simulations" / "cluster.yaml").read_text())
    validate_config(config)  # raises on an unknown or missing key
    assert any('pip install "torch==2.13.*" -e .' in c for c in config["setup_commands"])  # the Makefile's pin


@pytest.mark.slow  # the Ray fault handling is checked above; GuardedTuning's protocol in test_guarded
def test_guarded_online_on_ray_survives_a_killed_worker(ray_session, tmp_path):
    """GuardedTuning online on actors: a worker killed between the protocol's phases is replaced (with the round's
    adapters) and its phase re-run; the records equal the in-process run's."""
    from test_guarded import small as guarded

    killed = []

    def kill_worker(coordinator, r):
        if r == 1 and not killed:  # the A1 uploads are in; guarded_top and guarded_bottom are still to run
            ray_session.kill(coordinator.backend.workers[0])
            killed.append(r)

    base = guarded("design.name=online", "design.bits=8")
    inproc = run_simulation(base, out=tmp_path / "inprocess", log=quiet)
    ray_cfg = guarded("design.name=online", "design.bits=8", *RAY, "simulation.device_workers=1")
    out = run_simulation(ray_cfg, out=tmp_path / "ray", log=quiet, hooks={"training": kill_worker})
    assert killed == [1] and "device_worker" in set(pd.read_csv(out / "faults.csv")["component"])
    columns = ["round", "device", "status", "samples", "bytes_up", "bytes_down", "bytes_act_up", "bytes_grad_down"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "devices.csv")[columns], pd.read_csv(inproc / "devices.csv")[columns]
    )
    assert np.allclose(pd.read_csv(out / "rounds.csv")["loss"], pd.read_csv(inproc / "rounds.csv")["loss"], atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"]["backend"] == "ray" and summary["design"] == "online"


@pytest.mark.long  # a second Ray session with one worker
def test_a_dead_worker_with_no_room_to_replace_it_stops_in_one_line_and_resumes(ray_session, reference, tmp_path):
    """The device worker dies in round 3 and its CPU is taken at once (as when its node is lost and no other has
    room): the replacement waits ``replacement_timeout_s`` and the run stops with one line, its checkpoint kept;
    with the CPU free again, ``--resume`` finishes it with the in-process run's records."""
    from privtune_ray.errors import PrivtuneError

    @ray_session.remote(num_cpus=1)
    class Squatter:
        def ready(self):
            return True

    squatters = []

    def kill_and_squat(coordinator, r):
        if r == 3 and not squatters:
            ray_session.kill(coordinator.backend.workers[0])
            squatters.append(Squatter.remote())
            ray_session.get(squatters[0].ready.remote())  # it holds the dead worker's CPU

    cfg = small(*RAY, "simulation.replacement_timeout_s=5")
    with pytest.raises(PrivtuneError) as stopped:
        run_simulation(cfg, out=tmp_path / "run", log=quiet, hooks={"devices_started": kill_and_squat})
    message = str(stopped.value)
    assert message.startswith("device worker 0 died and its replacement found no node with room within")
    assert "simulation.replacement_timeout_s=5 s" in message and "--resume" in message and "\n" not in message
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
    ray_session.kill(squatters[0])
    _same_result(run_simulation(cfg, out=tmp_path / "run", resume=True, log=quiet), reference)


RAY_DRIVER = """
import json, time
import psutil
from privtune_ray.simulation.backend import connect_ray

connect_ray(None)
me = psutil.Process()
print(json.dumps([p.pid for p in me.children(recursive=True) if 'ray_reaper' not in ' '.join(p.cmdline())]), flush=True)
time.sleep(600)
"""


@pytest.mark.long  # a driver in a subprocess, killed
def test_a_local_ray_ends_with_its_killed_driver(ray_session, tmp_path):
    """SIGKILL on a driver that started a local Ray: the reaper (simulation/ray_reaper.py) ends the GCS, the raylet,
    their agents and workers within seconds; without it they lingered for a minute or more.

    The session's Ray runs on this host meanwhile: the driver starts a Ray of its own all the same (its own GCS and
    raylet below), where Ray's default would have joined the session's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "driver.py"
    script.write_text(RAY_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(driver.stdout.readline())
        names = {psutil.Process(p).name() for p in pids if psutil.pid_exists(p)}
        assert {"gcs_server", "raylet"} <= names, names
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)

        def alive():
            out = []
            for p in pids:
                try:
                    if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
                except psutil.NoSuchProcess:
                    pass
            return out

        deadline = time.monotonic() + 20
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(), [psutil.Process(p).name() for p in alive()]
    finally:
        driver.kill()


def test_the_reaper_notes_grandchildren_in_one_pass_over_the_process_table():
    """The watcher's scan (``ray_reaper._descendants``) reaches a noted process's children's children (Ray's
    workers are the raylet's children), and only those."""
    import subprocess
    import sys

    import psutil

    from privtune_ray.simulation.ray_reaper import _descendants

    code = "import subprocess, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        procs = {child.pid: psutil.Process(child.pid)}
        _descendants(procs)
        assert set(procs) == {child.pid, grandchild}
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True) + [psutil.Process(child.pid)]:
            proc.kill()
        child.wait(10)


RAY_NICE = """
import json, os
import ray
from privtune_ray.simulation.backend import connect_ray

connect_ray(None)

@ray.remote(num_cpus=0)
class Probe:
    def nice(self):
        return os.nice(0)

print(json.dumps({"driver": os.nice(0), "actor": ray.get(Probe.remote().nice.remote())}), flush=True)
ray.shutdown()
"""


@pytest.mark.long  # a niced driver in a subprocess
def test_a_local_ray_runs_its_actors_at_the_drivers_priority(tmp_path):
    """Ray's default starts workers 15 nicer than their raylet; a simulation's local Ray starts them at the driver's
    priority, as the in-process backend computes (here under a driver made 3 nicer than pytest)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "nice.py"
    script.write_text(RAY_NICE)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.nice(3)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    nice = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    assert nice["driver"] == os.nice(0) + 3 and nice["actor"] == nice["driver"], nice
