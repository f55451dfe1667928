"""The simulation on a multi-node Ray cluster (issue 19): Ray's own ``ray.cluster_utils.Cluster`` starts a head and
two worker nodes (separate raylets with their own resources, on this host), as Ray's test suite does.

Each test drives the cluster from a fresh interpreter, so that the session's local Ray (``ray_session``) and this
cluster never meet in one process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_simulation import EXACT

TESTS = Path(__file__).parent

# The head holds the top replica's resource, each worker node one device worker's: the placement is forced. No Ray
# worker may read the dataset (cluster_hooks.refuse_dataset_reads): the driver tokenises it once, the workers get it
# through the object store.
CLUSTER = """
import json, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "resources": {"top_node": 1}, "object_store_memory": 150 * 2**20},
)
nodes = [
    cluster.add_node(num_cpus=1, resources={"device_node": 1}, object_store_memory=150 * 2**20) for _ in range(2)
]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False,
         runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                      "worker_process_setup_hook": "cluster_hooks.refuse_dataset_reads"})
head = ray.get_runtime_context().get_node_id()
"""


def _on_cluster(body: str, tmp_path: Path) -> dict:
    """Run ``body`` after :data:`CLUSTER` in a fresh interpreter; it prints one JSON line, returned here."""
    code = CLUSTER + body + "\nray.shutdown()\ncluster.shutdown()\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]  # Ray may print after it
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.slow  # three raylets and three actors: about 2 minutes on 2 idle cores, 10 on busy ones
def test_device_workers_and_the_top_replica_land_on_their_nodes_and_match_in_process(reference, tmp_path):
    """Two device workers, each on its own worker node (``worker_resources: {device_node: 1}``, spread), the top
    replica on the head (``replica_resources: {top_node: 1}``, its placement group): every upload crosses nodes,
    and the records equal the in-process run's. The workers read no dataset file (a read fails there)."""
    result = _on_cluster(
        f"""
from test_simulation import quiet, small
from privtune_ray.drivers.simulate import run_simulation
cfg = small("simulation.backend=ray", "simulation.address={{address}}".replace("{{address}}", cluster.address),
            "simulation.device_workers=2", "simulation.worker_cpus=1", "simulation.replica_cpus=1",
            "simulation.worker_resources={{device_node: 1}}", "simulation.replica_resources={{top_node: 1}}")
uploads = []

def record_uploads(coordinator, r):  # the round's upload handles, as the coordinator gathers them
    pool = coordinator.pool
    if "gather" not in vars(pool):
        gather = pool.gather
        def recording(pending):
            results = gather(pending)
            uploads.extend(res.payload for res in results)
            return results
        pool.gather = recording

run = run_simulation(cfg, out={str(tmp_path / "cluster")!r}, log=quiet, hooks={{"devices_started": record_uploads}})
summary = json.loads((run / "summary.json").read_text())
# Ray's own account of each upload (the refs held here): its size in the object store, the nodes holding a copy
located = ray.experimental.get_object_locations(uploads)
objects = [{{"size": located[u]["object_size"], "nodes": located[u]["node_ids"]}} for u in uploads]

@ray.remote(resources={{"device_node": 1}})
def read_on_a_device_node():
    from privtune_ray.data import load_split
    try:
        load_split("sst2", "dev", max_samples=2)
    except RuntimeError as exc:
        return str(exc)

print(json.dumps({{"head": head, "nodes": [n.node_id for n in nodes], "backend": summary["backend"],
                  "run": str(run), "read": ray.get(read_on_a_device_node.remote()), "objects": objects}}))
""",
        tmp_path,
    )
    backend = result["backend"]
    assert sorted(backend["worker_nodes"]) == sorted(result["nodes"])  # one worker on each worker node
    assert backend["replica_nodes"] == [result["head"]] and backend["placement_group"]
    assert result["read"] == "a Ray worker read the dataset"  # the hook that no worker of the run tripped is armed
    run = Path(result["run"])
    devices = pd.read_csv(run / "devices.csv")
    assert devices["worker"].nunique() == 2  # both workers ran devices
    pd.testing.assert_frame_equal(devices[EXACT], pd.read_csv(reference / "devices.csv")[EXACT])
    summary, ref = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    assert summary["train_samples"] == ref["train_samples"] and summary["bytes_up"] == ref["bytes_up"]
    assert summary["dev_loss"] == pytest.approx(ref["dev_loss"], abs=1e-3)
    # The bytes Ray moved for the uploads against the coordinator's count: an object per upload, of its bytes plus
    # Ray's framing, crossing nodes once. Under Ray's 100 KiB inline limit (max_direct_call_object_size) an upload
    # has no object-store copy: it crosses inside the task's reply, to the driver on the head, and reaches the
    # replica there in the call's arguments. Above it, it sits in its worker node's object store and is copied
    # once, to the head's, where the replica reads it.
    objects, sent = result["objects"], devices.loc[devices["bytes_up"] > 0, "bytes_up"]
    assert len(objects) == len(sent)
    moved = sum(o["size"] for o in objects)
    assert sent.sum() <= moved <= sent.sum() + 64 * len(objects), (moved, sent.sum())
    inline = [o for o in objects if o["size"] < 100 * 2**10]
    assert all(o["nodes"] == [] for o in inline)
    for o in objects:
        if o not in inline:
            assert (
                len(o["nodes"]) == 2
                and result["head"] in o["nodes"]
                and set(o["nodes"]) < {result["head"], *result["nodes"]}
            ), o


