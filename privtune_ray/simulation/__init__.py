"""The simulation engine: many heterogeneous virtual devices, a top-model pool, a coordinator, a simulated clock.

population.py  device state (tier, depth m_i, partition, cursors) and round planning
tiers.py       device profiles: memory → split depth, tier draw
protocol.py    what the coordinator, workers and replicas hand each other (typed dataclasses)
worker.py      DeviceWorker: hosts any virtual device; the design says what it computes
replica.py     TopReplica: hosts the design's cloud part, synchronised by a gradient all-reduce
backend.py     transport only: start actors, call them, replace dead ones (registry: inprocess, ray)
pool.py        the actor pool above the transport: replica routing, the all-reduce, evaluation
clock.py       the discrete-event simulated clock

The round loop that drives them (``run_simulation``) is a driver: ``privtune_ray/drivers/simulate.py``.
"""

from .clock import DeviceTiming, simulate_round, transfer_s

__all__ = ["DeviceTiming", "simulate_round", "transfer_s"]
