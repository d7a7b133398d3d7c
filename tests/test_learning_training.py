"""Model and local training: shapes, masking, determinism, what the update holds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedsim.learning.datasets import load_dataset
from fedsim.learning.executors import SequentialExecutor
from fedsim.learning.models import MoEClassifier, MoEConfig, expert_keys, shared_keys
from fedsim.learning.training import TrainConfig, TrainJob, init_state, train_local

CFG = MoEConfig(
    input_shape=(8,),
    num_classes=3,
    widths=(16,),
    feature_dim=8,
    num_experts=4,
    top_k=2,
    expert_hidden=8,
    gate_noise_std=0.5,
)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("synthetic", rng=np.random.default_rng(0), num_classes=3, dim=8, n=300)
    return ds.x_train, ds.y_train


def _job(data, experts=(1, 3), seed=7, **train) -> TrainJob:
    x, y = data
    return TrainJob(
        client_id=5, round=2, global_state=init_state(CFG, 0), model_config=CFG, experts=list(experts),
        x=x, y=y, train=TrainConfig(**{"lr": 0.1, "local_epochs": 2, "batch_size": 16, **train}), seed=seed,
    )  # fmt: skip


def test_forward_shapes_and_mask() -> None:
    model = MoEClassifier(CFG)
    x = torch.randn(10, 8)
    out = model(x)
    assert (
        out.logits.shape == (10, 3)
        and out.gate_probs.shape == (10, 4)
        and out.topk_idx.shape == (10, 2)
    )
    assert torch.allclose(out.gate_probs.sum(1), torch.ones(10))
    mask = torch.tensor([False, True, False, False])
    out = model(x, expert_mask=mask)
    assert (out.topk_idx == 1).all() and out.topk_idx.shape == (10, 1)
    assert (out.gate_probs[:, [0, 2, 3]] == 0).all()
    # only expert 1 contributes: logits equal expert 1 alone (weight 1 after renormalising)
    h = model.features(x)
    assert torch.allclose(out.logits, model.experts[1](h), atol=1e-6)
    assert out.aux_loss.item() == pytest.approx(1.0)  # one allowed expert: E' f P = 1


def test_parameter_names_identify_owners() -> None:
    state = MoEClassifier(CFG).state_dict()
    assert all(k.startswith(("backbone.", "gate.", "experts.")) for k in state)
    assert expert_keys(state, 2) == [
        "experts.2.fc1.weight",
        "experts.2.fc1.bias",
        "experts.2.fc2.weight",
        "experts.2.fc2.bias",
    ]
    assert set(shared_keys(state)) == {k for k in state if not k.startswith("experts.")}


def test_cnn_and_resnet18_shapes() -> None:
    cnn = MoEClassifier(
        dataclasses.replace(CFG, input_shape=(1, 8, 8), backbone="cnn", widths=(4, 8))
    )
    assert cnn(torch.randn(3, 1, 8, 8)).logits.shape == (3, 3)
    res = MoEClassifier(
        dataclasses.replace(CFG, input_shape=(3, 32, 32), backbone="resnet18", num_classes=10)
    )
    assert res(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)
    n_backbone = sum(p.numel() for n, p in res.named_parameters() if n.startswith("backbone.0."))
    assert 11_000_000 < n_backbone < 11_300_000  # CIFAR ResNet-18: ~11.17 M parameters


def test_same_job_twice_identical_update(data) -> None:
    a, b = train_local(_job(data)), train_local(_job(data))
    assert a.state.keys() == b.state.keys()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert np.array_equal(a.samples_per_expert, b.samples_per_expert)
    assert np.array_equal(a.mean_gate_prob, b.mean_gate_prob)
    assert a.loss_first == b.loss_first and a.loss_last == b.loss_last
    c = train_local(_job(data, seed=8))
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_training_does_not_touch_global_rng_or_state(data) -> None:
    job = _job(data)
    before = {k: v.clone() for k, v in job.global_state.items()}
    rng_state = torch.get_rng_state()
    train_local(job)
    init_state(CFG, 3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(before[k], job.global_state[k]) for k in before)


def test_mask_trains_only_assigned_experts(data) -> None:
    job = _job(data, experts=(1, 3))
    up = train_local(job)
    assert up.experts == [1, 3]
    held = {k.split(".")[1] for k in up.state if k.startswith("experts.")}
    assert held == {"1", "3"}
    assert set(shared_keys(up.state)) == set(shared_keys(job.global_state))
    for k in expert_keys(job.global_state, 1) + expert_keys(job.global_state, 3) + ["gate.weight"]:
        assert not torch.equal(up.state[k], job.global_state[k])
    # routing only to assigned experts, every sample counted top_k times in the last epoch
    assert up.samples_per_expert[[0, 2]].sum() == 0
    assert up.samples_per_expert.sum() == up.num_samples * 2
    # feedback is unmasked: every expert has a probability, summing to 1
    assert up.mean_gate_prob.shape == (4,) and up.mean_gate_prob.sum() == pytest.approx(1.0)
    assert (up.mean_gate_prob > 0).all()
    assert up.num_steps == 2 * int(np.ceil(len(data[1]) / 16))
    assert up.loss_last < up.loss_first
    assert up.flops > 0


def test_frozen_shared_sends_only_experts(data) -> None:
    job = _job(data, experts=(0,), train_shared=False)
    up = train_local(job)
    assert set(up.state) == set(expert_keys(job.global_state, 0))


@pytest.mark.parametrize(
    "kw", [{"optimizer": "adam", "lr": 0.01}, {"fedprox_mu": 10.0}, {"momentum": 0.9}]
)
def test_optimizers_and_fedprox(data, kw) -> None:
    up = train_local(_job(data, **kw))
    assert np.isfinite(up.loss_last)


def test_fedprox_keeps_weights_closer(data) -> None:
    def dist(update):
        g = init_state(CFG, 0)
        return sum(float(((update.state[k] - g[k]) ** 2).sum()) for k in update.state)

    assert dist(train_local(_job(data, fedprox_mu=5.0))) < dist(train_local(_job(data)))


def test_flops_scale_with_epochs(data) -> None:
    a, b, c = (train_local(_job(data, local_epochs=e)) for e in (1, 2, 3))
    # flops = train/sample * n * epochs + feedback forward (backbone + gate) * n
    #         + expert-loss forward before training (backbone + gate + the 2 assigned experts) * n
    from fedsim.learning.accounting import flops_per_sample

    per_epoch = b.flops - a.flops
    assert per_epoch > 0 and c.flops - b.flops == pytest.approx(per_epoch)
    feedback = a.flops - per_epoch
    model, n = MoEClassifier(CFG), len(data[1])
    fwd = [flops_per_sample(model, CFG.input_shape, experts_active=k, train=False) for k in (0, 2)]
    assert feedback == pytest.approx((fwd[0] + fwd[1]) * n)


def test_sequential_executor_matches_train_local(data) -> None:
    jobs = [_job(data, experts=(e,), seed=e) for e in range(3)]
    ups = SequentialExecutor().run(jobs)
    assert [u.experts for u in ups] == [[0], [1], [2]]
    ref = train_local(jobs[1])
    assert all(torch.equal(ups[1].state[k], ref.state[k]) for k in ref.state)


def test_bad_jobs_rejected(data) -> None:
    with pytest.raises(ValueError, match='"experts"'):
        train_local(_job(data, experts=()))
    with pytest.raises(ValueError, match='"experts"'):
        train_local(_job(data, experts=(9,)))
    with pytest.raises(ValueError, match='"optimizer"'):
        TrainConfig(optimizer="rmsprop")


def test_init_state_is_pure_function_of_seed() -> None:
    a, b, c = init_state(CFG, 1), init_state(CFG, 1), init_state(CFG, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert set(a) == set(MoEClassifier(CFG).state_dict())


def test_cnn_backbone_runs_channels_last_with_the_plain_values_and_keys() -> None:
    """The ``cnn`` backbone converts its input to channels-last (speed only): its
    features and gradients equal those of an ``nn.Sequential`` of the same layers
    to float rounding, and the state-dict keys are unchanged."""
    from torch import nn

    from fedsim.learning.models import ChannelsLastSequential

    cfg = MoEConfig(input_shape=(3, 16, 16), num_classes=10, num_experts=2, backbone="cnn", widths=(8, 16))
    m = MoEClassifier(cfg)
    assert isinstance(m.backbone, ChannelsLastSequential)
    plain = nn.Sequential(*m.backbone)
    assert list(plain.state_dict()) == list(m.backbone.state_dict())
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = m.backbone(x)
    ga = torch.autograd.grad(a.sum(), list(m.backbone.parameters()))
    b = plain(x)
    gb = torch.autograd.grad(b.sum(), list(plain.parameters()))
    assert torch.allclose(a, b, atol=1e-5)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-4)
