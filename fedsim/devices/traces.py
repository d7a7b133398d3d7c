"""Availability traces and FedScale trace formats.

FedScale's availability trace (``client_behave_trace``) is a pickled dict
``client_id -> {"active": [...], "inactive": [...], "finish_time": T, ...}``:
the k-th online interval is ``[active[k], inactive[k]]`` seconds, and the
whole pattern repeats with period ``finish_time``.

FedScale's device capacity file (``client_device_capacity``) is a pickled
dict ``client_id -> {"computation": ms per sample, "communication": kbit/s}``.
"""

from __future__ import annotations

import bisect
import math
import pickle
from collections.abc import Mapping
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


@dataclass(frozen=True)
class AvailabilityTrace:
    """Online intervals ``[active[k], inactive[k]]`` (s) repeating every ``finish_time_s``."""

    active_s: tuple[float, ...]
    inactive_s: tuple[float, ...]
    finish_time_s: float

    def __post_init__(self) -> None:
        if len(self.active_s) != len(self.inactive_s):
            raise ValueError('"active" and "inactive" must have the same length')
        if not self.finish_time_s > 0:
            raise ValueError('"finish_time" must be > 0')
        prev = -math.inf
        for a, b in zip(self.active_s, self.inactive_s):
            if not (prev <= a <= b):
                raise ValueError("trace intervals must be sorted and non-overlapping")
            prev = b

    def state_at(self, t_s: float) -> tuple[bool, float]:
        """(online at ``t_s``, seconds until the state next changes; inf if never)."""
        if not self.active_s:
            return False, math.inf
        period = self.finish_time_s
        cycle = math.floor(t_s / period)
        x = t_s - cycle * period
        k = bisect.bisect_right(self.active_s, x) - 1
        if k >= 0 and x < self.inactive_s[k]:
            # at a period boundary the state is simply re-evaluated (no spurious toggle)
            return True, min(self.inactive_s[k], period) - x
        nxt = self.active_s[k + 1] if k + 1 < len(self.active_s) else self.active_s[0] + period
        return False, nxt - x

    def is_active(self, t_s: float) -> bool:
        """Whether the device is online at ``t_s``."""
        return self.state_at(t_s)[0]


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
