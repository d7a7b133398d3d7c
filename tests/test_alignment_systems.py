"""systems_aware / expert_loss fitness / domain skew / gate weights: hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.alignment import AlignmentState, AssignContext, CapacityEstimate, Feedback, make_policy
from fedsim.learning.models import MoEClassifier, MoEConfig, parameter_split
from fedsim.learning.partition import domain_transform, group_sizes, partition


def _est(up_bps: float) -> CapacityEstimate:
    return CapacityEstimate(flops_per_s=1e12, memory_bytes=1e12, up_bps=up_bps, down_bps=up_bps, latency_s=0.0)


def _ctx(ups: dict[str, float], needed: int | None = None, per_expert_bytes: float = 1e5) -> AssignContext:
    # shared 1e5 B and per_expert_bytes per expert, each way: t = 2 * 8 * B / rate
    return AssignContext(
        {c: _est(u) for c, u in ups.items()}, deadline_s=1.0, bytes_shared=1e5,
        bytes_per_expert=per_expert_bytes, needed=needed,
    )


def test_systems_aware_leaves_out_predicted_stragglers_and_keeps_the_fastest_needed() -> None:
    ups = {"fast": 1e8, "mid": 2e7, "ok": 1e7, "slow": 1e6}  # slow: 2*8*2e5/1e6 = 3.2 s > 1 s
    state = AlignmentState(list(ups), 4, init_fitness=0.5)
    pol = make_policy("systems_aware", w_t=0.0)
    out = pol.assign(list(ups), dict.fromkeys(ups, 1), state, np.random.default_rng(0), _ctx(ups))
    assert out["slow"] == [] and all(out[c] for c in ("fast", "mid", "ok"))
    out = pol.assign(list(ups), dict.fromkeys(ups, 1), state, np.random.default_rng(0), _ctx(ups, needed=2))
    assert [c for c in ups if out[c]] == ["fast", "mid"]


def test_systems_aware_adds_an_expert_only_when_it_is_worth_its_time() -> None:
    ups = {"a": 1e7}  # one expert: 2*8*2e5/1e7 = 0.32 s; two: 0.48 s, extra 0.16 s = 0.16 of T
    state = AlignmentState(["a"], 3, init_fitness=np.array([[1.0, 0.5, 0.0]]))
    cheap = make_policy("systems_aware", w_u=0.0, w_t=1.0).assign(
        ["a"], {"a": 2}, state, np.random.default_rng(0), _ctx(ups))
    assert cheap == {"a": [0, 1]}  # desirability 0.5 > 1.0 * 0.16
    dear = make_policy("systems_aware", w_u=0.0, w_t=4.0).assign(
        ["a"], {"a": 2}, state, np.random.default_rng(0), _ctx(ups))
    assert dear == {"a": [0]}  # 0.5 < 4.0 * 0.16
    with pytest.raises(ValueError, match="AssignContext"):
        make_policy("systems_aware").assign(["a"], {"a": 1}, state, np.random.default_rng(0))


def test_expert_loss_reward_is_expert_specific_and_idle_pairs_decay() -> None:
    s = AlignmentState(["a", "b"], 3, reward="expert_loss", fitness_ema=1.0, fitness_decay=0.5,
                       init_fitness=0.4)
    loss = np.array([0.1, 2.3, np.nan])
    s.update_fitness({"a": Feedback(trained_experts=[0, 1], expert_loss=loss)})
    F = s.fitness
    assert F[0, 0] == pytest.approx(np.exp(-0.1)) and F[0, 1] == pytest.approx(np.exp(-2.3))
    assert F[0, 2] == pytest.approx(0.2)  # a did not train expert 2: decays
    assert F[1].tolist() == pytest.approx([0.2, 0.2, 0.2])  # b sent nothing: decays
    with pytest.raises(ValueError, match="expert_loss"):
        s.update_fitness({"a": Feedback(trained_experts=[2], expert_loss=loss)})


def test_domain_skew_group_sizes_order_and_transforms() -> None:
    assert group_sizes(40, (0.40, 0.25, 0.15, 0.12, 0.08)).tolist() == [16, 10, 6, 5, 3]
    labels = np.arange(400) % 10
    order = list(range(39, -1, -1))  # the last client is the "most often online"
    sp = partition("domain_skew", labels, 40, np.random.default_rng(0), client_order=order)
    groups = np.array([s.group for s in sp])
    assert np.bincount(groups).tolist() == [16, 10, 6, 5, 3]
    assert groups[39] == 0 and groups[0] == 4
    assert len(np.unique(np.concatenate([s.all_idx for s in sp]))) == 400  # no sample shared
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert torch.equal(domain_transform(x, 0), x)
    p1 = domain_transform(x, 1, seed=3)
    assert torch.equal(p1, domain_transform(x, 1, seed=3)) and not torch.equal(p1, x)
    assert torch.equal(p1.sort(dim=-1).values.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(domain_transform(x, 1, "rotate"), torch.rot90(x, 1, (-2, -1)))
    with pytest.raises(ValueError, match="domain transform"):
        domain_transform(x, 1, "blur")


def test_softmax_gate_weights_give_the_gate_a_gradient_with_top1_and_a_mask() -> None:
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    mask = torch.tensor([True, False, False, False])
    grads = {}
    for mode in ("renormalised", "softmax"):
        cfg = MoEConfig(input_shape=(1, 8, 8), num_classes=10, widths=(), feature_dim=16,
                        num_experts=4, top_k=1, gate_weights=mode)
        from fedsim.learning.training import build_model

        m = build_model(cfg, seed=1)
        out = m(x, expert_mask=mask)
        torch.nn.functional.cross_entropy(out.logits, y).backward()
        grads[mode] = m.gate.weight.grad.abs().sum().item() if m.gate.weight.grad is not None else 0.0
        assert out.topk_idx.unique().tolist() == [0]
    assert grads["renormalised"] == 0.0  # one expert, weight renormalised to 1: no gradient
    assert grads["softmax"] > 0.0


def test_the_routing_target_raises_the_gate_probability_of_the_assigned_experts() -> None:
    """``route_loss`` = mean -log P(assigned experts) of the unmasked gate: by hand, 0 with
    no mask or every expert allowed; a few SGD steps on it alone move the gate's mass
    onto the mask, in both gate-weight modes."""
    from fedsim.learning.training import build_model

    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([False, False, True, True])
    for mode in ("renormalised", "softmax"):
        cfg = MoEConfig(input_shape=(1, 8, 8), num_classes=10, widths=(), feature_dim=16,
                        num_experts=4, top_k=1, gate_weights=mode, route_target_weight=1.0)
        m = build_model(cfg, seed=1)
        out = m(x, expert_mask=mask)
        p = torch.softmax(m.gate(m.features(x)), -1)
        assert torch.allclose(out.route_loss, -torch.log(p[:, 2:].sum(-1)).mean(), atol=1e-6)
        assert m(x).route_loss is None
        assert float(m(x, expert_mask=torch.ones(4, dtype=torch.bool)).route_loss) == pytest.approx(0.0, abs=1e-6)
        before = float(p[:, 2:].sum(-1).mean())
        opt = torch.optim.SGD(m.gate.parameters(), lr=0.5)
        for _ in range(20):
            opt.zero_grad()
            m(x, expert_mask=mask).route_loss.backward()
            opt.step()
        after = float(torch.softmax(m.gate(m.features(x)), -1)[:, 2:].sum(-1).mean())
        assert after > before + 0.2, (mode, before, after)
    with pytest.raises(ValueError, match="route_target_weight"):
        MoEConfig(input_shape=(4,), num_classes=2, route_target_weight=-1.0)


def test_thin_stem_puts_most_parameters_in_the_experts() -> None:
    cfg = MoEConfig(input_shape=(1, 28, 28), num_classes=10, widths=(), feature_dim=64,
                    num_experts=8, expert_hidden=128)
    split = parameter_split(MoEClassifier(cfg))
    assert split["experts"] / split["total"] >= 0.6
    deep = MoEConfig(input_shape=(1, 28, 28), num_classes=10, widths=(), feature_dim=64,
                     num_experts=8, expert_hidden=128, expert_layers=2)
    assert parameter_split(MoEClassifier(deep))["experts"] > split["experts"]
    # the CNN backbone too: three conv blocks (32x32 -> 4x4) and wider experts put >= 60% in them,
    # while a shallow stem keeps a large projection and the experts' share falls below half
    cnn = MoEConfig(input_shape=(3, 32, 32), num_classes=10, backbone="cnn", widths=(16, 32, 64),
                    feature_dim=64, num_experts=8, expert_hidden=256)
    cnn_split = parameter_split(MoEClassifier(cnn))
    assert cnn_split["experts"] / cnn_split["total"] >= 0.6
    shallow = MoEConfig(input_shape=(3, 32, 32), num_classes=10, backbone="cnn", widths=(16, 32),
                        feature_dim=64, num_experts=8, expert_hidden=128)
    assert parameter_split(MoEClassifier(shallow))["experts"] / parameter_split(MoEClassifier(shallow))["total"] < 0.5


def test_every_executor_reports_the_expert_loss_of_the_received_weights() -> None:
    from fedsim.learning.batched import BatchedExecutor
    from fedsim.learning.training import TrainConfig, TrainJob, init_state, train_local

    cfg = MoEConfig(input_shape=(8,), num_classes=3, widths=(16,), feature_dim=8, num_experts=4, top_k=2)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=gen), torch.arange(40) % 3
    jobs = [
        TrainJob(client_id=c, round=0, global_state=init_state(cfg, 0), model_config=cfg, experts=es, x=x, y=y,
                 train=TrainConfig(lr=0.1, batch_size=8), seed=c)
        for c, es in enumerate(([0, 2], [1], [1, 3]))
    ]
    for job, up in zip(jobs, BatchedExecutor().run(jobs)):
        ref = train_local(job).expert_loss
        assert np.isnan(up.expert_loss).tolist() == np.isnan(ref).tolist()
        assert np.allclose(up.expert_loss[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)
        assert sorted(np.flatnonzero(~np.isnan(ref)).tolist()) == sorted(job.experts)
