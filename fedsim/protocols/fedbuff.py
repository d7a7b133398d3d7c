"""``protocol.fedmoe.aggregation: async | semi_async``: buffered asynchronous
aggregation (FedBuff, Nguyen et al., AISTATS 2022) of the fedmoe protocol,
per expert, on the hooks of :class:`~fedsim.protocols.base.Protocol`.

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

State: everything lives on :class:`BufferedLoop`
(``protocol.buffered``): ``version``, ``expert_version``, ``shared_version``,
``snapshots`` (version -> global state, kept while a ticket refers to it),
``inflight`` (client -> :class:`Ticket`), ``buffer`` (:class:`Arrival`s in
arrival order), ``ended`` (client runs lost since the last aggregation),
``dispatched`` (tickets since the last aggregation), ``t_last_s``,
``dispatch_seq``, ``arrival_seq`` and ``idle_polls`` (consecutive polls with
nobody working and an empty buffer; the run ends after ``run.rounds`` of them, as sync would after
that many empty rounds); the protocol keeps the global state,
alignment, estimator and rng streams as in sync.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.protocols.base import IDLE_RETRY_S, ClientOutcome, RoundState, crn_select

if TYPE_CHECKING:
    import simpy

    from fedsim.protocols.fedmoe import FedMoE

__all__ = ["BufferedLoop", "Ticket", "Arrival"]


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


class _UsageView:
    """The alignment state as a policy sees it at an async dispatch: usage plus in-flight load."""

    def __init__(self, state: Any, pending: np.ndarray) -> None:
        self._state = state
        self._pending = pending

    @property
    def usage(self) -> np.ndarray:
        """``(E,)`` usage of the alignment state plus the in-flight assignments' samples."""
        out = np.asarray(self._state.usage, dtype=float) + self._pending
        out.flags.writeable = False
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


