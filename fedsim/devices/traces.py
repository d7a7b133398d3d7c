"""Availability traces and FedScale trace formats.

FedScale's availability trace (``client_behave_trace``) is a pickled dict
``client_id -> {"active": [...], "inactive": [...], "finish_time": T, ...}``:
the k-th online interval is ``[active[k], inactive[k]]`` seconds, and the
whole pattern repeats with period ``finish_time``.

FedScale's device capacity file (``client_device_capacity``) is a pickled
dict ``client_id -> {"computation": ms per sample, "communication": kbit/s}``.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AvailabilityTrace",
    "DeviceCapacity",
    "availability_from_fedscale",
    "capacity_from_fedscale",
    "load_fedscale_availability",
    "load_fedscale_capacity",
]

#: whole periods without a state change after which a trace's changes are taken to be
#: merged for good by the float clock (AvailabilityTrace.timeline)
_MERGED_PERIODS = 64


@dataclass(frozen=True)
class AvailabilityTrace:
    """Online intervals ``[active[k], inactive[k]]`` (s) repeating every ``finish_time_s``.

    Intervals are clipped to ``[0, finish_time_s]`` (what lies beyond the period
    is never reached), touching intervals merge, and an interval that ends at
    the period's end continues into one that starts at 0 (no toggle at the
    wrap). The resulting per-period toggle list is kept as offsets; the edge
    times of the ``c``-th period are ``c * finish_time_s + offset``, stepped
    through from kept state (period and toggle index) by :meth:`timeline`, so a
    device never recomputes its phase from the absolute clock (which, once the
    period wraps, lands a few ulps before an edge and stops the clock).
    """

    active_s: tuple[float, ...]
    inactive_s: tuple[float, ...]
    finish_time_s: float

    def __post_init__(self) -> None:
        if len(self.active_s) != len(self.inactive_s):
            raise ValueError('"active" and "inactive" must have the same length')
        if not (self.finish_time_s > 0 and math.isfinite(self.finish_time_s)):
            raise ValueError('"finish_time" must be > 0 and finite')
        prev = -math.inf
        for a, b in zip(self.active_s, self.inactive_s):
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError("trace times must be finite")
            if not (prev <= a <= b):
                raise ValueError("trace intervals must be sorted and non-overlapping")
            prev = b
        period = self.finish_time_s
        merged: list[list[float]] = []
        for a, b in zip(self.active_s, self.inactive_s):
            a, b = min(max(a, 0.0), period), min(max(b, 0.0), period)
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        offs: list[float] = []
        states: list[bool] = []
        if merged:
            start_on = merged[0][0] == 0.0
            end_on = merged[-1][1] == period
            if start_on != end_on:  # the state at offset 0 differs from the one just before the wrap
                offs.append(0.0)
                states.append(start_on)
            for a, b in merged:
                if a > 0.0:
                    offs.append(a)
                    states.append(True)
                if b < period:
                    offs.append(b)
                    states.append(False)
        object.__setattr__(self, "_offsets", tuple(offs))
        object.__setattr__(self, "_states", tuple(states))
        # state before the first toggle of a period = state at the end of the previous one
        object.__setattr__(self, "_wrap_state", bool(merged) and merged[-1][1] == period)

    @property
    def toggles(self) -> tuple[tuple[float, bool], ...]:
        """One period's state changes: ``(offset_s, online_after)``, offsets in ``[0, period)``."""
        return tuple(zip(self._offsets, self._states))  # type: ignore[attr-defined]

    def _edge(self, cycle: int, k: int) -> float:
        return cycle * self.finish_time_s + self._offsets[k]  # type: ignore[attr-defined]

    def timeline(self, t0_s: float) -> tuple[bool, Iterator[tuple[float, bool]]]:
        """The state at ``t0_s`` and a lazy iterator of the later state changes.

        The iterator yields ``(t_s, online)`` with ``t_s > t0_s`` strictly
        increasing and ``online`` alternating, generated on demand from a kept
        (period, toggle index) pair: the ``c``-th period's edges are
        ``c * finish_time_s + offset``. Edges that the float clock cannot
        separate (an interval shorter than an ulp of the time) are merged into
        one instant, and a merge that leaves the state unchanged yields nothing.
        The iterator is empty for a device that never changes state.
        """
        offs = self._offsets  # type: ignore[attr-defined]
        states = self._states  # type: ignore[attr-defined]
        if not offs:
            return self._wrap_state, iter(())  # type: ignore[attr-defined]
        n = len(offs)
        cycle = max(math.floor(t0_s / self.finish_time_s) - 1, 0) if t0_s > 0 else 0
        k = 0
        state = bool(self._wrap_state)  # type: ignore[attr-defined]
        if t0_s >= 0.0:
            # walk forward from kept state to the first edge after t0 (at most two periods)
            while self._edge(cycle, k) <= t0_s:
                state = states[k]
                k += 1
                if k == n:
                    k, cycle = 0, cycle + 1
        return state, self._changes(state, cycle, k, t0_s)

    def _changes(self, state: bool, cycle: int, k: int, last_t: float) -> Iterator[tuple[float, bool]]:
        offs = self._offsets  # type: ignore[attr-defined]
        states = self._states  # type: ignore[attr-defined]
        n = len(offs)
        idle = 0  # edges consumed since the last change
        # stop after _MERGED_PERIODS whole periods without a change: the float clock has merged
        # every interval. One period is not enough: near the clock's resolution a gap of an ulp
        # merges in some periods and not in others (c * period rounds either way)
        while idle <= n * _MERGED_PERIODS:
            t = self._edge(cycle, k)
            s = states[k]
            k += 1
            idle += 1
            if k == n:
                k, cycle = 0, cycle + 1
            # edges the float clock cannot separate from ``t`` happen at the same instant
            while self._edge(cycle, k) <= t:
                s = states[k]
                k += 1
                idle += 1
                if k == n:
                    k, cycle = 0, cycle + 1
            if s == state or t <= last_t:
                continue
            state = s
            last_t = t
            idle = 0
            yield t, s

    def state_at(self, t_s: float) -> tuple[bool, float]:
        """(online at ``t_s``, seconds until the state next changes; inf if never)."""
        online, changes = self.timeline(t_s)
        nxt = next(changes, None)
        return online, (math.inf if nxt is None else nxt[0] - t_s)

    def is_active(self, t_s: float) -> bool:
        """Whether the device is online at ``t_s``."""
        return self.timeline(t_s)[0]


