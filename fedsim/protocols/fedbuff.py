"""``protocol.fedmoe.aggregation: async | semi_async``: buffered asynchronous
aggregation (FedBuff, Nguyen et al., AISTATS 2022), per expert: two
aggregation modes (:class:`AsyncLoop`, :class:`SemiAsyncLoop`, registered in
:data:`fedsim.config.registry.AGGREGATION_MODES`) that drive a protocol through
the hooks of :class:`~fedsim.protocols.base.Protocol` only (``select`` with the
free slots, ``assign`` with the tasks in flight, ``client_process``,
``fold_stale`` / ``publish``, ``evaluate``, ``record_round_extra``,
``checkpoint``). The settings come from the protocol's section
(``fedbuff``, ``deadline_s``, ``clients_per_round``, ``over_selection``).

``async`` (FedBuff). At most ``C = fedbuff.concurrency`` clients train at
once. Whenever slots are free the server draws new clients (stream
``selection``) among the *eligible* ones: online, holding data, not training
and not waiting in the buffer; the alignment policy assigns their experts at
that dispatch (hook ``assign``), with the usage of experts already in flight
added to the usage it sees (each in-flight client adds its samples, split
evenly over its experts). Each client runs the sync round's client process
(``client_process`` / ``client_round``: download the *current* global model,
memory check, train, upload; dropout, OOM and availability traces end it as
in sync mode). A completed upload enters the buffer; a lost one frees its slot.
When ``K = fedbuff.buffer_size`` updates are buffered the server folds the
first K (arrival order, i.e. simulated-time order) into the model
(:func:`fedsim.learning.buffered.buffered_aggregate`), works
``server_compute_s`` (meanwhile freed slots are refilled at once with the
version still published, and arrivals are buffered), publishes the new
version, evaluates and writes one ``rounds`` row. A buffer whose oldest update
has waited ``deadline_s`` is folded in as it is (liveness: clients that keep
failing, or fewer clients than K, cannot stall the server). No deadline cuts a client in
async mode; a client still training when the run ends is not recorded.
When free slots find nobody eligible, the server looks again every
``min(deadline_s, 10)`` s (``idle_polls`` below).

``semi_async``. Rounds close every ``fedbuff.period_s`` (default ``deadline_s``; a fixed period, no early
close, nobody cut): at each round start the server tops the clients in flight
up to ``C``; at the close it folds in *every* buffered update, including the
late ones dispatched in earlier rounds, with their staleness.

Staleness, per component. The global version counts aggregations. Each
expert e has its own version (aggregations that folded in at least one update
holding e), and so has the shared part (backbone and gate: every aggregation
with at least one update when ``train_shared``; with ``train_shared: false``
clients do not train or upload it and it never changes). An update carries the
experts the client trained and, with ``train_shared``, the backbone and gate;
its staleness for a component is that component's versions since the client's
download, so a rarely trained expert is not discounted for versions it took no
part in. Each component is stepped with its own staleness weights.

Equivalence with sync: with ``buffer_size = concurrency = clients_per_round``,
``over_selection = 1``, ``server_lr = 1`` and every update of a buffer arriving
at the same instant (no stragglers, no dropout), every update has staleness 0
and the step is FedAvg on the same clients, tasks and training seeds as sync.

Checkpoints: every published version is a round boundary for
``output.checkpoint_every_rounds`` (:meth:`Protocol.checkpoint`); a resumed
run replays from ``t = 0`` (:mod:`fedsim.engine.checkpoint`), clients in
flight and buffered updates included, so nothing below is pickled.

State: everything lives on the loop, a :class:`BufferedLoop`
(``protocol.loop``): ``version``, ``expert_version``, ``shared_version``,
``snapshots`` (version -> global state, kept while a ticket refers to it),
``inflight`` (client -> :class:`Ticket`), ``buffer`` (:class:`Arrival`s in
arrival order), ``ended`` (client runs lost since the last aggregation),
``dispatched`` (tickets since the last aggregation), ``t_last_s``,
``dispatch_seq``, ``arrival_seq`` and ``idle_polls`` (consecutive polls with
nobody working and an empty buffer; the run ends after ``run.rounds`` of them, as sync would after
that many empty rounds); the protocol keeps the global state,
alignment, estimator and rng streams as in sync.

A new buffered mode is one subclass of :class:`BufferedLoop` (its
:meth:`~BufferedLoop.rounds`, and whether freed slots are refilled during
the server's compute) plus its line in ``fedsim.config.registry.AGGREGATION_MODES``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim.protocols.base import (
    IDLE_RETRY_S,
    ClientOutcome,
    Loop,
    Protocol,
    RoundState,
    StaleUpdate,
)

if TYPE_CHECKING:
    import simpy

__all__ = ["BufferedLoop", "AsyncLoop", "SemiAsyncLoop", "Ticket", "Arrival"]


@dataclass
class Ticket:
    """One dispatch: ``client``, its ``task`` (experts), the global ``version`` it
    downloaded, each trained expert's version and the shared version at download,
    the dispatch time (s) and the dispatch sequence number."""

    client: str
    task: list[int]
    version: int
    expert_versions: dict[int, int]
    shared_version: int
    t_dispatch_s: float
    seq: int


@dataclass
class Arrival:
    """A completed upload waiting in the buffer: its ticket, outcome and arrival sequence number."""

    ticket: Ticket
    outcome: ClientOutcome
    seq: int


class BufferedLoop(Loop):
    """The buffered server loop of a :class:`~fedsim.protocols.base.Protocol` and its state
    (module docstring); subclasses give :meth:`rounds`."""

    #: whether slots freed during the server's compute are refilled at once (with the version still published)
    refill_during_server_compute: ClassVar[bool] = False

    def __init__(self, p: Protocol) -> None:
        super().__init__(p)
        cfg = p.cfg
        fb = self.fedbuff = cfg.fedbuff
        self.deadline_s = float(cfg.deadline_s)
        self.concurrency = fb.concurrency or math.ceil(cfg.clients_per_round * cfg.over_selection)
        # a buffer larger than the clients holding data could never fill (buffered clients are not re-dispatched)
        holders = sum(1 for c in p.clients if p.trainer.num_samples(c) > 0)
        self.buffer_size = max(1, min(fb.buffer_size or cfg.clients_per_round, holders))
        self.retry_s = min(self.deadline_s, IDLE_RETRY_S)
        self.period_s = float(fb.period_s if fb.period_s is not None else cfg.deadline_s)
        self.version = 0
        self.expert_version: defaultdict[int, int] = defaultdict(int)
        self.shared_version = 0
        self.snapshots: dict[int, Any] = {self.version: p.model_state()}
        self.inflight: dict[str, Ticket] = {}
        self.buffer: list[Arrival] = []
        self.ended: list[ClientOutcome] = []
        self.dispatched: list[Ticket] = []
        self.t_last_s = 0.0
        self.dispatch_seq = 0
        self.arrival_seq = 0
        self.idle_polls = 0
        self.procs: dict[str, Any] = {}  # client -> its SimPy process, while in flight
        self._wake: simpy.Event | None = None

    # ------------------------------------------------------------ loops
    def serve(self) -> Generator[Any, Any, None]:
        """The server process: ``run.rounds`` aggregations, stopping at ``run.horizon_s``."""
        p = self.p
        p.on_start()
        p.progress(round=0, rounds=p.settings.rounds, t_s=0.0, bytes=0.0)
        yield from self.rounds()
        yield from self.settle()
        p.on_end()

    def rounds(self) -> Generator[Any, Any, None]:
        """The mode's dispatch / aggregation schedule.

        Raises:
            NotImplementedError: in the base.
        """
        raise NotImplementedError
        yield  # pragma: no cover - makes this a generator

    def settle(self) -> Generator[Any, Any, None]:
        """When the run stops: cut the clients still in flight (cause :class:`RunEnd`, status
        ``in_flight``, with the bytes their phase moved), mark the updates left in the buffer
        ``buffered`` and write their ``clients`` rows; the work that ended after the last
        ``rounds`` row (these, and clients lost during the last server compute) is added to
        that row, so every byte the cells carried is in ``clients`` and ``rounds``."""
        from fedsim.devices.causes import RunEnd

        p = self.p
        alive = [pr for pr in self.procs.values() if pr.is_alive]
        for pr in alive:
            pr.interrupt(RunEnd())
        if alive:
            yield p.env.all_of(alive)
        left = list(self.ended)  # their rows are written (lost, or cut just now)
        for a in self.buffer:  # arrived (a cut upload that had finished included), never folded
            a.outcome.status = "buffered"
            p.record_client_row(a.ticket.version, a.outcome)
            left.append(a.outcome)
        self.buffer, self.ended = [], []
        rows = p.rec.rows("rounds")
        if rows and left:
            last = rows[-1]
            last["bytes_up"] += float(sum(o.bytes_up for o in left))
            last["bytes_down"] += float(sum(o.bytes_down for o in left))
            for status, col in (("straggler", "stragglers"), ("dropout", "dropouts"), ("oom", "ooms"), ("skipped", "skipped")):
                last[col] += sum(1 for o in left if o.status == status)

    def _past_horizon(self) -> bool:
        h = self.p.settings.horizon_s
        return h is not None and self.p.env.now >= h

    def _buffer_expired(self) -> bool:
        """Whether the oldest buffered update has waited ``deadline_s`` (then the buffer is folded in as it is)."""
        return bool(self.buffer) and self.p.env.now >= self.buffer[0].outcome.t_end_s + self.deadline_s

    # --------------------------------------------------------- dispatch
    def dispatch(self) -> list[str]:
        """Fill the free slots (up to ``concurrency`` in flight) with clients the protocol
        selects (hook ``select``: not training, not in the buffer) and tasks (hook ``assign``,
        seeing the tasks in flight); returns those dispatched."""
        p = self.p
        free = self.concurrency - len(self.inflight)
        if free <= 0:
            return []
        busy = set(self.inflight) | {a.ticket.client for a in self.buffer}
        chosen = p.select(self.version, slots=free, busy=busy)
        if not chosen:
            return []
        tasks = p.assign(self.version, chosen, {c: t.task for c, t in self.inflight.items()})
        now = float(p.env.now)
        out = []
        for c in chosen:
            task = list(tasks.get(c, []))
            if not task:
                o = ClientOutcome(c, self.version, [], now, status="skipped", t_end_s=now, bs=p.systems.serving_bs(c))
                self.ended.append(o)
                p.record_client_row(self.version, o)
                continue
            t = Ticket(
                c, task, self.version, {e: self.expert_version[e] for e in task}, self.shared_version, now, self.dispatch_seq,
            )
            self.dispatch_seq += 1
            self.inflight[c] = t
            self.dispatched.append(t)
            self.procs[c] = p.env.process(self._client(t))
            out.append(c)
        return out

    def _client(self, t: Ticket) -> Generator[Any, Any, None]:
        """Process of one dispatched client: the base's ``client_process``, then buffer or free the slot."""
        p = self.p
        o = yield from p.client_process(t.client, list(t.task), t.version)
        del self.inflight[t.client]
        self.procs.pop(t.client, None)
        if o.status == "completed":
            self.buffer.append(Arrival(t, o, self.arrival_seq))
            self.arrival_seq += 1
        else:
            self.ended.append(o)
            p.record_client_row(t.version, o)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # -------------------------------------------------------- aggregate
    def weight(self, tau: int) -> float:
        """FedBuff staleness weight of an update ``tau`` versions old (``fedbuff.staleness``, :func:`fedsim.learning.buffered.staleness_weight`)."""
        from fedsim.learning.buffered import staleness_weight

        fb = self.fedbuff
        return staleness_weight(tau, fb.staleness, fb.staleness_exponent, fb.hinge_threshold)

    def aggregate(self, batch: list[Arrival]) -> Generator[Any, Any, None]:
        """Fold ``batch`` (buffered arrivals) into the model (hook ``fold_stale``),
        ``server_compute_s`` of server work (with ``refill_during_server_compute``, clients
        keep being dispatched, with the version still published), then publish the next
        version (hook ``publish``), evaluate and record it."""
        p = self.p
        env = p.env
        taken = {id(a) for a in batch}
        self.buffer = [a for a in self.buffer if id(a) not in taken]
        batch = sorted(batch, key=lambda a: a.ticket.client)  # a fixed summation order, as in sync
        r = self.version
        stale: dict[str, tuple[int, dict[int, int]]] = {}
        items = []
        for a in batch:
            t = a.ticket
            es = {e: self.expert_version[e] - t.expert_versions[e] for e in t.task}
            ss = self.shared_version - t.shared_version
            stale[t.client] = (ss, es)
            items.append(StaleUpdate(t.client, t.task, t.version, self.snapshots[t.version], self.weight(ss), {e: self.weight(v) for e, v in es.items()}))
        step = p.fold_stale(r, items)  # trains through the replay seam (checkpoint/resume)

        # the row's window closes here: what is dispatched or lost during the server work counts in the next row
        t_close = float(env.now)
        st = RoundState(r, self.t_last_s, selected=[t.client for t in self.dispatched], t_close_s=t_close)
        ended, self.ended, self.dispatched = self.ended, [], []
        t_done = t_close + p.server_compute_s()
        while env.now < t_done:
            if self.refill_during_server_compute:
                self.dispatch()
            self._wake = env.event()
            yield env.any_of([env.timeout(t_done - env.now), self._wake])

        # publish: the new state, alignment feedback, versions
        good_ids = p.publish(r, step, {a.ticket.client: a.outcome for a in batch}, ended, stale)
        gb = [a for a in batch if a.ticket.client in good_ids]
        self.version += 1
        for e in sorted({e for a in gb for e in a.ticket.task}):
            self.expert_version[e] += 1
        if gb and p.trains_shared():
            self.shared_version += 1
        self.snapshots[self.version] = p.model_state()
        live = {t.version for t in self.inflight.values()} | {a.ticket.version for a in self.buffer} | {self.version}
        self.snapshots = {v: sd for v, sd in self.snapshots.items() if v in live}

        st.tasks = {a.ticket.client: list(a.ticket.task) for a in gb}
        st.t_end_s = float(env.now)
        if p.should_evaluate(r):
            st.metrics = dict(p.evaluate(r))
        self._record(st, batch, gb, stale, ended)
        p.record_round_extra(st)
        p.rec.event(st.t_end_s, "round_end", round=r, seconds=st.t_end_s - st.t_start_s)
        p.progress(round=r + 1, t_s=st.t_end_s, accuracy=st.metrics["accuracy"], bytes=p.bytes_moved)
        self.t_last_s = st.t_end_s
        p.checkpoint(self.version)  # a published version is the async round boundary

    def _record(
        self, st: RoundState, batch: list[Arrival], good: list[Arrival], stale: dict[str, tuple[int, dict[int, int]]], ended: list[ClientOutcome],
    ) -> None:
        """The ``rounds`` row of one aggregation, the ``clients`` rows of its updates, the ``updates`` rows."""
        p = self.p
        for a in batch:
            p.record_client_row(a.ticket.version, a.outcome)
        for a in good:
            ss, es = stale[a.ticket.client]
            comps = ([(-1, ss)] if p.trains_shared() else []) + sorted(es.items())
            for e, tau in comps:
                p.rec.row(
                    "updates", version=self.version, client=a.ticket.client, expert=int(e), t_dispatch_s=a.ticket.t_dispatch_s,
                    t_arrival_s=a.outcome.t_end_s, staleness=int(tau),
                    staleness_weight=self.weight(tau),
                )
        outs = [a.outcome for a in batch] + ended
        done = [a.outcome for a in batch]
        glob = [st.round - a.ticket.version for a in good]
        count = {s: sum(1 for o in outs if o.status == s) for s in ("dropout", "oom", "skipped", "straggler")}

        p.record_rounds_row(
            **p.round_row_fields(st, outs, done, count),
            online=sum(1 for c in p.clients if p.systems.is_online(c)),
            version=self.version, updates=len(good),
            staleness_mean=float(np.mean(glob)) if glob else math.nan, staleness_max=float(max(glob)) if glob else math.nan,
        )


