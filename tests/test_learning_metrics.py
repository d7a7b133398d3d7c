"""Metrics: accuracy / F1 / AUC with hand-made predictions, personalised accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsim.learning.metrics import _auc, evaluate, personalised_accuracy
from fedsim.learning.partition import ClientSplit


class Lookup(nn.Module):
    """Predicts class x[:, 0] with certainty (logits one-hot * 10)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.c = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * nn.functional.one_hot(x[:, 0].long(), self.c).float()


def test_evaluate_hand_computed() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [2.0]])
    y = torch.tensor([0, 1, 2, 1])  # last one wrong
    m = evaluate(Lookup(3), x, y, batch_size=3)
    assert m["accuracy"] == pytest.approx(0.75)
    # per-class F1: c0 = 1, c1 = 2/3 (P=1, R=1/2), c2 = 2/3 (P=1/2, R=1)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert 0.5 < m["auc"] <= 1.0


def test_auc_nan_safe_with_absent_class() -> None:
    x = torch.tensor([[0.0], [1.0]])
    m = evaluate(Lookup(4), x, torch.tensor([0, 1]))
    assert m["auc"] == pytest.approx(1.0)  # classes 2 and 3 absent: skipped
    m = evaluate(Lookup(4), x[:1], torch.tensor([0]))
    assert math.isnan(m["auc"])  # one class only: AUC undefined, no exception


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(2, 6), st.booleans())
def test_rank_auc_equals_scikit_learns_macro_of_roc_auc_score(seed: int, n: int, c: int, coarse: bool) -> None:
    """The vectorised AUC is scikit-learn's per-class ``roc_auc_score`` averaged over
    the classes where it is defined, ties (coarse probabilities) and absent classes included."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    p = rng.dirichlet(np.ones(c), n)
    if coarse:
        p = np.round(p, 1)  # many ties
    ref = [roc_auc_score((y == k).astype(int), p[:, k]) for k in range(c) if 0 < (y == k).sum() < n]
    got = _auc(y, p)
    if ref:
        assert got == pytest.approx(float(np.mean(ref)), abs=1e-12)
    else:
        assert math.isnan(got)


def test_personalised_accuracy_per_client() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [0.0]])
    y = torch.tensor([0, 1, 0, 0])
    splits = [
        ClientSplit(0, np.array([], dtype=np.int64), np.array([0, 1], dtype=np.int64)),
        ClientSplit(1, np.array([], dtype=np.int64), np.array([2, 3], dtype=np.int64)),
        ClientSplit(2, np.array([0], dtype=np.int64), np.array([], dtype=np.int64)),
    ]
    acc = personalised_accuracy(Lookup(3), x, y, splits)
    assert acc[0] == 1.0 and acc[1] == 0.5 and math.isnan(acc[2])


def test_personalised_accuracy_grouped_masks_equal_per_client_passes() -> None:
    """Clients grouped by gate mask (one batched pass per mask, the city-scale path) get
    the accuracies of one pass per client."""
    from fedsim.learning.models import MoEClassifier, MoEConfig
    from fedsim.learning.routing import client_expert_mask_matrix, client_expert_masks

    torch.manual_seed(0)
    model = MoEClassifier(MoEConfig(input_shape=(6,), num_classes=3, backbone="mlp", widths=(8,),
                                    feature_dim=8, num_experts=4, top_k=2, expert_hidden=4))
    gen = np.random.default_rng(0)
    x = torch.as_tensor(gen.standard_normal((400, 6)), dtype=torch.float32)
    y = torch.as_tensor(gen.integers(0, 3, 400))
    splits = [ClientSplit(i, np.arange(0), np.arange(i * 8, i * 8 + int(gen.integers(0, 9))))
              for i in range(50)]
    fitness = gen.standard_normal((50, 4))
    per_client = personalised_accuracy(model, x, y, splits, expert_masks=client_expert_masks(fitness, 2))
    grouped = personalised_accuracy(model, x, y, splits, expert_masks=client_expert_mask_matrix(fitness, 2))
    assert np.allclose(per_client, grouped, equal_nan=True)
    assert np.isnan(grouped).any() and np.isfinite(grouped).sum() > 30
