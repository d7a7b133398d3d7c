"""Capacity estimates and expert budgets, hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.alignment import CapacityEstimate, CapacityEstimator, expert_budget, predicted_time

# 1 GFLOP/s, 2000 B/s down, 1000 B/s up, 1 s latency.
EST = CapacityEstimate(flops_per_s=1e9, memory_bytes=1e12, up_bps=8e3, down_bps=16e3, latency_s=1.0)
SIZES = dict(bytes_shared=100.0, bytes_per_expert=100.0, flops_shared=1e9, flops_per_expert=1e9)


def budget(est: CapacityEstimate, **kw: float) -> int:
    args = dict(
        deadline_s=100.0,
        safety_margin=0.0,
        mem_shared_bytes=0.0,
        mem_per_expert_bytes=0.0,
        num_experts=8,
        **SIZES,
    )
    args.update(kw)
    return expert_budget(est, **args)  # type: ignore[arg-type]


def test_predicted_time_by_hand() -> None:
    # 1 + (100+100k)/2000 + (1+k) + (100+100k)/1000 = 2.15 + 1.15 k
    assert predicted_time(EST, 0, **SIZES) == pytest.approx(2.15)
    assert predicted_time(EST, 5, **SIZES) == pytest.approx(7.9)
    assert predicted_time(EST, 6, **SIZES) == pytest.approx(9.05)


def test_memory_bound_client() -> None:
    # Prepare: 1000 B of memory, 400 shared + 250 per expert -> 2 experts; time allows all 8
    est = CapacityEstimate(1e9, 1000.0, 8e3, 16e3, 1.0)
    # Execute / Assert
    assert budget(est, mem_shared_bytes=400.0, mem_per_expert_bytes=250.0) == 2


def test_time_bound_client() -> None:
    # limit 10 * (1 - 0.2) = 8 s; 2.15 + 1.15 k <= 8  ->  k = 5
    assert budget(EST, deadline_s=10.0, safety_margin=0.2) == 5


def test_budget_capped_by_num_experts() -> None:
    assert budget(EST, num_experts=3) == 3


def test_client_that_cannot_hold_one_expert_gets_zero() -> None:
    est = CapacityEstimate(1e9, 600.0, 8e3, 16e3, 1.0)
    assert budget(est, mem_shared_bytes=400.0, mem_per_expert_bytes=250.0) == 0


def test_fits_memory_but_not_time_obeys_min_k() -> None:
    # time(1) = 3.3 s > 2 s
    assert budget(EST, deadline_s=2.0) == 1
    assert budget(EST, deadline_s=2.0, min_k=0) == 0


def test_self_reported_is_truth_times_lognormal_noise() -> None:
    truth = CapacityEstimate(1e9, 4e9, 1e6, 2e6, 0.05)
    exact = CapacityEstimator("self_reported", noise_sigma=0.0)
    assert exact.self_report("a", truth, np.random.default_rng(0)) == truth
    noisy = CapacityEstimator("self_reported", noise_sigma=0.5)
    est = noisy.self_report("a", truth, np.random.default_rng(7))
    z = np.exp(0.5 * np.random.default_rng(7).standard_normal(5))
    assert est.flops_per_s == pytest.approx(1e9 * z[0])
    assert est.memory_bytes == pytest.approx(4e9 * z[1])
    assert est.up_bps == pytest.approx(1e6 * z[2])
    assert est.down_bps == pytest.approx(2e6 * z[3])
    assert est.latency_s == pytest.approx(0.05 * z[4])
    # observe() changes nothing in self-reported mode
    assert noisy.observe("a", download_s=1.0, download_bytes=1.0) == est


def test_learned_one_step_by_hand() -> None:
    # Prepare: prior 2e6 bit/s down; observed 125000 B in 1 s = 1e6 bit/s
    est = CapacityEstimator("learned", ewma=0.3)
    est.set_prior("a", CapacityEstimate(1e9, 4e9, 1e6, 2e6, 0.0))
    # Execute
    new = est.observe("a", download_s=1.0, download_bytes=125_000.0)
    # Assert: 0.7 * 2e6 + 0.3 * 1e6; unobserved phases unchanged
    assert new.down_bps == pytest.approx(1.7e6)
    assert new.up_bps == 1e6 and new.flops_per_s == 1e9


def test_learned_estimates_converge_to_true_rates() -> None:
    # Prepare: prior off by factors 4 and 1/3; truth 5 GFLOP/s, 20 Mbit/s down, 4 Mbit/s up
    true = CapacityEstimate(5e9, 4e9, 4e6, 20e6, 0.1)
    est = CapacityEstimator("learned", ewma=0.3)
    est.set_prior("a", CapacityEstimate(20e9, 4e9, 12e6, 5e6, 1.0))
    rng = np.random.default_rng(3)
    # Execute: 60 rounds of exact observations of varying size
    for _ in range(60):
        b = float(rng.uniform(1e5, 1e7))
        f = float(rng.uniform(1e9, 1e11))
        est.observe(
            "a",
            download_s=b * 8 / true.down_bps,
            download_bytes=b,
            compute_s=f / true.flops_per_s,
            flops=f,
            upload_s=b * 8 / true.up_bps,
            upload_bytes=b,
            latency_s=true.latency_s,
        )
    # Assert: error shrinks as 0.7^60 ~ 5e-10
    got = est.estimate("a")
    assert got.flops_per_s == pytest.approx(true.flops_per_s, rel=1e-8)
    assert got.down_bps == pytest.approx(true.down_bps, rel=1e-8)
    assert got.up_bps == pytest.approx(true.up_bps, rel=1e-8)
    assert got.latency_s == pytest.approx(true.latency_s, rel=1e-8)
    assert got.memory_bytes == 4e9


def test_learned_estimate_tracks_noisy_rates_in_the_mean() -> None:
    est = CapacityEstimator("learned", ewma=0.1)
    est.set_prior("a", CapacityEstimate(1e9, 1.0, 1e6, 1e6, 0.0))
    rng = np.random.default_rng(11)
    history = []
    for _ in range(400):
        rate = 8e6 * float(rng.uniform(0.8, 1.2))  # mean 8 Mbit/s
        history.append(est.observe("a", download_s=1.0, download_bytes=rate / 8).down_bps)
    assert np.mean(history[200:]) == pytest.approx(8e6, rel=0.03)


def test_invalid_inputs_name_the_rule() -> None:
    with pytest.raises(ValueError, match='"flops_per_s" must be finite and > 0'):
        CapacityEstimate(0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match='"mode"'):
        CapacityEstimator("oracle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"safety_margin"'):
        budget(EST, safety_margin=1.0)
    with pytest.raises(KeyError, match="'b'"):
        CapacityEstimator().estimate("b")


def test_noise_cv_sets_lognormal_sigma() -> None:
    # cv^2 = e - 1  ->  sigma = 1
    assert CapacityEstimator(noise_cv=np.sqrt(np.e - 1)).noise_sigma == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not both"):
        CapacityEstimator(noise_sigma=0.1, noise_cv=0.1)
