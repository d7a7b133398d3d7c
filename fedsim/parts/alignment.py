"""The alignment services of a ``fedmoe`` run and the cost figures they budget with.

:class:`AlignmentServices` bundles what ``protocol.fedmoe.alignment`` configures:
the client-expert alignment state (fitness, usage), the server's capacity
estimator (primed with the clients' noisy self-reports) and the assignment
policy. :class:`Accounting` gives the bytes, FLOPs and memory of a client's
round from the actual model (:mod:`fedsim.learning.accounting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AlignmentServices", "Accounting"]


@dataclass
class AlignmentServices:
    """The alignment services of a run (built by :func:`fedsim.build.build_parts`).

    Attributes:
        state: the :class:`~fedsim.alignment.state.AlignmentState` (fitness, usage).
        estimator: the server's :class:`~fedsim.alignment.capacity.CapacityEstimator`.
        policy: the assignment policy (:func:`fedsim.alignment.policies.make_policy`).
        safety_margin: share of the deadline kept in reserve when budgeting experts.
        max_experts_per_client: cap on k_c regardless of capacity (None: no cap).
        inference_k: experts per client of the paper's per-client inference.
    """

    state: Any
    estimator: Any
    policy: Any
    safety_margin: float
    max_experts_per_client: int | None
    inference_k: int


@dataclass
class Accounting:
    """Bytes, FLOPs and memory of a client's round, from the actual model.

    All figures come from :mod:`fedsim.learning.accounting`: payload bytes
    are the tensors sent (backbone + gate + assigned experts); FLOPs are
    forward + backward of backbone, gate and ``min(top_k, k)`` experts per
    sample per epoch; memory is parameters + gradients + optimizer state +
    one batch of activations.
    """

    bytes_shared: int
    bytes_per_expert: int
    flops_shared_per_sample: float  # training FLOPs per sample, backbone + gate + routing
    flops_expert_per_sample: float  # training FLOPs per sample per active expert
    mem_by_k: list[int]  # training memory in bytes with k assigned experts (index k)
    epochs: int
    top_k: int
    num_experts: int

    def payload_bytes(self, experts: list[int], shared: bool = True) -> float:
        """Bytes of the tensors for ``experts`` (plus backbone and gate if ``shared``)."""
        return float((self.bytes_shared if shared else 0) + len(experts) * self.bytes_per_expert)

    def job_flops(self, k: int, num_samples: int) -> float:
        """Training FLOPs of a job with ``k`` assigned experts over ``num_samples`` samples."""
        active = min(self.top_k, k)
        return float(self.epochs * num_samples * (self.flops_shared_per_sample + active * self.flops_expert_per_sample))

    def memory_bytes(self, k: int) -> float:
        """Training memory in bytes with ``k`` assigned experts."""
        return float(self.mem_by_k[min(max(k, 0), len(self.mem_by_k) - 1)])

    def budget(self, est: Any, num_samples: int, deadline_s: float, margin: float) -> int:
        """Expert budget k_c from a capacity estimate (see :func:`fedsim.alignment.capacity.expert_budget`)."""
        from fedsim.alignment.capacity import expert_budget

        mem1 = self.mem_by_k[1]
        mem_per = (self.mem_by_k[-1] - mem1) / max(1, self.num_experts - 1)
        return expert_budget(
            est, deadline_s=deadline_s, safety_margin=margin,
            bytes_shared=self.bytes_shared, bytes_per_expert=self.bytes_per_expert,
            flops_shared=self.epochs * num_samples * self.flops_shared_per_sample,
            flops_per_expert=self.epochs * num_samples * self.flops_expert_per_sample,
            mem_shared_bytes=mem1 - mem_per, mem_per_expert_bytes=mem_per,
            num_experts=self.num_experts, min_k=1,
        )

    def assign_context(self, estimates: dict, deadline_s: float, margin: float, samples: dict[str, int] | None = None, needed: int | None = None) -> Any:
        """The :class:`~fedsim.alignment.policies.AssignContext` for deadline-aware policies."""
        from fedsim.alignment.policies import AssignContext

        samples = samples or {}
        return AssignContext(
            estimates, deadline_s, margin, self.bytes_shared, self.bytes_per_expert,
            flops_shared={c: self.epochs * samples.get(c, 0) * self.flops_shared_per_sample for c in estimates},
            flops_per_expert={c: self.epochs * samples.get(c, 0) * self.flops_expert_per_sample for c in estimates},
            needed=needed,
        )
