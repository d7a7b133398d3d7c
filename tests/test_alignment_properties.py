"""Hypothesis property tests: every policy respects every budget."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.alignment import POLICIES, AlignmentState, AssignContext, CapacityEstimate, make_policy


@st.composite
def instances(draw: st.DrawFn) -> tuple[AlignmentState, dict[str, int], int]:
    n = draw(st.integers(0, 6))
    E = draw(st.integers(1, 6))
    cells = st.floats(0.0, 1.0, allow_nan=False)
    F = np.array(draw(st.lists(cells, min_size=n * E, max_size=n * E))).reshape(n, E)
    clients = [f"c{i}" for i in range(n)]
    state = AlignmentState(clients, E, init_fitness=F)
    usage = draw(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=E, max_size=E))
    state.update_usage(np.array(usage))
    budgets = {c: draw(st.integers(0, 8)) for c in clients}
    seed = draw(st.integers(0, 2**32 - 1))
    return state, budgets, seed


@settings(max_examples=60, deadline=None)
@given(instances())
def test_every_policy_respects_budgets(inst: tuple[AlignmentState, dict[str, int], int]) -> None:
    state, budgets, seed = inst
    clients = list(budgets)
    E = state.num_experts
    est = CapacityEstimate(1e9, 1e12, 1e6, 1e6, 0.0)
    ctx = AssignContext(
        estimates={c: est for c in clients},
        deadline_s=10.0,
        bytes_shared=1e5,
        bytes_per_expert=2e5,
        flops_per_expert=1e9,
    )
    for name in POLICIES:
        out = make_policy(name).assign(clients, budgets, state, np.random.default_rng(seed), ctx)
        assert list(out) == clients
        for c in clients:
            es = out[c]
            assert es == sorted(set(es))
            assert all(0 <= e < E for e in es)
            assert len(es) <= min(budgets[c], E)
            # these may leave budget unused (fair_participation: systems_aware while no client is behind,
            # as here: no feedback yet; it raises budgets and deadlines only for clients behind)
            if name not in ("deadline_aware", "systems_aware", "fair_participation"):
                assert len(es) == min(budgets[c], E)  # these policies fill every budget
            else:
                assert ctx.finish_time(c, es, E) <= ctx.time_limit_s


@settings(max_examples=30, deadline=None)
@given(instances())
def test_optimal_total_fitness_is_at_least_every_other_policys(
    inst: tuple[AlignmentState, dict[str, int], int],
) -> None:
    state, budgets, seed = inst
    clients = list(budgets)
    F = state.fitness
    totals = {}
    for name in ("random", "greedy", "load_balanced", "optimal"):
        out = make_policy(name).assign(clients, budgets, state, np.random.default_rng(seed))
        totals[name] = sum(F[state.row(c), out[c]].sum() for c in clients)
    assert totals["optimal"] >= max(totals.values()) - 1e-5 * max(1, len(clients))
