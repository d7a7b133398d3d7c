"""FedSC's differential privacy keeps its promise: the noise of one release is
calibrated so that its exact delta at the configured epsilon is the configured
delta, at any epsilon (the analytic Gaussian mechanism), and the composed total
by a tight accountant sits at or below the RDP bound."""

from __future__ import annotations

import math

import pytest
from scipy import integrate, stats

from fedsim.learning.nmoe import dp_sigma


def _reference_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Exact delta of the Gaussian mechanism from its privacy-loss random variable
    ``L ~ N(mu^2 / 2, mu^2)``, ``mu = sensitivity / sigma``:
    ``delta = E[(1 - exp(epsilon - L))_+]`` by numerical integration (independent
    of the closed form the library uses)."""
    mu = sensitivity / sigma
    dist = stats.norm(mu * mu / 2.0, mu)

    def f(x: float) -> float:
        return -math.expm1(epsilon - x) * dist.pdf(x)

    lo, hi = epsilon, dist.mean() + 40.0 * mu
    val, _ = integrate.quad(f, lo, hi, epsabs=0.0, epsrel=1e-10, limit=500, points=[max(lo, dist.mean())])
    return float(val)


@pytest.mark.parametrize("epsilon", [0.5, 8.0, 20.0])
@pytest.mark.parametrize("sensitivity", [1.0, 1.0 / 400])
def test_delta_per_release_is_the_configured_delta(epsilon: float, sensitivity: float) -> None:
    """sigma from ``dp_sigma`` makes one release (epsilon, 1e-5)-DP with equality
    (the smallest valid noise). The classical sqrt(2 ln(1.25/delta)) / epsilon
    gives 1.6e-8 at 0.5 (too much noise), 8.0e-6 at 8, 1.5e-3 at 20 (the promise broken)."""
    delta = 1e-5
    sigma = dp_sigma(epsilon, delta, sensitivity)
    assert _reference_delta(epsilon, sigma, sensitivity) == pytest.approx(delta, rel=1e-4)
    # a little less noise breaks the promise: sigma is the smallest valid one
    assert _reference_delta(epsilon, 0.99 * sigma, sensitivity) > delta


def test_classical_calibration_breaks_the_promise_above_one() -> None:
    from fedsim.learning.dp import classical_sigma, gaussian_delta

    assert gaussian_delta(20.0, classical_sigma(20.0, 1e-5, 1.0), 1.0) == pytest.approx(1.527e-3, rel=1e-3)
    assert gaussian_delta(20.0, classical_sigma(20.0, 1e-5, 1.0), 1.0) == pytest.approx(_reference_delta(20.0, classical_sigma(20.0, 1e-5, 1.0), 1.0), rel=1e-4)


def test_calibration_rejects_bad_input() -> None:
    from fedsim.learning.dp import calibrate_sigma, composed_epsilon

    for args in [(0.0, 1e-5, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1e-5, -1.0)]:
        with pytest.raises(ValueError):
            calibrate_sigma(*args)
    assert calibrate_sigma(1.0, 1e-5, 0.0) == 0.0
    with pytest.raises(ValueError):
        composed_epsilon([1.0, 0.0], 1e-5)
    assert composed_epsilon([], 1e-5) == 0.0


def test_tight_total_is_exact_and_below_the_rdp_bound() -> None:
    """T releases at the (8, 1e-5) calibration: one release spends exactly 8; the
    PRV accountant (Opacus) matches the exact Gaussian-DP composition within its
    error and is below the RDP bound; totals grow sublinearly."""
    from fedsim.learning.nmoe_steps import PrivacyAccountant

    z = dp_sigma(8.0, 1e-5, 1.0)
    acc = PrivacyAccountant()
    acc.step(z)
    assert acc.epsilon_exact(1e-5) == pytest.approx(8.0, rel=1e-6)
    for _ in range(9):
        acc.step(z)
    exact, prv, rdp = acc.epsilon_exact(1e-5), acc.epsilon_prv(1e-5), acc.epsilon(1e-5)
    assert abs(prv - exact) < 0.05
    assert exact < rdp and prv < rdp
    assert 8.0 < exact < 80.0
    # exact composition: 10 releases of multiplier z = one release of multiplier z / sqrt(10)
    one = PrivacyAccountant()
    one.step(z / math.sqrt(10))
    assert one.epsilon_exact(1e-5) == pytest.approx(exact, rel=1e-9)
