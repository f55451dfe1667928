"""Fine-tuning designs beside plain split learning: EW-Tune (DP-SGD on the top model, Edgeworth-calibrated)."""

from .ewtune import DPPlan, DPTopServer, plan_dp_sgd, poisson_batches, spent_epsilon, steps_per_epoch

__all__ = ["DPPlan", "DPTopServer", "plan_dp_sgd", "poisson_batches", "spent_epsilon", "steps_per_epoch"]
