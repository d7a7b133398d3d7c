"""Flow-level transfers sharing links by (weighted) max-min fairness.

A :class:`Link` has a capacity in its own unit: bit/s for a wired link, Hz
for a wireless cell direction. A :class:`Flow` crossing link ``l`` uses
``a_lf * r_f`` of it, where ``r_f`` is the flow's rate in bit/s and
``a_lf`` its usage coefficient (1 for wired links, 1 / spectral efficiency
for a cell). Rates are the max-min fair allocation under
``sum_f a_lf r_f <= C_l`` computed by progressive filling; a flow with an
infinite coefficient (a client in outage) is *stalled*: rate 0, no usage.

Rates are recomputed whenever a flow starts or ends, a capacity or a
coefficient changes, but only over the flows coupled to the change: the
connected component of flows and *binding* links reachable from the
changed links. A link is non-binding (skipped) when the sum over its flows
of ``a_lf * ub_f`` stays below its capacity, ``ub_f`` being the rate the
flow could get alone on its tightest link; such a link can never saturate,
so removing it leaves the max-min allocation unchanged (exact, not an
approximation).

Byte accounting is exact: every flow's progress is integrated piecewise
(rate x time) and credited to every link of its path at the same moment;
a completed flow is credited exactly its size.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import simpy

__all__ = ["Link", "Flow", "FlowSystem", "TransferResult", "maxmin_rates"]

_INF = math.inf
_TIE = 1e-12


class Link:
    """One directed shared resource (a wired direction or a cell direction).

    Attributes:
        name: unique id (e.g. ``"edge0->cloud"``, ``"bs3/up"``).
        kind: ``"wired"``, ``"uplink"`` or ``"downlink"``.
        node: node the link belongs to (source node for wired, BS for cells).
        capacity: bit/s (wired) or Hz (cells).
        latency_s: propagation + per-hop latency of the link (s).
        flows: active flows on the link -> their coefficient ``a_lf``.
        bytes_carried: bytes that crossed the link so far (exact).
        usage: current sum of ``a_lf * r_f`` (capacity units).
        load_bps: current sum of the rates of its flows (bit/s).
        usage_s: time integral of ``usage`` up to ``t_mark`` (capacity units x s);
            its increase over an interval / (capacity x interval) is the mean
            utilisation of the link over that interval.
        load_bits: time integral of ``load_bps`` up to ``t_mark`` (bits).
    """

    __slots__ = ("name", "kind", "node", "capacity", "latency_s", "flows", "bytes_carried",
                 "usage", "load_bps", "usage_s", "load_bits", "t_mark", "min_coeff", "_direct", "_groups", "_demand", "_dirty", "_abs")

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
        # non-binding test: upper bound of sum_f a_lf r_f, from the flows' rate
        # bounds ub_f, grouped by each flow's narrowest link (whose max_bps caps
        # the group's total) where a_lf == 1.
        self._direct = 0.0
        self._groups: dict[Link, list[float]] = {}
        self._demand = 0.0
        self._dirty = False
        self._abs = 0.0  # sum of |terms| added since the last exact rebuild: bounds rounding drift

    @property
    def max_bps(self) -> float:
        """Upper bound of the total bit rate through the link."""
        return self.capacity / self.min_coeff if self.min_coeff > 0 else _INF

    def _rebuild(self) -> None:
        """Recompute the demand terms exactly from the current flows (drops rounding drift)."""
        self._direct = 0.0
        self._groups = {}
        for f, a in self.flows.items():
            ub = f.ub
            if ub == 0.0:
                continue
            g = f.group
            if a == 1.0 and g is not None and g is not self:
                ent = self._groups.get(g)
                if ent is None:
                    self._groups[g] = [ub, 1.0]
                else:
                    ent[0] += ub
                    ent[1] += 1.0
            else:
                self._direct += a * ub
        self._abs = self._direct + sum(t for t, _ in self._groups.values())

    def demand(self) -> float:
        """Upper bound of the link's usage over every feasible allocation bounded by ub_f."""
        if self._dirty:
            if self._abs > 1e3 * (self.capacity + self._demand) + 1e-300:
                self._rebuild()
            d = self._direct
            for g, (tot, _n) in self._groups.items():
                d += min(tot, g.max_bps)
            self._demand = d
            self._dirty = False
        return self._demand

    def binding(self) -> bool:
        """Whether the link can saturate given its flows' upper bounds."""
        if not self.flows:
            return False
        # conservative: a link is treated as binding when it might be (within the
        # rounding drift of the incremental sums), which keeps the allocation exact
        tol = 1e-9 * (self.capacity + self._abs)
        return self.capacity <= 0.0 or self.demand() >= self.capacity - tol

    def __repr__(self) -> str:
        return f"Link({self.name!r}, {self.kind}, capacity={self.capacity:g})"


