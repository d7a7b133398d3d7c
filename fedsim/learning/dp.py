"""The Gaussian mechanism's exact privacy curve and its calibration at any epsilon.

A release ``f(D) + N(0, sigma^2 I)`` of a function with L2 sensitivity ``s`` is
``(epsilon, delta)``-DP exactly when ``delta >= delta(epsilon)`` with

    ``delta(epsilon) = Phi(s / (2 sigma) - epsilon sigma / s)
                       - exp(epsilon) Phi(-s / (2 sigma) - epsilon sigma / s)``

(Balle and Wang 2018, "Improving the Gaussian Mechanism for Differential
Privacy: Analytical Calibration and Optimal Denoising", Theorem 8). The
classical calibration ``sigma = s sqrt(2 ln(1.25 / delta)) / epsilon`` (Dwork
and Roth, Theorem A.1) is proved only for ``epsilon < 1``: at ``epsilon = 20``,
``delta = 1e-5`` its true delta is 1.5e-3. :func:`calibrate_sigma` inverts the
exact curve instead (the analytic Gaussian mechanism), so the configured
``(epsilon, delta)`` holds per release at any epsilon.

Composition: ``T`` Gaussian releases with noise multipliers ``z_t = sigma_t /
s`` are together exactly one Gaussian mechanism with ``mu = sqrt(sum 1 / z_t^2)``
(Dong, Roth and Su 2019, "Gaussian Differential Privacy", Corollary 3.3), so
:func:`composed_epsilon` is the exact total (not a bound). Numbers are
computed in log space (``scipy.special.log_ndtr``), the roots by Brent's method
(``scipy.optimize.brentq``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.optimize import brentq
from scipy.special import log_ndtr

__all__ = ["gaussian_delta", "calibrate_sigma", "classical_sigma", "composed_epsilon"]


def _log_delta(epsilon: float, z: float) -> float:
    """``ln delta(epsilon)`` of a Gaussian mechanism with noise multiplier ``z = sigma / s``."""
    a = 1.0 / (2.0 * z) - epsilon * z
    b = -1.0 / (2.0 * z) - epsilon * z
    la, lb = float(log_ndtr(a)), float(log_ndtr(b))
    return la + math.log1p(-math.exp(epsilon + lb - la))


def _check(epsilon: float, delta: float | None = None) -> None:
    if not epsilon > 0 or (delta is not None and not 0.0 < delta < 1.0):
        raise ValueError('"epsilon" must be > 0 and "delta" in (0, 1)')


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Exact (smallest) delta of the Gaussian mechanism with noise std ``sigma``
    and L2 ``sensitivity`` at ``epsilon`` (Balle and Wang 2018, Theorem 8).

    Raises:
        ValueError: ``epsilon``, ``sigma`` or ``sensitivity`` is not > 0.
    """
    _check(epsilon)
    if not sigma > 0 or not sensitivity > 0:
        raise ValueError('"sigma" and "sensitivity" must be > 0')
    return math.exp(_log_delta(float(epsilon), float(sigma) / float(sensitivity)))


def classical_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` (Dwork and Roth,
    Theorem A.1; a valid ``(epsilon, delta)`` calibration only for ``epsilon < 1``)."""
    _check(epsilon, delta)
    return float(sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)


def calibrate_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise std that makes the Gaussian mechanism ``(epsilon, delta)``-DP
    for L2 ``sensitivity`` (the analytic Gaussian mechanism, Balle and Wang
    2018, Algorithm 1, solved by root finding on ``ln delta(sigma)``, which
    decreases in ``sigma``). ``sensitivity == 0`` gives 0.

    Raises:
        ValueError: ``epsilon <= 0``, ``delta`` outside (0, 1) or ``sensitivity < 0``.
    """
    _check(epsilon, delta)
    if sensitivity < 0:
        raise ValueError('"sensitivity" must be >= 0')
    if sensitivity == 0:
        return 0.0
    target = math.log(delta)
    hi = max(10.0, 10.0 * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)
    lo = 1e-4
    while _log_delta(epsilon, lo) < target:  # a huge epsilon: even tiny noise is enough
        lo /= 10.0
    ln_z = brentq(lambda t: _log_delta(epsilon, math.exp(t)) - target, math.log(lo), math.log(hi), xtol=1e-14, rtol=1e-15)
    return float(sensitivity * math.exp(ln_z))


def composed_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """Exact epsilon at ``delta`` of the composition of Gaussian releases with
    these noise multipliers ``sigma_t / s_t`` (Dong, Roth and Su 2019,
    Corollary 3.3: one Gaussian with ``mu = sqrt(sum 1 / z_t^2)``); 0 with none.

    Raises:
        ValueError: ``delta`` outside (0, 1) or a multiplier not > 0.
    """
    _check(1.0, delta)
    if not noise_multipliers:
        return 0.0
    if min(noise_multipliers) <= 0:
        raise ValueError('"noise_multipliers" must be > 0')
    z = 1.0 / math.sqrt(sum(1.0 / (m * m) for m in noise_multipliers))
    target = math.log(delta)
    if _log_delta(0.0 + 1e-12, z) <= target:
        return 0.0
    hi = 1.0
    while _log_delta(hi, z) > target:
        hi *= 2.0
    return float(brentq(lambda e: _log_delta(e, z) - target, 1e-12, hi, xtol=1e-12, rtol=1e-12))
