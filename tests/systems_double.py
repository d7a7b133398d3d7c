"""A test double of the systems part (:class:`fedsim.parts.systems.Systems`) with hand-set times.

Each client has fixed phase durations (download, compute, upload, in simulated
seconds, whatever the bytes or FLOPs), offline intervals (a phase running when
one starts ends there with :class:`~fedsim.devices.causes.Dropout`, and the bytes
moved so far, pro rata), link outages (a transfer makes no progress inside one:
its end moves by the overlap) and a memory size (a compute job needing more
ends at once with :class:`~fedsim.devices.causes.OutOfMemory`). So a client
round's times can be computed by hand.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from fedsim.devices.causes import Dropout, OutOfMemory, interrupt_status


@dataclass
class Result:
    """What a transfer or compute process returns (the fields protocols read)."""

    delivered_bytes: float
    completed: bool
    cause: Any = None


Intervals = dict[str, list[tuple[float, float]]]


class TimedSystems:
    """Systems double: ``phases[c] = (download_s, compute_s, upload_s)``; ``offline[c]`` /
    ``outage[c]``: ``[(start_s, end_s), ...]``; ``memory[c]``: bytes (default unlimited)."""

    def __init__(
        self, env: simpy.Environment, server: str, clients: list[str], phases: dict[str, tuple[float, float, float]],
        offline: Intervals | None = None, outage: Intervals | None = None, memory: dict[str, float] | None = None,
    ) -> None:
        self.env, self.server, self.clients = env, server, list(clients)
        self.phases, self.offline, self.outage, self.memory = phases, offline or {}, outage or {}, memory or {}
        self.graph = None
        self.devices: dict[str, Any] = {}

    def is_online(self, c: str) -> bool:
        t = self.env.now
        return not any(a <= t < b for a, b in self.offline.get(c, []))

    def device_class(self, c: str) -> str:
        return "phone"

    def serving_bs(self, c: str) -> str:
        return "bs0"

    def speed_flops(self, c: str) -> float:
        return 1e9

    @staticmethod
    def cause_status(cause: Any) -> str:
        return interrupt_status(cause)

    def finish(self) -> None:
        """Nothing to write."""

    def _end_of(self, c: str, t0: float, d: float, stalls: bool) -> float:
        """When a phase of ``d`` seconds started at ``t0`` ends (an outage stalls a transfer)."""
        t = t0 + d
        if stalls:
            for a, b in sorted(self.outage.get(c, [])):
                if a < t and b > t0:  # stalled from max(a, t0) to b
                    t += b - max(a, t0)
        return t

    def _phase(self, c: str, d: float, nbytes: float, stalls: bool) -> Generator[Any, Any, Result]:
        t0 = float(self.env.now)
        end = self._end_of(c, t0, d, stalls)
        offs = [a for a, _b in self.offline.get(c, []) if a > t0]
        try:
            if offs and min(offs) < end:
                yield self.env.timeout(min(offs) - t0)
                return Result(nbytes * (self.env.now - t0) / (end - t0), False, Dropout(c, float(self.env.now)))
            yield self.env.timeout(end - t0)
        except simpy.Interrupt as intr:  # the round's deadline: the bytes moved so far
            return Result(nbytes * (self.env.now - t0) / (end - t0), False, intr.cause)
        return Result(nbytes, True)

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        down = src == self.server
        c = dst if down else src
        return self.env.process(self._phase(c, self.phases[c][0 if down else 2], nbytes, stalls=True))

    def compute(self, c: str, flops: float, r: int, memory_bytes: float, tag: str = "train") -> simpy.Process:
        have = self.memory.get(c, float("inf"))
        if memory_bytes > have:
            return self.env.process(self._oom(c, memory_bytes, have))
        return self.env.process(self._phase(c, self.phases[c][1], 0.0, stalls=False))

    def _oom(self, c: str, need: float, have: float) -> Generator[Any, Any, Result]:
        yield self.env.timeout(0)
        return Result(0.0, False, OutOfMemory(c, float(self.env.now), need, have))