class AsyncLoop(BufferedLoop):
    """``async``: FedBuff (module docstring)."""

    refill_during_server_compute = True

    def rounds(self) -> Generator[Any, Any, None]:
        """Fold the first ``buffer_size`` arrivals whenever they are buffered (or the buffer
        expires), keep every slot busy, poll every ``retry_s`` while slots are free; stop
        after ``run.rounds`` versions, at the horizon, or after ``run.rounds`` idle polls."""
        p = self.p
        env, rounds = p.env, p.settings.rounds
        while True:
            while (len(self.buffer) >= self.buffer_size or self._buffer_expired()) and self.version < rounds and not self._past_horizon():
                yield from self.aggregate(self.buffer[: self.buffer_size])
            if self.version >= rounds or self._past_horizon():
                return
            self.dispatch()
            if not self.inflight and not self.buffer:
                # nobody can work: as many empty polls as sync would spend empty rounds, then the run ends
                self.idle_polls += 1
                if self.idle_polls > rounds:
                    p.rec.event(float(env.now), "async_idle_stop", round=self.version, seconds=self.idle_polls * self.retry_s)
                    return
            else:
                self.idle_polls = 0
            self._wake = env.event()
            waits: list[Any] = [self._wake]
            if len(self.inflight) < self.concurrency:
                waits.append(env.timeout(self.retry_s))  # free slots, nobody eligible now: look again later
            if self.buffer:  # the buffer's timeout
                waits.append(env.timeout(self.buffer[0].outcome.t_end_s + self.deadline_s - env.now))
            h = p.settings.horizon_s
            if h is not None:
                waits.append(env.timeout(h - env.now))
            yield env.any_of(waits)


class SemiAsyncLoop(BufferedLoop):
    """``semi_async``: rounds of a fixed period, late updates folded in later with their staleness (module docstring)."""

    def rounds(self) -> Generator[Any, Any, None]:
        """``run.rounds`` rounds of ``period_s``: top the slots up at the start, fold every
        buffered update at the close."""
        p, env = self.p, self.p.env
        for r in range(p.settings.rounds):
            if self._past_horizon():
                return
            if r > 0 and p.round_interval_s() > 0:
                yield env.timeout(p.round_interval_s())  # as in sync: the server idles between rounds
            p.rec.event(float(env.now), "round_start", round=r)
            self.dispatch()
            yield env.timeout(self.period_s)
            yield from self.aggregate(list(self.buffer))
