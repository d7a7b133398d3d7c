"""Plain-number summaries of an assignment (client id -> list of expert indices)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from fedsim.alignment.state import AlignmentState

__all__ = ["expert_load_cv", "expert_loads", "total_fitness"]


def expert_loads(assignment: Mapping[Hashable, Sequence[int]], num_experts: int) -> np.ndarray:
    """Number of clients assigned to each expert, shape ``(num_experts,)``, int."""
    if int(num_experts) != num_experts or num_experts < 1:
        raise ValueError('"num_experts" must be an integer >= 1')
    loads = np.zeros(int(num_experts), dtype=int)
    for client, experts in assignment.items():
        for e in experts:
            if not 0 <= int(e) < num_experts:
                raise ValueError(f"client {client!r}: expert {e} out of range [0, {num_experts})")
            loads[int(e)] += 1
    return loads


def expert_load_cv(assignment: Mapping[Hashable, Sequence[int]], num_experts: int) -> float:
    """Coefficient of variation (population std / mean) of clients per expert.

    Computed over all ``num_experts`` experts, unassigned ones counting as 0.
    0.0 for a perfectly even spread and for an empty assignment (mean 0).
    """
    loads = expert_loads(assignment, num_experts).astype(float)
    mean = loads.mean()
    return 0.0 if mean == 0 else float(loads.std() / mean)


def total_fitness(assignment: Mapping[Hashable, Sequence[int]], state: AlignmentState) -> float:
    """Sum of ``state.fitness[c, e]`` over all assigned (client, expert) pairs."""
    F = state.fitness
    return float(sum(F[state.row(c), list(es)].sum() for c, es in assignment.items() if es))