@pytest.mark.slow
def test_a_pool_the_cluster_cannot_place_stops_before_anything_is_written(tmp_path):
    """Three device workers need three ``device_node`` units where the cluster has two; a replica bundle that no
    node holds (4 CPUs and ``top_node``) waits ``placement_timeout_s`` and stops: one line each, no run directory."""
    result = _on_cluster(
        f"""
from test_simulation import quiet, small
from privtune_ray.errors import ConfigError
from privtune_ray.drivers.simulate import run_simulation
errors = []
for extra in (["simulation.device_workers=3", "simulation.worker_cpus=0.5",
               "simulation.worker_resources={{device_node: 1}}"],
              ["simulation.replica_cpus=2", "simulation.worker_cpus=0.5",
               "simulation.replica_resources={{top_node: 1}}", "simulation.placement_timeout_s=5"]):
    cfg = small("simulation.backend=ray", "simulation.address=" + cluster.address, *extra)
    try:
        run_simulation(cfg, out={str(tmp_path / "bad")!r}, log=quiet)
    except ConfigError as exc:
        errors.append(str(exc))
print(json.dumps({{"errors": errors}}))
""",
        tmp_path,
    )
    resources, placement = result["errors"]
    assert "3 of the custom resource 'device_node'" in resources and "the cluster has 2" in resources
    assert "could not place 1 top replica(s)" in placement and "'top_node': 1" in placement
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_worker_node_lost_mid_round_and_mid_evaluation_costs_no_row(reference, tmp_path):
    """Three device nodes for two device workers. In round 1, with its tasks dispatched, the node of worker 0 is
    removed (``cluster.remove_node``, not gracefully): its worker is replaced on the spare node and its tasks re-run.
    As the final evaluation starts, that node goes too and a new node joins: the replacement waits for it and the
    evaluation's batches re-run there. Rows are neither lost nor duplicated: the records equal the in-process run's."""
    result = _on_cluster(
        f"""
cluster.add_node(num_cpus=1, resources={{"device_node": 1}}, object_store_memory=150 * 2**20)  # the spare
cluster.wait_for_nodes()
import time
from test_simulation import quiet, small
from privtune_ray.drivers.simulate import run_simulation
removed, where = [], {{}}

def node_of(coordinator, worker):
    node_id = coordinator.backend.describe()["worker_nodes"][worker]
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_id)

def note_nodes(coordinator, r):  # between rounds, while the workers are idle
    where[r] = coordinator.backend.describe()["worker_nodes"]

def remove_mid_round(coordinator, r):
    if r == 1 and not removed:
        node = next(n for n in cluster.list_all_nodes() if n.node_id == where[0][0])
        cluster.remove_node(node, allow_graceful=False)
        removed.append(("round", r, node.node_id))

def remove_at_evaluation(coordinator, done):
    if done == 4 and len(removed) == 1:
        node = node_of(coordinator, 0)  # the evaluation's batches start at worker 0 (its replacement, on the spare)
        cluster.remove_node(node, allow_graceful=False)
        while True:  # until Ray sees the worker gone (its process outlives its raylet for a moment)
            try:
                ray.get(coordinator.backend.workers[0].ping.remote(), timeout=2)
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError:
                break
        cluster.add_node(num_cpus=1, resources={{"device_node": 1}}, object_store_memory=150 * 2**20)
        removed.append(("evaluation", done, node.node_id))

cfg = small("simulation.backend=ray", "simulation.address=" + cluster.address,
            "simulation.device_workers=2", "simulation.worker_cpus=1", "simulation.replica_cpus=1",
            "simulation.worker_resources={{device_node: 1}}", "simulation.replica_resources={{top_node: 1}}")
run = run_simulation(cfg, out={str(tmp_path / "lost")!r}, log=quiet,
                     hooks={{"training": note_nodes, "devices_started": remove_mid_round,
                             "evaluating": remove_at_evaluation}})
summary = json.loads((run / "summary.json").read_text())
print(json.dumps({{"removed": removed, "where": where, "backend": summary["backend"], "run": str(run)}}))
""",
        tmp_path,
    )
    assert [r[:2] for r in result["removed"]] == [["round", 1], ["evaluation", 4]]
    lost = {r[2] for r in result["removed"]}
    nodes = result["backend"]["worker_nodes"]
    assert None not in nodes and not lost & set(nodes)  # every worker now runs on a surviving node
    run = Path(result["run"])
    faults = pd.read_csv(run / "faults.csv")
    # worker 0 replaced twice: mid-round (its round-1 tasks re-run) and at the final evaluation (round -1)
    assert faults.loc[faults["component"] == "device_worker", "action"].tolist() == [
        "replaced; tasks re-run",
        "replaced; encode_eval re-run",
    ]
    devices = pd.read_csv(run / "devices.csv")
    assert not devices.duplicated(["round", "device"]).any()
    pd.testing.assert_frame_equal(devices[EXACT], pd.read_csv(reference / "devices.csv")[EXACT])
    summary, ref = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    assert summary["train_samples"] == ref["train_samples"] and summary["bytes_up"] == ref["bytes_up"]
    assert summary["dev_loss"] == pytest.approx(ref["dev_loss"], abs=1e-3)
    evals = pd.read_csv(run / "eval.csv")
    assert evals["rounds_done"].tolist() == pd.read_csv(reference / "eval.csv")["rounds_done"].tolist()
