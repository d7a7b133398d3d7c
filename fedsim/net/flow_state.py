"""State of the flow model: links, flows, bundles of flows sharing a path, transfer results.

See :mod:`fedsim.net.flows` for the model (weighted max-min fairness kept
incrementally over bundles with a virtual-time counter each).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import simpy

__all__ = ["Link", "Flow", "Bundle", "TransferResult"]

_INF = math.inf


class Link:
    """One directed shared resource (a wired direction or a cell direction).

    Attributes:
        name: unique id (e.g. ``"edge0->cloud"``, ``"bs3/up"``).
        kind: ``"wired"``, ``"uplink"`` or ``"downlink"``.
        node: node the link belongs to (source node for wired, BS for cells).
        capacity: bit/s (wired) or Hz (cells).
        latency_s: propagation + per-hop latency of the link (s).
        flows: active flows on the link (stalled ones included) -> their coefficient ``a_lf``.
        bytes_carried: bytes that crossed the link, credited when a flow leaves its
            bundle (exact once the flows have ended).
        usage: current sum of ``a_lf * r_f`` (capacity units).
        load_bps: current sum of the rates of its flows (bit/s).
        usage_s: time integral of ``usage`` up to ``t_mark`` (capacity units x s);
            its increase over an interval / (capacity x interval) is the mean
            utilisation of the link over that interval.
        load_bits: time integral of ``load_bps`` up to ``t_mark`` (bits).
    """

    __slots__ = ("name", "kind", "node", "capacity", "latency_s", "flows", "bytes_carried",
                 "usage", "load_bps", "usage_s", "load_bits", "t_mark", "min_coeff", "bundles")

    def __init__(self, name: str, kind: str, node: str, capacity: float, latency_s: float = 0.0) -> None:
        if capacity < 0:
            raise ValueError(f'link {name!r}: "capacity" must be >= 0')
        self.name = name
        self.kind = kind
        self.node = node
        self.capacity = float(capacity)
        self.latency_s = float(latency_s)
        self.flows: dict[Flow, float] = {}
        self.bytes_carried = 0.0
        self.usage = 0.0
        self.load_bps = 0.0
        self.usage_s = 0.0
        self.load_bits = 0.0
        self.t_mark = 0.0
        #: smallest coefficient any flow can have here (1 wired; 1 / SE cap for a
        #: cell; 0 = unknown): bounds the link's total bit rate by capacity / min_coeff.
        self.min_coeff = 1.0 if kind == "wired" else 0.0
        #: bundles crossing the link -> their position on the bundle's path
        self.bundles: dict[Bundle, int] = {}

    @property
    def max_bps(self) -> float:
        """Upper bound of the total bit rate through the link."""
        return self.capacity / self.min_coeff if self.min_coeff > 0 else _INF

    def __repr__(self) -> str:
        return f"Link({self.name!r}, {self.kind}, capacity={self.capacity:g})"


class Bundle:
    """The active, non-stalled flows sharing one path (see the module docstring)."""

    __slots__ = ("links", "weight", "flows", "rate", "vt", "t_mark", "heap", "left", "version",
                 "seq", "scheduled", "updates")

    def __init__(self, links: tuple[Link, ...], now: float, seq: int) -> None:
        self.links = links
        self.weight = [0.0] * len(links)  # sum of the flows' coefficients, per link
        self.flows: dict[Flow, None] = {}
        self.rate = 0.0  # bit/s of each of its flows
        self.vt = 0.0  # bits moved by each flow since the bundle was created, up to t_mark
        self.t_mark = now
        self.heap: list[tuple[float, int, int, Flow]] = []  # (finish vt, seq, entry, flow)
        self.left = 0  # heap entries of flows that left
        self.version = 0  # schedule entries of older versions are superseded
        self.seq = seq
        self.scheduled = False  # whether it has a current schedule entry
        self.updates = 0  # incremental weight updates since the last exact rebuild

    def touch_weight(self) -> None:
        """Count one incremental weight update; rebuild the sums exactly now and then
        (amortised O(1)), so rounding drift cannot build up over a long run."""
        self.updates += 1
        if self.updates > 2 * len(self.flows) + 32:
            w = [0.0] * len(self.links)
            for f in self.flows:
                for i, a in enumerate(f.coeffs):
                    w[i] += a
            self.weight = w
            self.updates = 0

    def advance(self, now: float) -> None:
        dt = now - self.t_mark
        if dt > 0.0:
            self.vt += self.rate * dt
        self.t_mark = now

    def top(self) -> tuple[float, int, int, Flow] | None:
        """Earliest-finishing flow still in the bundle (drops entries of flows that left)."""
        heap = self.heap
        while heap:
            e = heap[0]
            f = e[3]
            if f.bundle is self and f.entry == e[2]:
                return e
            heapq.heappop(heap)
            self.left -= 1
        return None


class Flow:
    """One active transfer: ``size_bits`` along ``path`` with ``coeffs``."""

    __slots__ = ("seq", "path", "coeffs", "size_bits", "base_bits", "vt0", "bundle", "entry",
                 "stalled", "done", "active", "tag", "_env")

    def __init__(self, seq: int, path: list[Link], coeffs: list[float], size_bits: float,
                 env: simpy.Environment, done: simpy.Event, tag: Any = None) -> None:
        self.seq = seq
        self.path = path
        self.coeffs = coeffs
        self.size_bits = float(size_bits)
        self.base_bits = 0.0  # bits done when the flow entered its current bundle
        self.vt0 = 0.0  # the bundle's vt at that moment
        self.bundle: Bundle | None = None
        self.entry = 0
        #: True when some link of the path gives the flow no rate (outage).
        self.stalled = any(a == _INF for a in coeffs)
        self.done = done
        self.active = True
        self.tag = tag
        self._env = env

    @property
    def rate(self) -> float:
        """Current rate (bit/s); 0 when stalled or ended."""
        b = self.bundle
        return b.rate if b is not None else 0.0

    @property
    def done_bits(self) -> float:
        """Bits delivered so far (exact at any simulated time)."""
        b = self.bundle
        if b is None:
            return self.base_bits
        vt = b.vt + b.rate * (self._env.now - b.t_mark)
        return min(self.size_bits, self.base_bits + (vt - self.vt0))

    @property
    def remaining_bits(self) -> float:
        return self.size_bits - self.done_bits

    def __repr__(self) -> str:
        return f"Flow(#{self.seq}, {self.done_bits:g}/{self.size_bits:g} bit, rate={self.rate:g})"


@dataclass(frozen=True)
class TransferResult:
    """Outcome of a transfer process (returned, never raised).

    Attributes:
        requested_bytes: bytes asked for.
        delivered_bytes: bytes that arrived (== requested when completed).
        completed: whether the whole payload arrived.
        start_s: simulated time the transfer was started.
        end_s: simulated time it completed or was interrupted.
        path: node / link names along the route.
        cause: the interrupt cause when not completed (e.g. ``Dropout``), else None.
    """

    requested_bytes: float
    delivered_bytes: float
    completed: bool
    start_s: float
    end_s: float
    path: tuple[str, ...]
    cause: Any = None

    @property
    def seconds(self) -> float:
        """Duration in simulated seconds."""
        return self.end_s - self.start_s

    @property
    def lost_bytes(self) -> float:
        """Bytes requested but not delivered."""
        return self.requested_bytes - self.delivered_bytes
