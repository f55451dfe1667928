"""The simulated clock and the device population: hand-computed cases, no model needed."""

import numpy as np
import pytest

from privtune_ray.config import SimulationConfig, TierConfig, config_from_dict
from privtune_ray.data.partition import partition
from privtune_ray.errors import ConfigError, DataError
from privtune_ray.simulation.clock import DeviceTiming, simulate_round, transfer_s
from privtune_ray.simulation.population import Population
from privtune_ray.simulation.tiers import assign_tiers, tier_counts


def test_transfer_time_is_latency_plus_bits_over_bandwidth():
    # 1,000,000 bytes = 8 Mbit over 8 Mbit/s: 1 s, plus 50 ms latency; jitter 2 doubles the bandwidth
    assert transfer_s(1_000_000, 8.0, 0.05) == pytest.approx(1.05)
    assert transfer_s(1_000_000, 8.0, 0.05, jitter=2.0) == pytest.approx(0.55)


def _three_devices():
    # arrivals: a = 10 + 1 + 2 + 1 = 14, b = 10 + 0.5 + 1 + 0.5 = 12, c = 10 + 2 + 4 + 3 = 19; d drops out
    return [
        DeviceTiming(0, 1.0, 2.0, 1.0, top_s=3.0),
        DeviceTiming(1, 0.5, 1.0, 0.5, top_s=4.0),
        DeviceTiming(2, 2.0, 4.0, 3.0, top_s=1.0),
        DeviceTiming(3, 1.0, 0.0, 0.0, 0.0, dropped=True),
    ]


def test_clock_one_replica_serves_first_come_first_served():
    t = simulate_round(10.0, _three_devices(), replicas=1, step_s=0.5)
    e = t.events
    assert e[1].arrival_s == 12 and (e[1].top_start_s, e[1].top_end_s) == (12, 16)  # first to arrive
    assert e[0].arrival_s == 14 and (e[0].top_start_s, e[0].top_end_s) == (16, 19)  # queues behind device 1
    assert e[2].arrival_s == 19 and (e[2].top_start_s, e[2].top_end_s) == (19, 20)
    assert e[3].status == "dropped" and e[3].arrival_s is None
    assert t.end_s == 20.5 and t.duration_s == 10.5  # last top done + the optimiser step


def test_clock_two_replicas_and_a_deadline():
    t = simulate_round(10.0, _three_devices(), replicas=2, step_s=0.5)
    assert (t.events[0].top_start_s, t.events[0].top_end_s) == (14, 17)  # the second replica is free
    assert t.end_s == 20.5  # device 2: 19 → 20, then the step
    late = simulate_round(10.0, _three_devices(), replicas=2, step_s=0.5, deadline_s=5.0)
    assert late.events[2].status == "late" and late.events[2].top_start_s is None
    assert late.end_s == 17.5  # device 0 done at 17 (after the deadline, 15, closed the round), + step
    waited = simulate_round(10.0, _three_devices(), replicas=2, step_s=0.5, deadline_s=8.5)
    assert waited.events[2].status == "late" and waited.end_s == 19.0  # served by 17, but open until 18.5
    gone = [DeviceTiming(0, 1, 1, 1, 1, dropped=True)]
    assert (
        simulate_round(10.0, gone, replicas=1, step_s=0.5, deadline_s=3.0).end_s == 10.0
    )  # drop-outs: noticed at once
    lost = [DeviceTiming(0, 5, 1, 1, 1)]
    assert (
        simulate_round(10.0, lost, replicas=1, step_s=0.5, deadline_s=3.0).end_s == 13.0
    )  # late: waited to the deadline


def _population(n_devices=5, n_samples=40, **sim):
    cfg = SimulationConfig(devices=n_devices, **sim)
    labels = np.arange(n_samples) % 2
    parts = partition(labels, n_devices, "iid", seed=0)
    tiers = assign_tiers(cfg, 0)
    return Population(cfg, 0, tiers, np.full(n_devices, 2, dtype=np.int16), parts)


