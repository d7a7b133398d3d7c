"""Aggregation: per-expert FedAvg and shared FedAvg with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.learning.aggregation import aggregate, is_finite_update
from fedsim.learning.training import Update


def _update(cid: int, state: dict[str, torch.Tensor], n: int, routed: list[int]) -> Update:
    e = len(routed)
    return Update(
        client_id=cid, round=1, experts=[], state=state, num_samples=n,
        samples_per_expert=np.array(routed), mean_gate_prob=np.full(e, 1.0 / e),
        loss_first=1.0, loss_last=0.5, flops=0.0, num_steps=1,
    )  # fmt: skip


def _global() -> dict[str, torch.Tensor]:
    return {
        "backbone.w": torch.zeros(2),
        "gate.weight": torch.zeros(2, 2),
        "experts.0.fc.weight": torch.zeros(2),
        "experts.1.fc.weight": torch.full((2,), 7.0),
    }


def test_fedavg_two_updates_hand_computed() -> None:
    # Prepare: client 1 has 30 samples (20 routed to expert 0), client 2 has 10 (5 routed).
    g = _global()
    u1 = _update(1, {"backbone.w": torch.tensor([1.0, 2.0]), "gate.weight": torch.ones(2, 2),
                     "experts.0.fc.weight": torch.tensor([4.0, 0.0])}, 30, [20, 0])  # fmt: skip
    u2 = _update(2, {"backbone.w": torch.tensor([5.0, 6.0]), "gate.weight": torch.full((2, 2), 3.0),
                     "experts.0.fc.weight": torch.tensor([-4.0, 8.0])}, 10, [5, 0])  # fmt: skip
    # Execute
    res = aggregate(g, [u1, u2], num_experts=2)
    # Assert: shared weights 30/40, 10/40; expert 0 weights 20/25, 5/25; expert 1 untouched
    assert torch.allclose(
        res.state["backbone.w"], torch.tensor([0.75 * 1 + 0.25 * 5, 0.75 * 2 + 0.25 * 6])
    )
    assert torch.allclose(res.state["gate.weight"], torch.full((2, 2), 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(
        res.state["experts.0.fc.weight"], torch.tensor([0.8 * 4 - 0.2 * 4, 0.2 * 8])
    )
    assert torch.equal(res.state["experts.1.fc.weight"], torch.full((2,), 7.0))
    assert res.rejected == []
    assert res.expert_weights[0] == {1: 0.8, 2: 0.2}
    assert torch.equal(g["backbone.w"], torch.zeros(2))  # global state not mutated


def test_expert_weights_fall_back_to_num_samples_when_nothing_routed() -> None:
    g = _global()
    u1 = _update(1, {"experts.1.fc.weight": torch.tensor([1.0, 1.0])}, 30, [0, 0])
    u2 = _update(2, {"experts.1.fc.weight": torch.tensor([5.0, 5.0])}, 10, [0, 0])
    res = aggregate(g, [u1, u2], num_experts=2)
    assert torch.allclose(res.state["experts.1.fc.weight"], torch.full((2,), 0.75 * 1 + 0.25 * 5))
    assert torch.equal(res.state["backbone.w"], g["backbone.w"])  # nobody sent shared weights
    assert torch.equal(res.state["experts.0.fc.weight"], g["experts.0.fc.weight"])


def test_nan_and_inf_updates_rejected() -> None:
    g = _global()
    good = _update(1, {"backbone.w": torch.tensor([1.0, 2.0])}, 10, [1, 0])
    bad = _update(2, {"backbone.w": torch.tensor([float("nan"), 0.0])}, 1000, [1, 0])
    worse = _update(3, {"experts.0.fc.weight": torch.tensor([float("inf"), 0.0])}, 1000, [9, 0])
    assert is_finite_update(good) and not is_finite_update(bad) and not is_finite_update(worse)
    res = aggregate(g, [good, bad, worse], num_experts=2)
    assert res.rejected == [2, 3]
    assert torch.equal(res.state["backbone.w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(res.state["experts.0.fc.weight"], torch.zeros(2))
    assert all(torch.isfinite(v).all() for v in res.state.values())


def test_integer_buffers_are_averaged_and_rounded() -> None:
    g = {"backbone.bn.num_batches_tracked": torch.tensor(0, dtype=torch.int64)}
    u1 = _update(1, {"backbone.bn.num_batches_tracked": torch.tensor(10)}, 1, [0])
    u2 = _update(2, {"backbone.bn.num_batches_tracked": torch.tensor(20)}, 3, [0])
    res = aggregate(g, [u1, u2], num_experts=1)
    out = res.state["backbone.bn.num_batches_tracked"]
    assert out.dtype == torch.int64 and int(out) == 18  # round(0.25 * 10 + 0.75 * 20) = 17.5 -> 18


@settings(max_examples=30, deadline=None)
@given(
    ns=st.lists(st.integers(1, 100), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_property_average_is_convex_combination(ns: list[int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ups = [
        _update(
            i,
            {
                "backbone.w": torch.randn(2, generator=gen),
                "experts.0.fc.weight": torch.randn(2, generator=gen),
            },
            n,
            [n, 0],
        )
        for i, n in enumerate(ns)
    ]
    res = aggregate(_global(), ups, num_experts=2)
    for key in ("backbone.w", "experts.0.fc.weight"):
        stack = torch.stack([u.state[key] for u in ups])
        assert (res.state[key] >= stack.min(0).values - 1e-6).all()
        assert (res.state[key] <= stack.max(0).values + 1e-6).all()
    same = aggregate(_global(), [ups[0], _update(9, ups[0].state, 3, [3, 0])], num_experts=2)
    assert torch.allclose(same.state["backbone.w"], ups[0].state["backbone.w"])
