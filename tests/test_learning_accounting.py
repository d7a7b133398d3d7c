"""FLOP, byte and memory accounting against hand-computed and measured values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fedsim.learning.accounting import (
    TRAIN_FLOPS_FACTOR,
    flops_per_sample,
    payload_bytes,
    state_bytes,
    training_memory_bytes,
)
from fedsim.learning.models import MoEClassifier, MoEConfig, expert_keys, shared_keys


def test_linear_flops_hand_computed() -> None:
    layer = nn.Linear(10, 5)
    # 2 * in * out multiply-adds + out bias additions
    assert flops_per_sample(layer, (10,), train=False) == 2 * 10 * 5 + 5
    assert flops_per_sample(layer, (10,), train=True) == TRAIN_FLOPS_FACTOR * 105
    assert flops_per_sample(nn.Linear(10, 5, bias=False), (10,), train=False) == 100


def test_conv2d_flops_hand_computed() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=0, bias=False)
    h_out = w_out = 8 - 3 + 1
    assert flops_per_sample(conv, (3, 8, 8), train=False) == 2 * 3 * 3 * 3 * h_out * w_out * 8
    grouped = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2)
    expected = 2 * (4 // 2) * 9 * 6 * 6 * 8 + 8 * 6 * 6
    assert flops_per_sample(grouped, (4, 6, 6), train=False) == expected


def test_sequential_flops_sum_of_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert flops_per_sample(model, (4,), train=False) == (2 * 4 * 3 + 3) + 3 + (2 * 3 * 2 + 2)


def test_moe_flops_grow_by_one_expert_each() -> None:
    cfg = MoEConfig(
        input_shape=(16,),
        num_classes=3,
        widths=(8,),
        feature_dim=6,
        num_experts=4,
        top_k=2,
        expert_hidden=5,
    )
    model = MoEClassifier(cfg)
    f1 = flops_per_sample(model, (16,), experts_active=1, train=False)
    f2 = flops_per_sample(model, (16,), experts_active=2, train=False)
    f3 = flops_per_sample(model, (16,), experts_active=3, train=False)
    expert = (2 * 6 * 5 + 5) + 5 + (2 * 5 * 3 + 3)  # fc1, relu, fc2
    combine = 2 * 3  # one more weighted sum of 3 logits
    assert f2 - f1 == pytest.approx(expert + combine)
    assert f3 - f2 == pytest.approx(expert + combine)
    backbone_gate = (2 * 16 * 8 + 8) + 8 + (2 * 8 * 6 + 6) + 6 + (2 * 6 * 4 + 4)
    assert f1 > backbone_gate
    assert flops_per_sample(model, (16,)) == pytest.approx(TRAIN_FLOPS_FACTOR * f2)  # top_k default


def test_state_and_payload_bytes() -> None:
    cfg = MoEConfig(
        input_shape=(16,), num_classes=3, widths=(8,), feature_dim=6, num_experts=4, expert_hidden=5
    )
    model = MoEClassifier(cfg)
    state = model.state_dict()
    assert state_bytes(state) == 4 * sum(p.numel() for p in model.parameters())
    shared = state_bytes(state, shared_keys(state))
    one_expert = 4 * (6 * 5 + 5 + 5 * 3 + 3)
    assert state_bytes(state, expert_keys(state, 2)) == one_expert
    assert payload_bytes(model, [0, 3]) == shared + 2 * one_expert
    assert payload_bytes(state, []) == shared


def _measured_peak_bytes(
    build, batch: int, shape: tuple[int, ...], optimizer: str
) -> tuple[int, nn.Module]:
    """Peak bytes held by the CPU allocator during a real training step.

    Honest measurement: torch's CPU allocations are invisible to tracemalloc and
    RSS is polluted by the allocator's caching and by the Python heap, so we use
    ``torch.profiler.profile(profile_memory=True)``, which records every c10 CPU
    allocation and free (``[memory]`` events, ``nbytes`` > 0 for an allocation,
    < 0 for a free) with a timestamp. The model, optimiser, input batch and two
    full training steps (so the optimiser state exists) all happen inside the
    profiler; the running sum of the events in time order is the bytes live at
    each instant, and its maximum is the peak.
    """

    def step() -> nn.Module:
        model = build()
        params = list(model.parameters())
        opt = (
            torch.optim.Adam(params)
            if optimizer == "adam"
            else torch.optim.SGD(params, lr=0.1, momentum=0.9)
        )
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((batch, *shape), generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        for _ in range(2):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    return int(np.cumsum([b for _, b in events]).max()), model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_memory_estimate_within_25pct_of_measured_peak(optimizer: str) -> None:
    def plain_cnn() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip

    cfg = MoEConfig(
        input_shape=(1, 28, 28),
        num_classes=10,
        backbone="cnn",
        widths=(16, 32),
        num_experts=4,
        top_k=2,
    )
    for build, experts in ((plain_cnn, None), (lambda: MoEClassifier(cfg), 4)):
        peak, model = _measured_peak_bytes(build, 64, (1, 28, 28), optimizer)
        est = training_memory_bytes(model, 64, (1, 28, 28), optimizer, experts, momentum=0.9)
        assert abs(est - peak) / peak < 0.25, (est, peak)


def test_training_memory_grows_with_experts_and_batch() -> None:
    cfg = MoEConfig(
        input_shape=(1, 8, 8), num_classes=10, backbone="cnn", widths=(8,), num_experts=8, top_k=2
    )
    model = MoEClassifier(cfg)
    m1 = training_memory_bytes(model, 32, (1, 8, 8), "sgd", 1)
    m4 = training_memory_bytes(model, 32, (1, 8, 8), "sgd", 4)
    assert m4 > m1
    assert training_memory_bytes(model, 64, (1, 8, 8), "sgd", 4) > m4
    assert training_memory_bytes(model, 32, (1, 8, 8), "adam", 4) > m4
