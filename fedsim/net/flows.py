"""Flow-level transfers sharing links by (weighted) max-min fairness, kept incrementally.

A :class:`Link` has a capacity in its own unit: bit/s for a wired link, Hz
for a wireless cell direction. A :class:`Flow` crossing link ``l`` uses
``a_lf * r_f`` of it, where ``r_f`` is the flow's rate in bit/s and
``a_lf`` its usage coefficient (1 for wired links, 1 / spectral efficiency
for a cell). Rates are the max-min fair allocation under
``sum_f a_lf r_f <= C_l`` (progressive filling, Bertsekas & Gallager,
*Data Networks*, section 6.5.2); a flow with an infinite coefficient (a
client in outage) is *stalled*: rate 0, no usage.

Scaling (exact, no approximation):

- **Bundles.** Progressive filling grows every unfrozen flow at the same
  rate and freezes all flows of a saturating link together, so flows with
  the same path always get the same rate: they form one *bundle*, whose
  weight on link ``l`` is the sum of its flows' coefficients. The filling
  runs over bundles (at most one per path: per cell and direction in a
  city), not over flows, with a heap of link saturation levels:
  ``O(B log L)`` per recomputation for ``B`` bundles. A coefficient change
  (fading) or a flow joining / leaving a bundle is an ``O(path)`` update of
  the bundle's weights.
- **Virtual time per bundle.** All flows of a bundle progress at the
  bundle's rate, so the bundle integrates one counter ``vt`` (bits any of
  its flows has moved since the bundle was created). A flow that joins at
  ``vt0`` with ``R`` bits left finishes when ``vt`` reaches ``vt0 + R``; a
  bundle keeps its flows in a heap of those finish marks and has one entry
  in the schedule, so a rate change costs one schedule entry per bundle
  whatever the number of flows in it.
- **Only what a change can reach.** A recomputation covers the bundles
  connected (through shared links) to the bundles and links changed since
  the last one; everything else keeps its rates.
- **No stale entries.** The schedule is compacted whenever superseded
  entries outnumber live ones, and each bundle's flow heap whenever flows
  that left it outnumber those in it, so memory stays proportional to the
  active flows.

Byte accounting is exact: a flow's progress is materialised when it leaves
its bundle (completion, interruption, handover, outage) and credited to
every link of its path at that moment; a completed flow is credited
exactly its size. Link usage and load are recomputed exactly from the
bundles at each recomputation and integrated over time for sampling.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import simpy

from fedsim.net.flow_state import Bundle, Flow, Link, TransferResult
from fedsim.net.maxmin import maxmin_rates

__all__ = ["Link", "Flow", "FlowSystem", "TransferResult", "maxmin_rates"]

_INF = math.inf
#: relative slack under which flows of a bundle finishing at the same instant complete together
_FINISH_TOL = 1e-12


class FlowSystem:
    """All links and active flows of a run, with max-min rate allocation.

    Mutations (:meth:`start`, :meth:`stop`, :meth:`set_capacity`,
    :meth:`set_coeff`, :meth:`reroute`) mark bundles and links dirty; rates
    are recomputed at once unless inside ``with fs.batch():``, in which case
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
        self._bundles: dict[tuple[Link, ...], Bundle] = {}
        self._bseq = 0
        self._sched: list[tuple[float, int, int, Bundle]] = []  # (time, seq, version, bundle)
        self._live = 0  # schedule entries that are current
        self._next_wake = _INF
        self._dirty: dict[Bundle, None] = {}
        self._dirty_links: dict[Link, None] = {}
        self._batch_depth = 0
        self.recomputations = 0
        #: bundles re-rated over all recomputations (their sum is the cost of the filling)
        self.bundles_rerated = 0
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

    @property
    def active_flows(self) -> int:
        """Flows currently in a bundle (not stalled)."""
        return sum(len(b.flows) for b in self._bundles.values())

    @property
    def schedule_size(self) -> int:
        """Entries in the completion schedule (live + superseded, for memory checks)."""
        return len(self._sched)

    # -- bundles -------------------------------------------------------------
    def _enter(self, f: Flow) -> None:
        """Put an active flow with finite coefficients into the bundle of its path."""
        key = tuple(f.path)
        b = self._bundles.get(key)
        now = self.env.now
        if b is None:
            self._bseq += 1
            b = Bundle(key, now, self._bseq)
            self._bundles[key] = b
            for i, lk in enumerate(key):
                lk.bundles[b] = i
        else:
            b.advance(now)
        b.flows[f] = None
        w = b.weight
        for i, a in enumerate(f.coeffs):
            w[i] += a
        b.touch_weight()
        f.bundle = b
        f.vt0 = b.vt
        f.entry += 1
        heapq.heappush(b.heap, (b.vt + (f.size_bits - f.base_bits), f.seq, f.entry, f))
        self._dirty[b] = None

    def _leave(self, f: Flow, finished: bool = False) -> None:
        """Take ``f`` out of its bundle, materialising and crediting its progress."""
        b = f.bundle
        if b is None:
            return
        b.advance(self.env.now)
        done = f.size_bits if finished else min(f.size_bits, f.base_bits + (b.vt - f.vt0))
        seg = done - f.base_bits
        if seg > 0.0:
            by = seg / 8.0
            for lk in f.path:
                lk.bytes_carried += by
        f.base_bits = done
        f.bundle = None
        del b.flows[f]
        if not finished:
            b.left += 1  # its heap entry stays until popped or compacted
        for lk in b.links:
            self._dirty_links[lk] = None
        if not b.flows:
            del self._bundles[b.links]
            for lk in b.links:
                del lk.bundles[b]
            self._dirty.pop(b, None)
            if b.scheduled:
                b.scheduled = False
                self._live -= 1
            b.version += 1  # any schedule entry of it is superseded
            b.rate = 0.0
            return
        w = b.weight
        for i, a in enumerate(f.coeffs):
            w[i] -= a
        b.touch_weight()
        if b.left > len(b.flows) + 16:  # compact: drop the entries of flows that left
            b.heap = [e for e in b.heap if e[3].bundle is b and e[3].entry == e[2]]
            heapq.heapify(b.heap)
            b.left = 0
        self._dirty[b] = None

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
        f = Flow(self._seq, list(path), [float(a) for a in coeffs], 8.0 * nbytes, self.env,
                 self.env.event(), tag)
        if f.size_bits == 0.0 or not path:
            f.active = False
            f.base_bits = f.size_bits
            f.done.succeed(f)
            return f
        for lk, a in zip(f.path, f.coeffs):
            lk.flows[f] = a
            self.busy[lk] = None
            self._dirty_links[lk] = None
        if not f.stalled:
            self._enter(f)
        self._maybe_flush()
        return f

    def stop(self, f: Flow) -> float:
        """End an active flow now (interruption); returns bits delivered."""
        if f.active:
            self._detach(f)
            self._maybe_flush()
        return f.done_bits

    def set_capacity(self, lk: Link, capacity: float) -> None:
        """Change a link's capacity (bit/s or Hz)."""
        if capacity < 0:
            raise ValueError('"capacity" must be >= 0')
        if capacity == lk.capacity:
            return
        lk.capacity = float(capacity)
        self._dirty_links[lk] = None
        self._maybe_flush()

    def set_coeff(self, f: Flow, index: int, coeff: float) -> None:
        """Change flow ``f``'s coefficient on its ``index``-th link (``inf`` stalls it)."""
        old = f.coeffs[index]
        if not f.active or old == coeff:
            return
        coeff = float(coeff)
        b = f.bundle
        if b is not None and coeff != _INF:  # stays in its bundle: O(1)
            b.weight[index] += coeff - old
            f.coeffs[index] = coeff
            b.touch_weight()
            self._dirty[b] = None
        else:
            self._leave(f)
            f.coeffs[index] = coeff
            f.stalled = any(a == _INF for a in f.coeffs)
            if not f.stalled:
                self._enter(f)
        f.path[index].flows[f] = coeff
        self._dirty_links[f.path[index]] = None
        self._maybe_flush()

    def reroute(self, f: Flow, path: Sequence[Link], coeffs: Sequence[float]) -> None:
        """Move an active flow onto a new path (handover); progress is kept."""
        if not f.active:
            return
        self._leave(f)
        for lk in f.path:
            self._unlink(lk, f)
        f.path = list(path)
        f.coeffs = [float(a) for a in coeffs]
        for lk, a in zip(f.path, f.coeffs):
            lk.flows[f] = a
            self.busy[lk] = None
            self._dirty_links[lk] = None
        f.stalled = any(a == _INF for a in f.coeffs)
        if not f.stalled:
            self._enter(f)
        self._maybe_flush()

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
        self._dirty_links[lk] = None
        if not lk.flows:
            self.busy.pop(lk, None)

    def _detach(self, f: Flow, finished: bool = False) -> None:
        self._leave(f, finished)
        if finished:
            f.base_bits = f.size_bits
        for lk in f.path:
            self._unlink(lk, f)
        f.active = False

    def _component(self) -> tuple[list[Bundle], list[Link]]:
        """Bundles connected through shared links to what changed, and their links."""
        bundles: dict[Bundle, None] = {}
        links: dict[Link, None] = {}
        stack: list[Link] = list(self._dirty_links)
        for b in self._dirty:
            if b not in bundles:
                bundles[b] = None
                stack.extend(b.links)
        while stack:
            lk = stack.pop()
            if lk in links:
                continue
            links[lk] = None
            for b in lk.bundles:
                if b not in bundles:
                    bundles[b] = None
                    stack.extend(x for x in b.links if x not in links)
        return list(bundles), list(links)

    def _fill(self, bundles: list[Bundle], links: list[Link]) -> dict[Bundle, float]:
        """Progressive filling over bundles with a heap of link saturation levels."""
        resid: dict[Link, float] = {}
        weight: dict[Link, float] = {}
        count: dict[Link, int] = {}
        ver: dict[Link, int] = {}
        for lk in links:
            w = 0.0
            k = 0
            for b, i in lk.bundles.items():
                a = b.weight[i]
                if a > 0.0:
                    w += a
                    k += 1
            resid[lk] = lk.capacity
            weight[lk] = w
            count[lk] = k
            ver[lk] = 0
        heap = [(lk.capacity / weight[lk], n, 0, lk) for n, lk in enumerate(links) if count[lk]]
        heapq.heapify(heap)
        order = {lk: n for n, lk in enumerate(links)}
        rates: dict[Bundle, float] = {}
        while heap:
            t, _, v, lk = heapq.heappop(heap)
            if v != ver[lk] or count[lk] == 0:
                continue
            t = max(t, 0.0)
            count[lk] = 0
            for b, i in lk.bundles.items():
                if b in rates or b.weight[i] <= 0.0:
                    continue
                rates[b] = t
                for j, other in enumerate(b.links):
                    a = b.weight[j]
                    if a <= 0.0 or count[other] == 0:
                        continue
                    resid[other] -= a * t
                    weight[other] -= a
                    k = count[other] - 1
                    count[other] = k
                    ver[other] += 1
                    if k:
                        w = weight[other]
                        lvl = resid[other] / w if w > 0.0 else t
                        heapq.heappush(heap, (max(lvl, t), order[other], ver[other], other))
        for b in bundles:  # no constraining link (only zero coefficients): alone rate
            if b not in rates:
                rates[b] = min((lk.capacity / a for lk, a in zip(b.links, b.weight) if a > 0.0),
                               default=0.0)
        return rates

    def _flush(self) -> None:
        if not self._dirty and not self._dirty_links:
            return
        dirty = self._dirty
        bundles, links = self._component()
        self._dirty = {}
        self._dirty_links.clear()
        now = self.env.now
        if bundles:
            self.recomputations += 1
            self.bundles_rerated += len(bundles)
            rates = self._fill(bundles, links)
            for b in bundles:
                r = rates[b]
                if r != b.rate:
                    b.advance(now)
                    b.rate = r
                    self._schedule(b)
                elif b in dirty:
                    self._schedule(b)
        touched = self.touched
        for lk in links:  # exact usage and load from the bundles
            dt = now - lk.t_mark
            if dt > 0.0:
                lk.usage_s += lk.usage * dt
                lk.load_bits += lk.load_bps * dt
            lk.t_mark = now
            u = 0.0
            load = 0.0
            for b, i in lk.bundles.items():
                u += b.rate * b.weight[i]
                load += b.rate * len(b.flows)
            if u != lk.usage or load != lk.load_bps:
                lk.usage = u
                lk.load_bps = load
                touched[lk] = None

    def _schedule(self, b: Bundle) -> None:
        """(Re)place the bundle's one schedule entry: its earliest-finishing flow."""
        if b.scheduled:
            b.scheduled = False
            self._live -= 1
        b.version += 1
        e = b.top()
        if e is None or b.rate <= 0.0:
            return
        t = b.t_mark + (e[0] - b.vt) / b.rate
        b.scheduled = True
        self._live += 1
        heapq.heappush(self._sched, (t, b.seq, b.version, b))
        if len(self._sched) > 2 * self._live + 64:
            self._compact()
        if t < self._next_wake:
            self._wake_at(t)

    def _wake_at(self, t: float) -> None:
        """Schedule a wake for the bundle finishing at ``t``. The wake carries ``t``:
        ``now + (t - now)`` can round to just below ``t``, and a wake that compared
        the clock with ``t`` would leave ``_next_wake`` in the past (every flow stalls)."""
        self._next_wake = t
        ev = self.env.timeout(max(t - self.env.now, 0.0))
        ev.callbacks.append(lambda e, t=t: self._on_wake(e, t))

    def _compact(self) -> None:
        """Drop superseded schedule entries (keeps the schedule proportional to the bundles)."""
        self._sched = [e for e in self._sched if e[3].scheduled and e[3].version == e[2]]
        heapq.heapify(self._sched)

    def _on_wake(self, _ev: simpy.Event, target: float = -_INF) -> None:
        if self._dirty or self._dirty_links:
            # a change at this instant whose (deferred) recomputation has not run yet:
            # run it first, so every schedule entry read below is current
            self._flush()
        now = self.env.now
        due = max(now, target)
        if due >= self._next_wake:
            self._next_wake = _INF
        sched = self._sched
        finished: list[Flow] = []
        while sched and sched[0][0] <= due:
            _, _, version, b = heapq.heappop(sched)
            if not b.scheduled or version != b.version:
                continue
            b.scheduled = False
            self._live -= 1
            b.advance(now)
            e = b.top()
            if e is None:
                continue
            finished.append(e[3])  # the flow this entry was scheduled for
            heapq.heappop(b.heap)
            lim = b.vt + _FINISH_TOL * max(abs(b.vt), 1.0)
            while True:  # others of the bundle finishing at the same instant
                e = b.top()
                if e is None or e[0] > lim:
                    break
                finished.append(e[3])
                heapq.heappop(b.heap)
            self._dirty[b] = None  # reschedule even if its rate does not change
        if finished:
            self._batch_depth += 1
            for f in finished:
                self._detach(f, finished=True)
            self._batch_depth -= 1
            self._maybe_flush()
            for f in finished:
                f.done.succeed(f)
        while sched and (not sched[0][3].scheduled or sched[0][2] != sched[0][3].version):
            heapq.heappop(sched)
        if sched and sched[0][0] < self._next_wake:
            self._wake_at(sched[0][0])

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