class Flow:
    """One active transfer: ``size_bits`` along ``path`` with ``coeffs``."""

    __slots__ = ("seq", "path", "coeffs", "size_bits", "done_bits", "rate", "last_t", "version",
                 "ub", "group", "stalled", "done", "active", "tag")

    def __init__(self, seq: int, path: list[Link], coeffs: list[float], size_bits: float,
                 now: float, done: simpy.Event, tag: Any = None) -> None:
        self.seq = seq
        self.path = path
        self.coeffs = coeffs
        self.size_bits = float(size_bits)
        self.done_bits = 0.0
        self.rate = 0.0
        self.last_t = now
        self.version = 0
        self.ub = 0.0
        self.group: Link | None = None
        #: True when some link of the path gives the flow no rate (outage).
        self.stalled = any(a == _INF for a in coeffs)
        self.done = done
        self.active = True
        self.tag = tag

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


def maxmin_rates(
    flows: Sequence[Flow], links: Sequence[Link]
) -> dict[Flow, float]:
    """Weighted max-min fair rates of ``flows`` under the capacities of ``links``.

    Progressive filling: all unfrozen flows grow at the same rate ``t``;
    link ``l`` saturates at ``t_l = (C_l - frozen usage) / sum of a_lf`` over
    its unfrozen flows; the flows on the first saturating links freeze.
    Only ``links`` constrain (others are assumed non-binding). Stalled flows
    get 0.
    """
    rates: dict[Flow, float] = {}
    unfrozen: dict[Flow, None] = {}
    for f in flows:
        if f.stalled:
            rates[f] = 0.0
        else:
            unfrozen[f] = None
    link_set = {id(lk): lk for lk in links}
    residual = {id(lk): lk.capacity for lk in links}
    weight: dict[int, float] = {}
    count: dict[int, int] = {}
    for lk in links:
        w = 0.0
        k = 0
        for f, a in lk.flows.items():
            if f in unfrozen:
                w += a
                k += 1
        if k:
            weight[id(lk)] = w
            count[id(lk)] = k
    while unfrozen:
        best = _INF
        for key, w in weight.items():
            t = residual[key] / w
            if t < best:
                best = t
        if best == _INF:
            break
        best = max(best, 0.0)
        limit = best * (1.0 + _TIE) + 1e-300
        to_freeze: dict[Flow, None] = {}
        for key, w in weight.items():
            if residual[key] / w <= limit:
                for f in link_set[key].flows:
                    if f in unfrozen:
                        to_freeze[f] = None
        for f in to_freeze:
            del unfrozen[f]
            rates[f] = best
            for lk, a in zip(f.path, f.coeffs):
                key = id(lk)
                if key in weight:
                    residual[key] -= a * best
                    k = count[key] - 1
                    if k == 0:
                        del weight[key]
                        del count[key]
                    else:
                        count[key] = k
                        weight[key] -= a
    for f in unfrozen:  # on no constraining link (cannot happen by construction): alone rate
        rates[f] = min((lk.capacity / a for lk, a in zip(f.path, f.coeffs) if a > 0.0),
                       default=0.0)
    return rates


