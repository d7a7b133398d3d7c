"""Partitioners: sizes, disjointness, determinism and the effect of tau and alpha."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.learning.partition import PARTITION_SCHEMES, label_histograms, partition

LABELS = np.repeat(np.arange(10), 500)  # 5000 samples, balanced


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check_disjoint(splits, n: int) -> None:
    every = np.concatenate([s.all_idx for s in splits])
    assert every.dtype == np.int64
    assert len(every) == len(np.unique(every))
    assert every.min() >= 0 and every.max() < n


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_every_scheme_disjoint_and_deterministic(scheme: str) -> None:
    a = partition(scheme, LABELS, 10, _rng(3))
    b = partition(scheme, LABELS, 10, _rng(3))
    assert len(a) == 10
    _check_disjoint(a, len(LABELS))
    for sa, sb in zip(a, b):
        assert np.array_equal(sa.train_idx, sb.train_idx) and np.array_equal(
            sa.test_idx, sb.test_idx
        )
    c = partition(scheme, LABELS, 10, _rng(4))
    assert any(not np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a, c))


def test_iid_sizes_and_test_fraction() -> None:
    splits = partition("iid", LABELS, 10, _rng(), test_fraction=0.2)
    assert [len(s.all_idx) for s in splits] == [500] * 10
    assert [len(s.test_idx) for s in splits] == [100] * 10
    assert all(s.num_samples == 400 for s in splits)
    hist = label_histograms(LABELS, splits, 10, which="all")
    assert hist.sum() == 5000 and hist.min() > 20  # every client sees every class


def test_noniid_tau_dominant_share() -> None:
    for tau in (0.1, 0.5, 0.9):
        splits = partition("noniid_tau", LABELS, 10, _rng(), tau=tau)
        hist = label_histograms(LABELS, splits, 10, which="all").astype(float)
        share = hist[np.arange(10), np.arange(10) % 10] / hist.sum(1)
        assert np.allclose(share, 1 - tau, atol=0.01)
        others = np.delete(hist[0], 0) / hist[0].sum()
        assert np.allclose(others, tau / 9, atol=0.01)  # rest uniform
        assert (hist > 0).all()  # every client holds all classes


def test_noniid_tau_dominant_class_wraps() -> None:
    splits = partition("noniid_tau", LABELS, 12, _rng(), tau=0.3)
    hist = label_histograms(LABELS, splits, 10, which="all")
    assert hist[10].argmax() == 0 and hist[11].argmax() == 1


def _mean_entropy(hist: np.ndarray) -> float:
    p = hist / hist.sum(1, keepdims=True).clip(min=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(h.mean())


def test_dirichlet_lower_alpha_more_skew() -> None:
    ent = {}
    for alpha in (0.05, 0.5, 100.0):
        vals = [
            _mean_entropy(
                label_histograms(
                    LABELS,
                    partition("dirichlet", LABELS, 10, _rng(s), alpha=alpha),
                    10,
                    which="all",
                )
            )
            for s in range(3)
        ]
        ent[alpha] = np.mean(vals)
    assert ent[0.05] < ent[0.5] < ent[100.0]
    assert ent[100.0] > 0.95 * np.log(10)  # almost uniform
    assert ent[0.05] < 0.5 * np.log(10)  # very skewed


def test_label_clusters_groups_share_label_subsets() -> None:
    splits = partition("label_clusters", LABELS, 6, _rng(), clusters=3)
    hist = label_histograms(LABELS, splits, 10, which="all")
    subsets = [set(np.flatnonzero(h)) for h in hist]
    assert subsets[0] == subsets[3] == {0, 1, 2, 3}
    assert subsets[1] == subsets[4] == {4, 5, 6}
    assert subsets[2] == subsets[5] == {7, 8, 9}
    assert hist.sum() == 5000


@pytest.mark.parametrize("dist", ["dirichlet", "lognormal"])
def test_quantity_skew_sizes_vary(dist: str) -> None:
    splits = partition(
        "quantity_skew", LABELS, 10, _rng(), alpha=0.5, size_dist=dist, sigma=1.5, min_size=5
    )
    sizes = np.array([len(s.all_idx) for s in splits])
    assert sizes.min() >= 5 and sizes.sum() <= 5000
    assert sizes.max() > 2 * sizes.min()


def test_bad_arguments_name_the_rule() -> None:
    with pytest.raises(ValueError, match='"alpha"'):
        partition("dirichlet", LABELS, 10, _rng(), alpha=0)
    with pytest.raises(ValueError, match='"tau"'):
        partition("noniid_tau", LABELS, 10, _rng(), tau=1.5)
    with pytest.raises(ValueError, match="unknown partition scheme"):
        partition("nope", LABELS, 10, _rng())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 400),
    k=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet", "noniid_tau", "quantity_skew"]),
    seed=st.integers(0, 2**16),
)
def test_property_partition_never_duplicates(n: int, k: int, scheme: str, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 5, size=n)
    splits = partition(scheme, labels, k, np.random.default_rng(seed), min_size=1)
    _check_disjoint(splits, n)
    if scheme in ("iid", "dirichlet"):
        assert sum(len(s.all_idx) for s in splits) == n
