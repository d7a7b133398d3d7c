"""Alignment policies called directly with hand-computed numbers (Prepare / Execute / Assert)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedsim.alignment import (
    POLICIES,
    AlignmentState,
    AssignContext,
    CapacityEstimate,
    InfeasibleAssignmentError,
    expert_budget,
    expert_load_cv,
    expert_loads,
    make_policy,
    total_fitness,
)

CLIENTS = ["a", "b", "c"]


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def state_with(fitness: list[list[float]], clients: list[str] = CLIENTS) -> AlignmentState:
    return AlignmentState(clients, len(fitness[0]), init_fitness=np.array(fitness))


def brute_force_best(
    F: np.ndarray, budgets: list[int], lo: int, hi: int
) -> tuple[float, list[tuple[int, ...]]] | None:
    """Best total fitness over all assignments giving client i exactly budgets[i] experts."""
    E = F.shape[1]
    best = None
    per_client = [list(itertools.combinations(range(E), min(k, E))) for k in budgets]
    for combo in itertools.product(*per_client):
        loads = np.zeros(E, dtype=int)
        for es in combo:
            loads[list(es)] += 1
        if np.all(loads >= lo) and np.all(loads <= hi):
            total = sum(F[i, list(es)].sum() for i, es in enumerate(combo))
            if best is None or total > best[0] + 1e-12:
                best = (total, list(combo))
    return best


# --------------------------------------------------------------- greedy vs load-balanced
# Every client likes expert 0 best.
PILE = [[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.9, 0.8, 0.5]]
ONE_EACH = {"a": 1, "b": 1, "c": 1}


def test_greedy_piles_every_client_onto_expert_0() -> None:
    out = make_policy("greedy").assign(CLIENTS, ONE_EACH, state_with(PILE), rng())
    assert out == {"a": [0], "b": [0], "c": [0]}
    assert expert_load_cv(out, 3) == pytest.approx(math.sqrt(2))  # loads [3, 0, 0]


def test_load_balanced_spreads_by_in_round_provisional_load() -> None:
    # Prepare: usage all 0 (round 1); the named variant: w_f=1, w_u=0.5, w_r=0.5, n=3
    state = state_with(PILE)
    # Execute
    out = make_policy("load_balanced_inround").assign(CLIENTS, ONE_EACH, state, rng())
    # Assert, by hand: a: [1, .889, .111] -> 0; m=[1,0,0]
    # b: [1 - 1/6, .111, .889] -> 2; m=[1,0,1];  c: [1 - 1/6, .889, .556 - 1/6] -> 1
    assert out == {"a": [0], "b": [2], "c": [1]}
    assert expert_load_cv(out, 3) == 0.0


def test_load_balanced_spreads_by_current_usage_paper_rule() -> None:
    # Prepare: expert 0 carried all past load; w_r=0 is the paper's rule
    state = state_with(PILE)
    state.update_usage(np.array([10.0, 0.0, 0.0]))
    # Execute
    out = make_policy("load_balanced", w_r=0.0).assign(CLIENTS, ONE_EACH, state, rng())
    # Assert: scores a [.5, .889, .111], b [.5, .111, .889], c [.5, .889, .556]
    assert out == {"a": [1], "b": [2], "c": [1]}


def test_load_balanced_round_robin_draft_with_budget_two() -> None:
    # a picks 0, b picks 1 (0 now costs 1/4), then a: [-, .9-0.25, .8] -> 2, b: [1-.25, -, .1-.25] -> 0
    state = state_with([[1.0, 0.9, 0.8], [1.0, 0.95, 0.1]], ["a", "b"])
    out = make_policy("load_balanced", w_r=0.5).assign(["a", "b"], {"a": 2, "b": 2}, state, rng())
    assert out == {"a": [0, 2], "b": [0, 1]}


def test_load_balanced_defaults_to_the_paper_rule() -> None:
    # w_r = 0: with all usage 0 every client takes its own top expert, all on expert 0
    assert make_policy("load_balanced").w_r == 0.0
    out = make_policy("load_balanced").assign(CLIENTS, ONE_EACH, state_with(PILE), rng())
    assert out == {"a": [0], "b": [0], "c": [0]}


# ------------------------------------------------------------------------------- optimal
OPT_F = [[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.95, 0.85, 0.05]]
OPT_BUDGETS = {"a": 2, "b": 1, "c": 2}


def test_optimal_meets_load_bounds_and_matches_brute_force() -> None:
    # Prepare: unconstrained, loads would be [3, 2, 0]; bounds 1..2 per expert
    state = state_with(OPT_F)
    # Execute
    out = make_policy("optimal", min_load=1, max_load=2).assign(CLIENTS, OPT_BUDGETS, state, rng())
    # Assert: b gives up expert 0 (0.7) for expert 2 (0.2): 4.2 - 0.5 = 3.7
    assert out == {"a": [0, 1], "b": [2], "c": [0, 1]}
    assert expert_loads(out, 3).tolist() == [2, 2, 1]  # upper bound on 0, lower on 2 met exactly
    best = brute_force_best(np.array(OPT_F), [2, 1, 2], 1, 2)
    assert best is not None
    assert total_fitness(out, state) == pytest.approx(best[0]) == pytest.approx(3.7)


def test_optimal_without_bounds_equals_greedy() -> None:
    state = state_with(OPT_F)
    out = make_policy("optimal").assign(CLIENTS, OPT_BUDGETS, state, rng())
    assert out == make_policy("greedy").assign(CLIENTS, OPT_BUDGETS, state, rng())


@pytest.mark.parametrize("seed", range(20))
def test_optimal_matches_brute_force_on_random_tiny_instances(seed: int) -> None:
    g = np.random.default_rng(seed)
    F = np.round(g.uniform(0, 1, size=(3, 3)), 3)
    budgets = [int(k) for k in g.integers(0, 4, size=3)]
    lo = int(g.integers(0, 2))
    hi = int(g.integers(max(lo, 1), 4))
    state = state_with(F.tolist())
    best = brute_force_best(F, budgets, lo, hi)
    policy = make_policy("optimal", min_load=lo, max_load=hi)
    if best is None:
        with pytest.raises(InfeasibleAssignmentError):
            policy.assign(CLIENTS, dict(zip(CLIENTS, budgets)), state, rng())
        return
    out = policy.assign(CLIENTS, dict(zip(CLIENTS, budgets)), state, rng())
    loads = expert_loads(out, 3)
    assert np.all(loads >= lo) and np.all(loads <= hi)
    assert [len(out[c]) for c in CLIENTS] == budgets
    assert total_fitness(out, state) == pytest.approx(best[0], abs=1e-9)


def test_optimal_infeasible_bounds_raise_or_relax() -> None:
    # 5 slots cannot give each of 3 experts 2 clients
    state = state_with(OPT_F)
    with pytest.raises(InfeasibleAssignmentError, match="relax"):
        make_policy("optimal", min_load=2).assign(CLIENTS, OPT_BUDGETS, state, rng())
    policy = make_policy("optimal", min_load=2, max_load=2, on_infeasible="relax")
    out = policy.assign(CLIENTS, OPT_BUDGETS, state, rng())
    assert policy.last_bounds == (0, 2)
    assert expert_loads(out, 3).max() <= 2


# ------------------------------------------------------------------------ deadline-aware
# 1 GFLOP/s, 1 MB/s each way, 0.5 s latency; 1 MB shared + 0.5 MB per expert;
# 1 GFLOP shared + 2 GFLOP per expert:  time(k) = 0.5 + 2*(1 + 0.5k) + 1 + 2k = 3.5 + 3k.
SLOW = CapacityEstimate(flops_per_s=1e9, memory_bytes=1e12, up_bps=8e6, down_bps=8e6, latency_s=0.5)
FOUR = [[0.9, 0.5, 0.4, 0.3]]


def ctx_for(deadline_s: float, safety_margin: float, **kw: object) -> AssignContext:
    args: dict[str, object] = dict(
        estimates={"a": SLOW},
        deadline_s=deadline_s,
        safety_margin=safety_margin,
        bytes_shared=1e6,
        bytes_per_expert=5e5,
        flops_shared=1e9,
        flops_per_expert=2e9,
    )
    args.update(kw)
    return AssignContext(**args)  # type: ignore[arg-type]


def test_deadline_aware_stops_exactly_at_the_deadline() -> None:
    # Prepare: limit 19 * 0.5 = 9.5 s = time(2) exactly; time(3) = 12.5 s
    ctx = ctx_for(19.0, 0.5)
    state = state_with(FOUR, ["a"])
    assert ctx.finish_time("a", [0, 1], 4) == 9.5
    assert ctx.finish_time("a", [0, 1, 2], 4) == 12.5
    # Execute
    out = make_policy("deadline_aware").assign(["a"], {"a": 4}, state, rng(), ctx)
    # Assert: 2 experts, the two fittest; same as expert_budget with min_k=0
    assert out == {"a": [0, 1]}
    k = expert_budget(
        SLOW,
        deadline_s=19.0,
        safety_margin=0.5,
        bytes_shared=1e6,
        bytes_per_expert=5e5,
        flops_shared=1e9,
        flops_per_expert=2e9,
        mem_shared_bytes=0.0,
        mem_per_expert_bytes=0.0,
        num_experts=4,
        min_k=0,
    )
    assert k == 2


def test_deadline_aware_just_below_the_limit_gives_one_fewer() -> None:
    state = state_with(FOUR, ["a"])
    out = make_policy("deadline_aware").assign(
        ["a"], {"a": 4}, state, rng(), ctx_for(math.nextafter(19.0, 0.0), 0.5)
    )
    assert out == {"a": [0]}


def test_deadline_aware_min_k_when_even_one_expert_is_late() -> None:
    state = state_with(FOUR, ["a"])
    ctx = ctx_for(6.0, 0.0)  # time(1) = 6.5 s
    assert make_policy("deadline_aware").assign(["a"], {"a": 4}, state, rng(), ctx) == {"a": []}
    out = make_policy("deadline_aware", min_k=1).assign(["a"], {"a": 4}, state, rng(), ctx)
    assert out == {"a": [0]}


def test_deadline_aware_skips_costly_experts_for_cheaper_ones() -> None:
    # Prepare: expert 0 costs 4 GFLOP on this client, the others 1 GFLOP; limit 7.5 s
    # time({0}) = 8.5, time({1}) = 5.5, time({1,2}) = 7.5, time({1,2,3}) = 9.5
    ctx = ctx_for(15.0, 0.5, flops_per_expert={"a": np.array([4e9, 1e9, 1e9, 1e9])})
    state = state_with(FOUR, ["a"])
    # Execute
    out = make_policy("deadline_aware").assign(["a"], {"a": 4}, state, rng(), ctx)
    # Assert
    assert out == {"a": [1, 2]}


def test_deadline_aware_needs_ctx_with_the_client() -> None:
    state = state_with(FOUR, ["a"])
    with pytest.raises(ValueError, match="AssignContext"):
        make_policy("deadline_aware").assign(["a"], {"a": 1}, state, rng())
    state_b = state_with(FOUR, ["b"])
    with pytest.raises(ValueError, match="'b'"):
        make_policy("deadline_aware").assign(["b"], {"b": 1}, state_b, rng(), ctx_for(19.0, 0.5))


# --------------------------------------------------------------------- random, edge cases
def test_random_is_deterministic_per_seed_and_respects_budgets() -> None:
    state = AlignmentState(CLIENTS, 8)
    budgets = {"a": 3, "b": 0, "c": 20}
    policy = make_policy("random")
    one = policy.assign(CLIENTS, budgets, state, np.random.default_rng(42))
    two = policy.assign(CLIENTS, budgets, state, np.random.default_rng(42))
    assert one == two
    assert len(one["a"]) == 3 and one["b"] == [] and one["c"] == list(range(8))
    assert len(set(one["a"])) == 3 and one["a"] == sorted(one["a"])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_edge_cases_for_every_policy(name: str) -> None:
    state = state_with([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    ctx = AssignContext(estimates={c: SLOW for c in CLIENTS}, deadline_s=1e6, flops_per_expert=1.0)
    policy = make_policy(name)
    # empty clients -> {}
    assert policy.assign([], {}, state, rng(), ctx) == {}
    # budget > E clipped, budget 0 -> []
    out = policy.assign(CLIENTS, {"a": 5, "b": 0, "c": 1}, state, rng(), ctx)
    assert out["a"] == [0, 1, 2] and out["b"] == []
    assert len(out["c"]) == 1
    with pytest.raises(ValueError, match="no budget"):
        policy.assign(CLIENTS, {"a": 1}, state, rng(), ctx)
    with pytest.raises(ValueError, match="distinct"):
        policy.assign(["a", "a"], {"a": 1}, state, rng(), ctx)
    with pytest.raises(ValueError, match="integer >= 0"):
        policy.assign(["a"], {"a": -1}, state, rng(), ctx)
    with pytest.raises(KeyError, match="zzz"):
        policy.assign(["zzz"], {"zzz": 1}, state, rng(), ctx)


@pytest.mark.parametrize("name", ["greedy", "load_balanced", "optimal"])
def test_ties_go_to_the_lowest_expert_index_on_request(name: str) -> None:
    state = AlignmentState(["a"], 4, init_fitness=0.25)
    assert make_policy(name, tie_break="index").assign(["a"], {"a": 2}, state, rng()) == {"a": [0, 1]}


@pytest.mark.parametrize("name", ["greedy", "load_balanced", "optimal", "deadline_aware", "systems_aware"])
def test_initial_ties_are_broken_at_random_from_the_policy_stream(name: str) -> None:
    # all fitness 0 (round 0): the picks must not pile onto experts 0 and 1
    clients = [f"c{i}" for i in range(20)]
    state = AlignmentState(clients, 8)
    budgets = dict.fromkeys(clients, 2)
    est = CapacityEstimate(flops_per_s=1e9, memory_bytes=1e9, up_bps=1e7, down_bps=1e7, latency_s=0.0)
    ctx = AssignContext(dict.fromkeys(clients, est), deadline_s=10.0)
    out = make_policy(name).assign(clients, budgets, state, np.random.default_rng(1), ctx)
    assert len({e for es in out.values() for e in es}) >= 6
    again = make_policy(name).assign(clients, budgets, state, np.random.default_rng(1), ctx)
    other = make_policy(name).assign(clients, budgets, state, np.random.default_rng(2), ctx)
    assert again == out and other != out


# ---------------------------------------------------------------------- registry, metrics
def test_unknown_policy_name_lists_the_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        make_policy("best")
    for name in ("random", "greedy", "load_balanced", "optimal", "deadline_aware"):
        assert name in str(info.value)


def test_unknown_policy_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['alpha'\].*w_f"):
        make_policy("load_balanced", alpha=1.0)
    with pytest.raises(ValueError, match='"max_load"'):
        make_policy("optimal", min_load=2, max_load=1)


def test_expert_load_cv_by_hand() -> None:
    # loads [2, 1, 0]: mean 1, population std sqrt(2/3)
    assert expert_load_cv({"a": [0, 1], "b": [0]}, 3) == pytest.approx(math.sqrt(2 / 3))
    assert expert_load_cv({}, 3) == 0.0