@dataclass
class BufferedLoop:
    """The async / semi_async server loop of a :class:`~fedsim.protocols.fedmoe.FedMoE` and its state (module docstring)."""

    p: FedMoE
    version: int = 0
    expert_version: list[int] = field(default_factory=list)
    shared_version: int = 0
    snapshots: dict[int, dict] = field(default_factory=dict)
    inflight: dict[str, Ticket] = field(default_factory=dict)
    buffer: list[Arrival] = field(default_factory=list)
    ended: list[ClientOutcome] = field(default_factory=list)
    dispatched: list[Ticket] = field(default_factory=list)
    t_last_s: float = 0.0
    dispatch_seq: int = 0
    arrival_seq: int = 0
    idle_polls: int = 0
    procs: dict[str, Any] = field(default_factory=dict)  # client -> its SimPy process, while in flight

    def __post_init__(self) -> None:
        p = self.p
        cfg, fb = p.cfg, p.cfg.fedbuff
        self.mode = cfg.aggregation
        self.concurrency = fb.concurrency or math.ceil(cfg.clients_per_round * cfg.over_selection)
        # a buffer larger than the clients holding data could never fill (buffered clients are not re-dispatched)
        holders = sum(1 for c in p.clients if p.trainer.num_samples(c) > 0)
        self.buffer_size = max(1, min(fb.buffer_size or cfg.clients_per_round, holders))
        self.retry_s = min(float(cfg.deadline_s), IDLE_RETRY_S)
        self.period_s = float(fb.period_s if fb.period_s is not None else cfg.deadline_s)
        if not self.expert_version:
            self.expert_version = [0] * p.E
        if not self.snapshots:
            self.snapshots = {self.version: p.global_state}
        self._wake: simpy.Event | None = None

    # ------------------------------------------------------------ loops
    def serve(self) -> Generator[Any, Any, None]:
        """The server process: ``run.rounds`` aggregations, stopping at ``run.horizon_s``."""
        p = self.p
        p.on_start()
        p.progress(round=0, rounds=p.settings.rounds, t_s=0.0, bytes=0.0)
        if self.mode == "async":
            yield from self._serve_async()
        else:
            yield from self._serve_semi_async()
        yield from self.settle()
        p.on_end()

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
        return bool(self.buffer) and self.p.env.now >= self.buffer[0].outcome.t_end_s + float(self.p.cfg.deadline_s)

    def _serve_async(self) -> Generator[Any, Any, None]:
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
                waits.append(env.timeout(self.buffer[0].outcome.t_end_s + float(p.cfg.deadline_s) - env.now))
            h = p.settings.horizon_s
            if h is not None:
                waits.append(env.timeout(h - env.now))
            yield env.any_of(waits)

    def _serve_semi_async(self) -> Generator[Any, Any, None]:
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

    # --------------------------------------------------------- dispatch
    def eligible(self) -> list[bool]:
        """Per client of ``clients``: may it be dispatched now (online, with data, not
        training, not in the buffer)?"""
        p = self.p
        busy = set(self.inflight) | {a.ticket.client for a in self.buffer}
        return [c not in busy and p.systems.is_online(c) and p.trainer.num_samples(c) > 0 for c in p.clients]

    def dispatch(self) -> list[str]:
        """Fill the free slots (up to ``concurrency`` in flight) with new clients; returns those dispatched."""
        p = self.p
        free = self.concurrency - len(self.inflight)
        if free <= 0:
            return []
        cand = self.eligible()
        n = min(free, sum(cand))
        if n <= 0:
            return []
        chosen = crn_select(p.rng_select, p.clients, cand, n)  # as sync's selection: the same draw
        tasks = self.assign(chosen)
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

    def assign(self, chosen: list[str]) -> dict[str, list[int]]:
        """The policy's assignment of ``chosen`` (hook ``assign``), seeing in-flight assignments as usage."""
        p = self.p
        pending = np.zeros(p.E)
        for t in self.inflight.values():
            for e in t.task:
                pending[e] += p.trainer.num_samples(t.client) / len(t.task)
        if not pending.any():
            return p.assign(self.version, chosen)
        return p.assign(self.version, chosen, align=_UsageView(p.align, pending))

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
    def aggregate(self, batch: list[Arrival]) -> Generator[Any, Any, None]:
        """Fold ``batch`` (buffered arrivals) into the model: the step, ``server_compute_s``
        of server work (async: clients keep being dispatched, with the version still
        published), then publish the next version, evaluate and record it."""
        from fedsim.learning.buffered import BufferedUpdate, buffered_aggregate, staleness_weight

        p, fb = self.p, self.p.cfg.fedbuff
        env = p.env
        taken = {id(a) for a in batch}
        self.buffer = [a for a in self.buffer if id(a) not in taken]
        batch = sorted(batch, key=lambda a: a.ticket.client)  # a fixed summation order, as in sync
        r = self.version
        jobs = [p.trainer.job(a.ticket.client, a.ticket.version, self.snapshots[a.ticket.version], a.ticket.task, p.cfg.train_shared) for a in batch]
        updates = p.trainer.train(jobs)  # through the replay seam (checkpoint/resume)

        def weight(tau: int) -> float:
            return staleness_weight(tau, fb.staleness, fb.staleness_exponent, fb.hinge_threshold)

        entries, stale = [], {}
        for a, u in zip(batch, updates):
            t = a.ticket
            es = {e: self.expert_version[e] - t.expert_versions[e] for e in t.task}
            ss = self.shared_version - t.shared_version
            stale[t.client] = (ss, es)
            entries.append(BufferedUpdate(u, self.snapshots[t.version], weight(ss), {e: weight(v) for e, v in es.items()}))
        res = buffered_aggregate(p.global_state, entries, p.E, fb.server_lr) if entries else None

        # the row's window closes here: what is dispatched or lost during the server work counts in the next row
        t_close = float(env.now)
        st = RoundState(r, self.t_last_s, selected=[t.client for t in self.dispatched], t_close_s=t_close)
        ended, self.ended, self.dispatched = self.ended, [], []
        t_done = t_close + p.server_compute_s()
        while env.now < t_done:
            if self.mode == "async":
                self.dispatch()
            self._wake = env.event()
            yield env.any_of([env.timeout(t_done - env.now), self._wake])

        # publish: the new state, alignment feedback, versions
        good: list[Any] = []
        p._last_load = np.zeros(p.E)  # samples routed per expert in this aggregation (apply_feedback fills it)
        if res is not None:
            p.global_state = res.state
            good = p.apply_feedback(updates, res.rejected, r, {a.ticket.client: a.outcome for a in batch}, ended)
        good_ids = {u.client_id for u in good}
        gb = [a for a in batch if a.ticket.client in good_ids]
        p.last_staleness = {e: [stale[a.ticket.client][1][e] for a in gb if e in a.ticket.task] for e in range(p.E)}
        p.last_staleness[-1] = [stale[a.ticket.client][0] for a in gb] if p.cfg.train_shared else []
        self.version += 1
        for e in range(p.E):
            if p.last_staleness[e]:
                self.expert_version[e] += 1
        if p.last_staleness[-1]:
            self.shared_version += 1
        self.snapshots[self.version] = p.global_state
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
        from fedsim.learning.buffered import staleness_weight

        p, fb = self.p, self.p.cfg.fedbuff
        for a in batch:
            p.record_client_row(a.ticket.version, a.outcome)
        for a in good:
            ss, es = stale[a.ticket.client]
            comps = ([(-1, ss)] if p.cfg.train_shared else []) + sorted(es.items())
            for e, tau in comps:
                p.rec.row(
                    "updates", version=self.version, client=a.ticket.client, expert=int(e), t_dispatch_s=a.ticket.t_dispatch_s,
                    t_arrival_s=a.outcome.t_end_s, staleness=int(tau),
                    staleness_weight=staleness_weight(tau, fb.staleness, fb.staleness_exponent, fb.hinge_threshold),
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
