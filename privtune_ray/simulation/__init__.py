"""The simulation engine: many heterogeneous virtual devices, a top-model pool, a coordinator, a simulated clock.

population.py  device state (tier, depth m_i, partition, cursors) and round planning
tiers.py       device profiles: memory → split depth, tier draw
protocol.py    what the coordinator, workers and replicas hand each other (typed dataclasses)
worker.py      DeviceWorker: hosts any virtual device; the design says what it computes
replica.py     TopReplica: hosts the design's cloud part, synchronised by a gradient all-reduce
backend.py     transport only: start actors, call them, replace dead ones (registry: inprocess, ray)
pool.py        the actor pool above the transport: replica routing, the all-reduce, evaluation
clock.py       the discrete-event simulated clock
coordinator.py the round loop, records, checkpoints, evaluation: ``run_simulation``
"""

from .clock import DeviceTiming, simulate_round, transfer_s


def __getattr__(name: str):
    # run_simulation loads the designs, which use this package's protocol module: imported on first use
    if name == "run_simulation":
        from .coordinator import run_simulation

        return run_simulation
    raise AttributeError(name)


__all__ = ["DeviceTiming", "run_simulation", "simulate_round", "transfer_s"]
