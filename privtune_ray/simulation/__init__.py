"""The simulation engine: many heterogeneous virtual devices, a top-model pool, a coordinator, a simulated clock.

population.py  device state (tier, depth m_i, partition, cursors) and round planning
tiers.py       device profiles: memory → split depth, tier draw
worker.py      DeviceWorker: runs any virtual device's task (bottom → mechanism → message)
replica.py     TopReplica: the trainable top, synchronised by a gradient all-reduce
clock.py       the discrete-event simulated clock
backends.py    in-process and Ray backends behind one interface; fault handling
coordinator.py rounds, records, checkpoints, evaluation: ``run_simulation``
"""

from .clock import DeviceTiming, simulate_round, transfer_s
from .coordinator import run_simulation

__all__ = ["DeviceTiming", "run_simulation", "simulate_round", "transfer_s"]