@dataclass(frozen=True)
class DeviceCapacity:
    """Per-device speeds from a FedScale capacity file (fedsim units)."""

    flops_per_s: float
    link_rate_bps: float


def availability_from_fedscale(raw: Mapping[Any, Mapping[str, Any]]) -> dict[str, AvailabilityTrace]:
    """Convert an already-unpickled FedScale availability dict (ids become ``str``)."""
    out: dict[str, AvailabilityTrace] = {}
    for cid, tr in raw.items():
        try:
            act = tuple(float(v) for v in tr["active"])
            ina = tuple(float(v) for v in tr["inactive"])
            fin = float(tr["finish_time"])
        except KeyError as e:
            raise ValueError(f"client {cid!r}: trace has no {e.args[0]!r}") from None
        out[str(cid)] = AvailabilityTrace(act, ina, fin)
    return out


def capacity_from_fedscale(raw: Mapping[Any, Mapping[str, Any]], flops_per_sample: float
                           ) -> dict[str, DeviceCapacity]:
    """Convert a FedScale capacity dict: ``flops_per_s = flops_per_sample / (ms / 1000)``,
    ``link_rate_bps = kbit/s * 1000``."""
    if not flops_per_sample > 0:
        raise ValueError('"flops_per_sample" must be > 0')
    out: dict[str, DeviceCapacity] = {}
    for cid, cap in raw.items():
        ms = float(cap["computation"])
        kbps = float(cap["communication"])
        if ms <= 0 or kbps <= 0:
            raise ValueError(f"client {cid!r}: capacities must be > 0")
        out[str(cid)] = DeviceCapacity(flops_per_sample / (ms / 1000.0), kbps * 1000.0)
    return out


def load_fedscale_availability(path: str | Path) -> dict[str, AvailabilityTrace]:
    """Read FedScale's pickled availability trace (trusted files only: pickle)."""
    with open(path, "rb") as fh:
        return availability_from_fedscale(pickle.load(fh))


def load_fedscale_capacity(path: str | Path, flops_per_sample: float) -> dict[str, DeviceCapacity]:
    """Read FedScale's pickled device-capacity file (trusted files only: pickle)."""
    with open(path, "rb") as fh:
        return capacity_from_fedscale(pickle.load(fh), flops_per_sample)
