"""Alignment layer of fedsim: fitness and usage state, capacity estimates, policies.

Each ``fedmoe`` round the server (1) reads capacity *estimates*
(:class:`CapacityEstimator`), (2) turns them into expert budgets
(:func:`expert_budget`), (3) lets an :class:`AlignmentPolicy` assign experts,
and after training (4) updates :class:`AlignmentState` (fitness EMA, usage)
and the estimator from what it observed. Nothing here touches SimPy or torch.
"""

from fedsim.alignment.capacity import (
    CapacityEstimate,
    CapacityEstimator,
    expert_budget,
    lognormal_sigma,
    predicted_time,
)
from fedsim.alignment.metrics import expert_load_cv, expert_loads, total_fitness
from fedsim.alignment.policies import (
    POLICIES,
    AlignmentPolicy,
    AssignContext,
    GreedyPolicy,
    InfeasibleAssignmentError,
    LoadBalancedPolicy,
    OptimalPolicy,
    RandomPolicy,
    make_policy,
    policy_params,
)
from fedsim.alignment.state import AlignmentState, Feedback, loss_reward
from fedsim.alignment.variants import (
    DeadlineAwarePolicy,
    FairParticipationPolicy,
    InRoundBalancedPolicy,
    SystemsAwarePolicy,
)

__all__ = [
    "POLICIES",
    "AlignmentPolicy",
    "AlignmentState",
    "AssignContext",
    "CapacityEstimate",
    "CapacityEstimator",
    "DeadlineAwarePolicy",
    "FairParticipationPolicy",
    "Feedback",
    "GreedyPolicy",
    "InRoundBalancedPolicy",
    "SystemsAwarePolicy",
    "InfeasibleAssignmentError",
    "LoadBalancedPolicy",
    "OptimalPolicy",
    "RandomPolicy",
    "expert_budget",
    "expert_load_cv",
    "expert_loads",
    "lognormal_sigma",
    "loss_reward",
    "make_policy",
    "policy_params",
    "predicted_time",
    "total_fitness",
]
