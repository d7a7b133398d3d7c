"""Delays that always move the simulated clock.

Every process of fedsim computes its next event time either as an absolute
time from kept state (a period index and an offset, a sample index times the
interval) or as a drawn holding time. Both can fail in floating point: an
absolute time may land at or before ``now`` after rounding, and a holding
time smaller than half an ulp of ``now`` leaves ``now + d == now``. These
helpers turn such cases into the smallest delay that advances the clock, so a
run can never spin at one instant or hand SimPy a negative delay.
"""

from __future__ import annotations

import math

__all__ = ["block_index", "delay_to", "step"]


def step(now: float, delay_s: float) -> float:
    """``delay_s`` (s), raised where needed to the smallest delay with ``now + d > now``.

    Raises:
        ValueError: ``delay_s`` is NaN or infinite or ``now`` is not finite.
    """
    if not (math.isfinite(delay_s) and math.isfinite(now)):
        raise ValueError(f"delay must be finite, got {delay_s!r} at t={now!r}")
    if delay_s > 0.0 and now + delay_s > now:
        return delay_s
    return math.nextafter(now, math.inf) - now


def delay_to(now: float, t_s: float) -> float:
    """Delay (s) from ``now`` to the absolute time ``t_s``; never <= 0 and always moving
    ``now`` (an edge that rounding put at or before ``now`` is taken one ulp later).

    Raises:
        ValueError: ``t_s`` or ``now`` is not finite.
    """
    if not math.isfinite(t_s):
        raise ValueError(f"event time must be finite, got {t_s!r}")
    return step(now, t_s - now)


def block_index(t_s: float, period_s: float) -> int:
    """Index ``b`` of the period (coherence block, sampling slot...) holding time ``t_s``:
    the largest integer with ``b * period_s <= t_s`` in floating point, so the boundary
    ``(b + 1) * period_s`` of the next one is always ``> t_s`` and a loop that waits for it
    always advances the clock (no zero delay from rounding the quotient ``t_s / period_s``).

    Raises:
        ValueError: ``period_s`` is not > 0 or ``t_s`` is not finite.
    """
    if not (period_s > 0.0 and math.isfinite(period_s)):
        raise ValueError(f'"period_s" must be > 0, got {period_s!r}')
    if not math.isfinite(t_s):
        raise ValueError(f"time must be finite, got {t_s!r}")
    b = math.floor(t_s / period_s)
    while (b + 1) * period_s <= t_s:
        b += 1
    while b * period_s > t_s:
        b -= 1
    return b