def test_every_sample_is_sent_once_per_local_epoch_and_dropouts_send_nothing():
    pop = _population(devices_per_round=3, local_batch_size=3, tiers=[TierConfig(dropout=0.3, availability=0.9)])
    sent = {i: [] for i in range(len(pop))}
    dropped = 0
    for r in range(40):
        plan = pop.plan(r)
        again = pop.plan(r)  # planning is pure and seeded
        assert [(d.device, d.dropped, d.up_jitter) for d in plan.devices] == [
            (d.device, d.dropped, d.up_jitter) for d in again.devices
        ]
        assert all((a.task is None) == (b.task is None) for a, b in zip(plan.devices, again.devices))
        for d in plan.devices:
            dropped += d.dropped
            if d.task is not None:
                sent[d.device] += d.task.samples.tolist()
        pop.commit(plan)
    assert dropped > 0
    for i, samples in sent.items():
        part = pop.parts[i].tolist()
        full_epochs = len(samples) // len(part)
        for e in range(full_epochs):  # each complete local epoch is a permutation of the device's data
            assert sorted(samples[e * len(part) : (e + 1) * len(part)]) == part
        assert pop.releases(i) == -(-len(samples) // len(part))


def test_derived_seeds_differ_per_device_and_round():
    from privtune_ray.simulation.protocol import derive_seed

    seeds = {derive_seed(0, i, r) for i in range(20) for r in range(20)} | {derive_seed(0, i) for i in range(20)}
    assert len(seeds) == 420 and derive_seed(0, 1, 0) != derive_seed(0, 1)


def test_plan_changes_nothing_until_commit_and_state_round_trips():
    pop = _population()
    before = pop.state_dict()
    pop.plan(0)
    assert all((before[k] == v).all() for k, v in pop.state_dict().items())
    pop.commit(pop.plan(0))
    saved = pop.state_dict()
    pop.commit(pop.plan(1))
    pop.load_state_dict(saved)
    assert all((saved[k] == v).all() for k, v in pop.state_dict().items())


def test_tiers_split_the_population_by_share_and_weights_scale_partitions():
    tiers = [TierConfig(name="a", share=3), TierConfig(name="b", share=1)]
    assert tier_counts(tiers, 10).tolist() == [8, 2]  # 7.5 / 2.5: the tie goes to the first tier
    drawn = assign_tiers(SimulationConfig(devices=1000, tiers=tiers), seed=1)
    assert (drawn == 0).sum() == 750
    parts = partition(np.zeros(3000), 3, "iid", seed=0, weights=np.array([1.0, 1.0, 4.0]))
    assert [len(p) for p in parts] == [500, 500, 2000]
    assert sorted(np.concatenate(parts).tolist()) == list(range(3000))
    with pytest.raises(DataError, match="data_weight"):
        partition(np.zeros(10), 3, "iid", seed=0, weights=np.array([1.0, 1.0, 1000.0]))


@pytest.mark.parametrize(
    "override, key",
    [
        ({"devices": 0}, "simulation.devices"),
        ({"devicez": 3}, "simulation.devicez"),
        ({"tiers": []}, "simulation.tiers"),
        ({"tiers": [{"name": "x", "dropout": 1.5}]}, "simulation.tiers[0].dropout"),
        ({"tiers": [{"name": "x", "memory_mb": -1}]}, "simulation.tiers[0].memory_mb"),
        ({"backend": "spark"}, "simulation.backend"),
        ({"top_replicas": 0}, "simulation.top_replicas"),
    ],
)
def test_bad_simulation_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({"simulation": override})


def test_replicas_share_the_clusters_gpus_and_fall_back_to_cpu():
    from privtune_ray.simulation.backend import check_resources, replica_gpus

    assert replica_gpus(None, 2, 1.0) == 0.5 and replica_gpus(None, 1, 4.0) == 1.0 and replica_gpus(None, 3, 0.0) == 0.0
    assert replica_gpus(0.25, 2, 1.0) == 0.25
    sim = SimulationConfig(top_replicas=2)
    assert check_resources(sim, {"CPU": 16.0, "GPU": 1.0}) == 0.5  # fractional num_gpus per replica
    assert check_resources(sim, {"CPU": 16.0}) == 0.0  # no GPU: CPU replicas
    with pytest.raises(ConfigError, match="exceed the cluster's 1 GPUs"):
        check_resources(SimulationConfig(top_replicas=3, replica_gpus=0.5), {"CPU": 16.0, "GPU": 1.0})