class FlowSystem:
    """All links and active flows of a run, with max-min rate allocation.

    Mutations (:meth:`start`, :meth:`stop`, :meth:`set_capacity`,
    :meth:`set_coeff`, :meth:`reroute`) mark links dirty; rates are
    recomputed at once unless inside ``with fs.batch():``, in which case
    one recomputation happens when the outermost batch exits. With
    ``defer=True`` the recomputation is postponed to a zero-delay event at
    the same simulated instant, so a burst of simultaneous starts (a round
    broadcast) costs one recomputation; rates read before it are stale,
    which never affects timing or byte counts since no time passes.
    Call :meth:`flush` to force it.
    """

    def __init__(self, env: simpy.Environment, *, defer: bool = False) -> None:
        self.env = env
        self.defer = defer
        self._flush_pending = False
        self.links: dict[str, Link] = {}
        self.busy: dict[Link, None] = {}  # links with at least one flow
        self._seq = 0
        self._heap: list[tuple[float, int, int, Flow]] = []
        self._next_wake = _INF
        self._dirty: dict[Link, None] = {}
        self._dirty_flows: dict[Flow, None] = {}
        self._batch_depth = 0
        self.recomputations = 0
        #: links whose usage changed since the last :meth:`take_touched` (for sampling)
        self.touched: dict[Link, None] = {}
        self.flows_started = 0

    # -- links ---------------------------------------------------------------
    def add_link(self, name: str, kind: str, node: str, capacity: float, latency_s: float = 0.0) -> Link:
        """Create and register a link (``name`` must be unique)."""
        if name in self.links:
            raise ValueError(f"link {name!r} already exists")
        lk = Link(name, kind, node, capacity, latency_s)
        self.links[name] = lk
        return lk

    # -- batching ------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer recomputation until the outermost batch exits."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._batch_depth == 0:
            if not self.defer:
                self._flush()
            elif not self._flush_pending:
                self._flush_pending = True
                ev = self.env.timeout(0.0)
                ev.callbacks.append(self._deferred_flush)

    def _deferred_flush(self, _ev: simpy.Event) -> None:
        self._flush_pending = False
        self._flush()

    def flush(self) -> None:
        """Recompute pending rates now."""
        self._flush()

    # -- upper bounds (non-binding test) -------------------------------------
    @staticmethod
    def _contrib(f: Flow, sign: float) -> None:
        """Add (+1, recomputing ub_f and the group) or remove (-1) f's demand terms."""
        if sign > 0:
            f.stalled = any(a == _INF for a in f.coeffs)
            ub = 0.0 if f.stalled else _INF
            group: Link | None = None
            gcap = _INF
            if not f.stalled:
                for lk, a in zip(f.path, f.coeffs):
                    if a > 0.0:
                        c = lk.capacity / a
                        if c < ub:
                            ub = c
                    m = lk.max_bps
                    if m < gcap:
                        gcap = m
                        group = lk
            f.ub = ub
            f.group = group
        ub = f.ub
        if ub == 0.0:
            return
        g = f.group
        for lk, a in zip(f.path, f.coeffs):
            lk._dirty = True
            lk._abs += a * ub
            if a == 1.0 and g is not None and g is not lk:
                ent = lk._groups.get(g)
                if ent is None:
                    lk._groups[g] = [ub, 1.0]
                else:
                    ent[0] += sign * ub
                    ent[1] += sign
                    if ent[1] <= 0.0:
                        del lk._groups[g]
            else:
                lk._direct += sign * a * ub

    # -- flows ---------------------------------------------------------------
    def start(self, path: Sequence[Link], coeffs: Sequence[float], nbytes: float, tag: Any = None) -> Flow:
        """Start a flow of ``nbytes`` along ``path``; ``flow.done`` fires on completion."""
        if nbytes < 0:
            raise ValueError('"nbytes" must be >= 0')
        if len(path) != len(coeffs):
            raise ValueError("path and coeffs must have the same length")
        if len({lk.name for lk in path}) != len(path):
            raise ValueError("a path must not repeat a link")
        self._seq += 1
        self.flows_started += 1
        f = Flow(self._seq, list(path), [float(a) for a in coeffs], 8.0 * nbytes, self.env.now,
                 self.env.event(), tag)
        if f.size_bits == 0.0 or not path:
            f.active = False
            f.done_bits = f.size_bits
            f.done.succeed(f)
            return f
        for lk, a in zip(f.path, f.coeffs):
            lk.flows[f] = a
            self.busy[lk] = None
            self._dirty[lk] = None
        self._contrib(f, 1.0)
        self._dirty_flows[f] = None
        self._maybe_flush()
        return f

    def stop(self, f: Flow) -> float:
        """End an active flow now (interruption); returns bits delivered."""
        if f.active:
            self._advance(f, self.env.now)
            self._detach(f)
            self._maybe_flush()
        return f.done_bits

    def set_capacity(self, lk: Link, capacity: float) -> None:
        """Change a link's capacity (bit/s or Hz)."""
        if capacity < 0:
            raise ValueError('"capacity" must be >= 0')
        if capacity == lk.capacity:
            return
        for f in lk.flows:
            self._contrib(f, -1.0)
        lk.capacity = float(capacity)
        for f in lk.flows:
            self._contrib(f, 1.0)
            for other in f.path:
                self._dirty[other] = None
        self._dirty[lk] = None
        self._maybe_flush()

    def set_coeff(self, f: Flow, index: int, coeff: float) -> None:
        """Change flow ``f``'s coefficient on its ``index``-th link (``inf`` stalls it)."""
        if not f.active or f.coeffs[index] == coeff:
            return
        self._advance(f, self.env.now)
        self._set_rate(f, 0.0)
        self._contrib(f, -1.0)
        f.coeffs[index] = float(coeff)
        f.path[index].flows[f] = float(coeff)
        self._contrib(f, 1.0)
        for lk in f.path:
            self._dirty[lk] = None
        self._dirty_flows[f] = None
        self._maybe_flush()

    def reroute(self, f: Flow, path: Sequence[Link], coeffs: Sequence[float]) -> None:
        """Move an active flow onto a new path (handover); progress is kept."""
        if not f.active:
            return
        self._advance(f, self.env.now)
        self._set_rate(f, 0.0)
        self._contrib(f, -1.0)
        for lk in f.path:
            self._unlink(lk, f)
        f.path = list(path)
        f.coeffs = [float(a) for a in coeffs]
        for lk, a in zip(f.path, f.coeffs):
            lk.flows[f] = a
            self.busy[lk] = None
            self._dirty[lk] = None
        self._contrib(f, 1.0)
        self._dirty_flows[f] = None
        self._maybe_flush()

    def settle(self) -> None:
        """Bring the bytes of every active flow (and ``bytes_carried`` of its links) up
        to now, e.g. at the end of a run; rates and schedule are unchanged."""
        now = self.env.now
        seen: dict[Flow, None] = {}
        for lk in self.busy:
            for f in lk.flows:
                if f not in seen:
                    seen[f] = None
                    self._advance(f, now)

    # -- internals -----------------------------------------------------------
    def mark(self, lk: Link) -> None:
        """Bring ``lk``'s usage and load integrals up to now."""
        now = self.env.now
        dt = now - lk.t_mark
        if dt > 0.0:
            lk.usage_s += lk.usage * dt
            lk.load_bits += lk.load_bps * dt
        lk.t_mark = now

    def take_touched(self) -> list[Link]:
        """Links whose usage changed since the last call (and clear the set)."""
        out = list(self.touched)
        self.touched.clear()
        return out

    def _unlink(self, lk: Link, f: Flow) -> None:
        del lk.flows[f]
        self._dirty[lk] = None
        if not lk.flows:
            self.mark(lk)
            self.touched[lk] = None
            lk.usage = 0.0
            lk.load_bps = 0.0
            lk._direct = 0.0
            lk._groups.clear()
            lk._demand = 0.0
            lk._dirty = False
            lk._abs = 0.0
            self.busy.pop(lk, None)

    def _detach(self, f: Flow) -> None:
        self._set_rate(f, 0.0)
        self._contrib(f, -1.0)
        for lk in f.path:
            self._unlink(lk, f)
        f.active = False
        f.version += 1
        self._dirty_flows.pop(f, None)

    def _advance(self, f: Flow, now: float) -> None:
        dt = now - f.last_t
        f.last_t = now
        if dt <= 0.0 or f.rate == 0.0:
            return
        bits = min(f.rate * dt, f.size_bits - f.done_bits)
        if bits <= 0.0:
            return
        f.done_bits += bits
        b = bits / 8.0
        for lk in f.path:
            lk.bytes_carried += b

    def _set_rate(self, f: Flow, rate: float) -> None:
        d = rate - f.rate
        if d == 0.0:
            return
        touched = self.touched
        now = self.env.now
        for lk, a in zip(f.path, f.coeffs):
            # self.mark(lk), inlined (hot path)
            dt = now - lk.t_mark
            if dt > 0.0:
                lk.usage_s += lk.usage * dt
                lk.load_bits += lk.load_bps * dt
                lk.t_mark = now
            touched[lk] = None
            if a != _INF:
                lk.usage += a * d
            lk.load_bps += d
        f.rate = rate

    def _component(self) -> tuple[list[Flow], list[Link]]:
        flows: dict[Flow, None] = {}
        links: dict[Link, None] = {}
        stack: list[Link] = [lk for lk in self._dirty if lk.binding()]
        for f in self._dirty_flows:
            if f.active and f not in flows:
                flows[f] = None
                stack.extend(lk for lk in f.path if lk.binding())
        self._dirty.clear()
        self._dirty_flows.clear()
        while stack:
            lk = stack.pop()
            if lk in links:
                continue
            links[lk] = None
            for f in lk.flows:
                if f not in flows:
                    flows[f] = None
                    for other in f.path:
                        if other not in links and other.binding():
                            stack.append(other)
        return list(flows), list(links)

    def _flush(self) -> None:
        if not self._dirty and not self._dirty_flows:
            return
        flows, links = self._component()
        if not flows:
            return
        self.recomputations += 1
        now = self.env.now
        rates = maxmin_rates(flows, links)
        for f in flows:
            r = rates[f]
            if r == f.rate:
                continue
            self._advance(f, now)
            self._set_rate(f, r)
            self._schedule(f)

    def _schedule(self, f: Flow) -> None:
        f.version += 1
        if f.rate <= 0.0:
            return
        t = f.last_t + (f.size_bits - f.done_bits) / f.rate
        heapq.heappush(self._heap, (t, f.seq, f.version, f))
        if t < self._next_wake:
            self._next_wake = t
            ev = self.env.timeout(max(t - self.env.now, 0.0))
            ev.callbacks.append(self._on_wake)

    def _on_wake(self, _ev: simpy.Event) -> None:
        now = self.env.now
        if now >= self._next_wake:
            self._next_wake = _INF
        heap = self._heap
        finished: list[Flow] = []
        while heap and heap[0][0] <= now:
            _, _, version, f = heapq.heappop(heap)
            if f.active and version == f.version:
                finished.append(f)
        if finished:
            self._batch_depth += 1
            for f in finished:
                self._advance(f, now)
                rest = f.size_bits - f.done_bits
                if rest > 0.0:
                    b = rest / 8.0
                    for lk in f.path:
                        lk.bytes_carried += b
                f.done_bits = f.size_bits
                self._detach(f)
            self._batch_depth -= 1
            self._maybe_flush()
            for f in finished:
                f.done.succeed(f)
        while heap and (not heap[0][3].active or heap[0][2] != heap[0][3].version):
            heapq.heappop(heap)
        if heap and heap[0][0] < self._next_wake:
            t = heap[0][0]
            self._next_wake = t
            ev = self.env.timeout(max(t - now, 0.0))
            ev.callbacks.append(self._on_wake)

    # -- the transfer process ------------------------------------------------
    def transfer(self, path: Sequence[Link], coeffs: Sequence[float], nbytes: float,
                 latency_s: float = 0.0, names: tuple[str, ...] = (), tag: Any = None
                 ) -> simpy.Process:
        """A process moving ``nbytes`` along ``path``; returns a :class:`TransferResult`.

        The latency (propagation + per hop) elapses first, then the flow runs.
        ``proc.interrupt(cause)`` ends the flow and makes the process return
        a result with ``completed=False`` and ``cause`` set. ``names``
        (default: the link names) becomes ``TransferResult.path``.
        """
        names = names or tuple(lk.name for lk in path)
        return self.env.process(self._transfer(list(path), list(coeffs), float(nbytes),
                                               float(latency_s), names, tag))

    def _transfer(self, path: list[Link], coeffs: list[float], nbytes: float, latency_s: float,
                  names: tuple[str, ...], tag: Any) -> Any:
        start = self.env.now
        flow: Flow | None = None
        try:
            if latency_s > 0.0:
                yield self.env.timeout(latency_s)
            flow = self.start(path, coeffs, nbytes, tag)
            yield flow.done
            return TransferResult(nbytes, nbytes, True, start, self.env.now, names)
        except simpy.Interrupt as intr:
            delivered = 0.0
            if flow is not None:
                delivered = self.stop(flow) / 8.0
            done = flow is not None and not flow.active and flow.done_bits >= flow.size_bits
            if done:
                delivered = nbytes
            return TransferResult(nbytes, delivered, done, start, self.env.now, names, intr.cause)
