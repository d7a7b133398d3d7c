"""The protocol template: the base class owns the round loop and its bookkeeping,
a protocol supplies the hooks.

The synchronous round (:meth:`Protocol.play_round`, Flower-strategy style)::

    round_start event
    selected   = select(r)                      # who takes part
    tasks      = assign(r, selected)            # client -> expert list ([] = skipped)
    dispatch: one process per client with a non-empty task, running
              client_round(outcome)            # fills the ClientOutcome
    wait until round_deadline_s(), or min_completions() uploads, or all done;
    interrupt the late ones with Deadline      # their status becomes "straggler"
    update     = aggregate(r, arrived)          # clients whose status is "completed"
    server compute (server_compute_s())
    metrics    = evaluate(r)                    # only when should_evaluate(r)
    rows of rounds / clients / assignments, then record_round_extra(state)
    round_end event, progress
    (between rounds the server idles round_interval_s())

Edge cases: nobody selected, or every task empty -> nobody is dispatched and
the round idles for ``min(round_deadline_s(), 10 s)`` (the clock always
advances); ``aggregate`` is still called, with no arrivals. A client whose
task is empty is recorded with status ``skipped``. A client process that
ends in any status but ``completed`` gets one ``client_lost`` event (the
device already logged its ``oom`` / ``dropout``).

The server loop is an *aggregation mode*: one :class:`Loop` subclass, listed
once by name in :data:`fedsim.config.registry.AGGREGATION_MODES` (the one place modes are listed);
:meth:`Protocol.serve` runs the loop named by :meth:`Protocol.aggregation_mode`.
``sync`` is :class:`SyncLoop` (the round above). The buffered loops
(``async`` / ``semi_async``, :mod:`fedsim.protocols.fedbuff`) use the same
hooks and nothing else of the protocol: ``select`` (with the free slots and the
busy clients) / ``assign`` (with the tasks in flight) to pick and task clients,
:meth:`Protocol.client_process` to run ``client_round`` with its bookkeeping,
``fold_stale`` / ``publish`` to aggregate a buffer of arrivals trained on older
versions, ``evaluate``, ``record_round_extra``, ``checkpoint``. A protocol that
is not a round loop at all (``nmoe``: training then inference) overrides
:meth:`Protocol.run` and still writes its ``rounds`` rows through
:meth:`Protocol.record_rounds_row`.

Registering a protocol: one line ``name: "module:Class"`` in ``REGISTRY`` of
:mod:`fedsim.protocols` (the one place protocols are listed).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim.config.registry import AGGREGATION_MODES
from fedsim.devices.causes import Deadline

if TYPE_CHECKING:
    import simpy

    from fedsim.parts.bundle import Parts

__all__ = [
    "Protocol", "ClientOutcome", "RoundState", "StaleUpdate", "Loop", "SyncLoop", "STATUSES", "IDLE_RETRY_S",
    "loop_class", "crn_select",
]

#: Client-round statuses, in the order the ``rounds`` table counts them.
STATUSES = ("completed", "straggler", "dropout", "oom", "skipped")

#: Longest wait, s, of a server that finds nobody to dispatch before it looks again
#: (a sync round with nobody dispatched idles ``min(deadline, IDLE_RETRY_S)``; the
#: async loop polls as often): the clock always advances.
IDLE_RETRY_S = 10.0



def loop_class(mode: str) -> type[Loop]:
    """The :class:`Loop` class of aggregation mode ``mode``.

    Raises:
        ValueError: ``mode`` is not in :data:`fedsim.config.registry.AGGREGATION_MODES`.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r} (valid: {', '.join(AGGREGATION_MODES)})")
    module, cls = AGGREGATION_MODES[mode].split(":")
    return getattr(importlib.import_module(module), cls)


def crn_select(rng: np.random.Generator, clients: Sequence[str], eligible: Sequence[bool], n: int) -> list[str]:
    """Choose ``n`` of the eligible ``clients`` uniformly, with common random numbers.

    ``eligible``: one bool per client of ``clients``. One uniform priority is drawn per
    client (every client, in that fixed order, whoever is eligible) and the ``n`` eligible
    clients with the smallest priorities are chosen; returns their names, sorted. The
    stream's use never depends on who is eligible, so two runs whose eligible sets differ
    by one client choose sets that differ by at most that client (a draw sized by the
    eligible count would reshuffle the whole choice). Standard variance reduction for
    comparing simulated systems (common random numbers, Law, *Simulation Modeling and
    Analysis*, 5th ed., Sec. 11.2). Cost O(len(clients)) in numpy: one ``random`` draw and
    a partial sort of the eligible priorities.

    Raises:
        ValueError: ``eligible`` not of ``len(clients)``, or ``n`` larger than the eligible count.
    """
    ok = np.asarray(eligible, dtype=bool)
    if ok.shape != (len(clients),):
        raise ValueError(f"eligible has {ok.size} flags for {len(clients)} clients")
    idx = np.flatnonzero(ok)
    if n > idx.size:
        raise ValueError(f"cannot choose {n} of {idx.size} eligible clients")
    prio = rng.random(len(clients))
    if n <= 0:
        return []
    if n < idx.size:
        idx = idx[np.argpartition(prio[idx], n - 1)[:n]]
    return sorted(clients[i] for i in idx)


@dataclass
class ClientOutcome:
    """What happened to one selected client in one round (times in s, sizes in bytes).

    ``phase`` is the phase the client was in when its round ended
    (``download``, ``compute``, ``upload``; ``""`` if it never started).
    """

    client: str
    round: int
    experts: list[int]
    t_dispatch_s: float
    status: str = "running"
    t_download_s: float = 0.0
    t_compute_s: float = 0.0
    t_upload_s: float = 0.0
    t_end_s: float = math.nan
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    flops: float = 0.0
    num_samples: int = 0
    bs: str = ""
    phase: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundState:
    """One round as the base loop sees it (times in simulated seconds)."""

    round: int
    t_start_s: float
    selected: list[str] = field(default_factory=list)
    tasks: dict[str, list[int]] = field(default_factory=dict)
    t_close_s: float = math.nan
    t_end_s: float = math.nan
    online: int = 0  # clients online when the round selected its clients (the rounds table's ``online``)
    update: Any = None
    metrics: dict[str, float] = field(default_factory=lambda: {"accuracy": math.nan, "f1": math.nan, "auc": math.nan})


@dataclass
class StaleUpdate:
    """One buffered arrival as a buffered loop hands it to :meth:`Protocol.fold_stale`:
    the ``client``, its ``task``, the global ``version`` it downloaded and that version's
    model state (``snapshot``), and the staleness weights of its shared part
    (``weight_shared``) and of each trained expert (``weights``)."""

    client: str
    task: list[int]
    version: int
    snapshot: Any
    weight_shared: float
    weights: dict[int, float]


class Protocol:
    """Base of every protocol: the loop and the bookkeeping (module docstring).

    A protocol is handed its :class:`~fedsim.parts.bundle.Parts` (systems, trainer,
    evaluator, alignment services, its own config section ``cfg``, the run
    settings), records into ``sim.rec`` and reports progress through the
    optional callback (keyword fields ``round``, ``rounds``, ``t_s``,
    ``accuracy``, ``bytes``). Subclasses set ``name`` and implement the hooks
    they need; the defaults select nobody and aggregate / evaluate nothing.
    """

    name: ClassVar[str] = ""

    def __init__(self, parts: Parts, progress: Callable[..., Any] | None = None) -> None:
        self.parts = parts
        self.cfg = parts.config
        self.settings = parts.run
        self.clients = parts.clients
        self.systems = parts.systems
        self.trainer = parts.trainer
        self.evaluator = parts.evaluator
        self.sim = parts.sim
        self.env = parts.sim.env
        self.rec = parts.sim.rec
        self._progress = progress
        self.bytes_moved = 0.0
        self.outcomes: dict[str, ClientOutcome] = {}
        self._procs: dict[str, simpy.Process] = {}
        self.loop: Loop | None = None  # the aggregation mode's server loop, once serving
        self._k_event: simpy.Event | None = None
        self._k_needed = 0
        self._completed = 0

    # ------------------------------------------------------------ hooks
    def aggregation_mode(self) -> str:
        """Name of the server loop in :data:`fedsim.config.registry.AGGREGATION_MODES` this protocol runs. Default ``sync``."""
        return "sync"

    def select(self, r: int, slots: int | None = None, busy: Collection[str] = ()) -> list[str]:
        """Clients taking part in round ``r`` (sorted ids). ``slots``: how many a buffered
        loop can dispatch now (None: a synchronous round's selection); ``busy``: clients in
        flight or buffered, not eligible. Default: nobody."""
        return []

    def assign(self, r: int, selected: list[str], inflight: Mapping[str, list[int]] | None = None) -> dict[str, list[int]]:
        """Task of each selected client (expert indices; ``[]`` = skipped). ``inflight``:
        the tasks of the clients still training (client -> task, dispatch order; a buffered
        loop's, so a policy can see the load already handed out). Default: none."""
        return {}

    def client_round(self, o: ClientOutcome) -> Generator[Any, Any, None]:
        """SimPy process body of one client's round: fill ``o`` (status, phase
        times, bytes, ``phase``). It may be interrupted with a cause (see
        :mod:`fedsim.devices.causes`) and must then set ``o.status``.

        Raises:
            NotImplementedError: a round-loop protocol must implement it.
        """
        raise NotImplementedError(f"protocol {self.name!r} has no client_round")
        yield  # pragma: no cover - makes this a generator

    def aggregate(self, r: int, arrived: list[str]) -> Any:
        """Fold the updates of ``arrived`` (sorted ids, status ``completed``) into the model; the return value is kept in :attr:`RoundState.update`."""
        return None

    def fold_stale(self, r: int, batch: list[StaleUpdate]) -> Any:
        """A buffered loop's aggregation step ``r``: train ``batch`` (each on the snapshot it
        downloaded) and fold it, with its staleness weights, into the current model; the
        result is published by :meth:`publish` after the server's compute time.

        Raises:
            NotImplementedError: the protocol has no buffered aggregation.
        """
        raise NotImplementedError(f"protocol {self.name!r} has no buffered aggregation")

    def publish(
        self, r: int, step: Any, outcomes: dict[str, ClientOutcome], lost: list[ClientOutcome],
        staleness: dict[str, tuple[int, dict[int, int]]],
    ) -> set[str]:
        """Make the result of :meth:`fold_stale` the current model and learn from it
        (``outcomes``: the folded clients' outcomes by id; ``lost``: client runs lost since
        the last step; ``staleness``: client -> (shared staleness, expert -> staleness)).
        Returns the clients whose updates were accepted.

        Raises:
            NotImplementedError: the protocol has no buffered aggregation.
        """
        raise NotImplementedError(f"protocol {self.name!r} has no buffered aggregation")

    def trains_shared(self) -> bool:
        """Whether a client trains and uploads the shared part (backbone, gate) besides its task. Default True."""
        return True

    def model_state(self) -> Any:
        """The current global model (what a client downloads now). Default: none."""
        return None

    def evaluate(self, r: int) -> dict[str, float]:
        """Metrics of the global model (``accuracy``, ``f1``, ``auc``). Default: nan."""
        return {"accuracy": math.nan, "f1": math.nan, "auc": math.nan}

    def new_outcome(self, c: str, task: list[int], r: int) -> ClientOutcome:
        """The outcome record a dispatched client starts with (at dispatch time)."""
        return ClientOutcome(c, r, task, float(self.env.now))

    def round_deadline_s(self) -> float:
        """Seconds after dispatch at which the round closes. Default: infinite."""
        return math.inf

    def min_completions(self, dispatched: int) -> int:
        """Completions that close the round early. Default: all dispatched."""
        return dispatched

    def server_compute_s(self) -> float:
        """Simulated seconds of server work after aggregation. Default 0."""
        return 0.0

    def round_interval_s(self) -> float:
        """Simulated seconds the server idles between the end of a round and the next
        selection (devices keep moving and going on / offline meanwhile). Default 0."""
        return 0.0

    def should_evaluate(self, r: int) -> bool:
        """Whether round ``r`` is evaluated: every ``evaluation.every_rounds`` and the last round."""
        st = self.settings
        return (r + 1) % st.eval_every == 0 or r == st.rounds - 1

    def clients_per_expert_cv(self, state: RoundState) -> float:
        """The ``rounds.clients_per_expert_cv`` value of a round. Default: nan."""
        return math.nan

    def record_round_extra(self, state: RoundState) -> None:
        """Protocol-specific rows of a finished round (e.g. ``experts``). Default: none."""

    def on_start(self) -> None:
        """Called once before the first round."""

    def on_end(self) -> None:
        """Called once after the last round, inside the server process."""

    def final_state(self) -> dict[str, Any] | None:
        """The trained model's state dict, written as ``model.pt`` at the end. Default: none."""
        return None

    # ------------------------------------------------------------ loop
    def checkpoint(self, rounds_done: int, *, force: bool = False) -> None:
        """Round boundary: the run's checkpointer may write (every
        ``output.checkpoint_every_rounds`` rounds; an unarmed one ignores it).
        Any moment is safe, clients in flight included: a resumed run replays
        from ``t = 0``, so a checkpoint is only a prefix of the replay log; an
        asynchronous loop calls it when it publishes a model version."""
        self.parts.checkpoints.round_done(rounds_done, float(self.env.now), force=force)

    def progress(self, **fields: Any) -> None:
        """Report progress to the callback, if any."""
        if self._progress is not None:
            self._progress(**fields)

    def run(self) -> None:
        """Run all rounds (or until ``run.horizon_s``); results are left in ``sim.rec``."""
        server = self.env.process(self.serve())
        self.env.run(until=server)
        self.parts.finish()

    def serve(self) -> Generator[Any, Any, None]:
        """The server process: the :class:`Loop` of :meth:`aggregation_mode` (kept as ``self.loop``)."""
        self.loop = loop_class(self.aggregation_mode())(self)
        return (yield from self.loop.serve())

    def play_round(self, r: int) -> Generator[Any, Any, RoundState]:
        """One synchronous round (module docstring, :class:`SyncLoop`); returns its :class:`RoundState`."""
        st = RoundState(r, float(self.env.now))
        self.rec.event(st.t_start_s, "round_start", round=r)
        st.online = sum(1 for c in self.clients if self.systems.is_online(c))
        st.selected = self.select(r)
        st.tasks = self.assign(r, st.selected) if st.selected else {}

        self.outcomes = {}
        self._procs = {}
        self._completed = 0
        dispatched = [c for c in st.selected if st.tasks.get(c)]
        for c in st.selected:
            if not st.tasks.get(c):
                self.outcomes[c] = ClientOutcome(c, r, [], st.t_start_s, status="skipped", t_end_s=st.t_start_s, bs=self.systems.serving_bs(c))
        self._k_needed = min(self.min_completions(len(dispatched)), len(dispatched))
        self._k_event = self.env.event()
        for c in dispatched:
            self._procs[c] = self.env.process(self.client_process(c, list(st.tasks[c]), r))

        deadline = self.round_deadline_s()
        if dispatched:
            waits = [self._k_event, self.env.all_of(list(self._procs.values()))]
            if math.isfinite(deadline):
                waits.insert(0, self.env.timeout(deadline))
            yield self.env.any_of(waits)
        else:
            yield self.env.timeout(min(deadline, IDLE_RETRY_S))
        st.t_close_s = float(self.env.now)
        late = [p for p in self._procs.values() if p.is_alive]
        for p in late:
            p.interrupt(Deadline())
        if late:
            yield self.env.all_of(late)

        arrived = sorted(c for c, o in self.outcomes.items() if o.status == "completed")
        st.update = self.aggregate(r, arrived)
        if self.server_compute_s() > 0:
            yield self.env.timeout(self.server_compute_s())
        st.t_end_s = float(self.env.now)
        if self.should_evaluate(r):
            st.metrics = dict(self.evaluate(r))
        self.record_round(st)
        self.record_round_extra(st)
        self.rec.event(st.t_end_s, "round_end", round=r, seconds=st.t_end_s - st.t_start_s)
        self.progress(round=r + 1, t_s=st.t_end_s, accuracy=st.metrics["accuracy"], bytes=self.bytes_moved)
        return st

    def client_process(self, c: str, task: list[int], r: int) -> Generator[Any, Any, ClientOutcome]:
        """Process of one dispatched client: outcome, :meth:`client_round`, bookkeeping
        (completion count, bytes moved, ``client_lost`` event)."""
        o = self.new_outcome(c, task, r)
        self.outcomes[c] = o
        try:
            yield from self.client_round(o)
        finally:
            o.t_end_s = float(self.env.now)
            if o.status == "completed":
                self._completed += 1
                if self._completed >= self._k_needed and self._k_event is not None and not self._k_event.triggered:
                    self._k_event.succeed()
            self.bytes_moved += o.bytes_down + o.bytes_up
            if o.status != "completed":
                # one row per lost client-round; the device already logged the oom / dropout itself
                self.rec.event(
                    self.env.now, "client_lost", node=c, round=r, bytes=o.bytes_down + o.bytes_up,
                    seconds=o.t_end_s - o.t_dispatch_s, phase=o.phase, status=o.status,
                )
        return o

    # --------------------------------------------------------- records
    def record_rounds_row(self, **fields: Any) -> None:
        """Append one ``rounds`` row: every declared column, nan / 0 where not given.

        Raises:
            KeyError: a field that is not a declared ``rounds`` column.
        """
        from fedsim.engine.tables import TABLES

        schema = TABLES["rounds"]
        row = schema.blank_row()
        for k, v in fields.items():
            if k not in schema.names:
                raise KeyError(f"rounds: column {k!r} is not declared in fedsim/engine/tables.py")
            row[k] = v
        self.rec.row("rounds", **row)

    def round_row_fields(
        self, st: RoundState, outs: list[ClientOutcome], done: list[ClientOutcome], count: dict[str, int]
    ) -> dict[str, Any]:
        """The ``rounds`` columns every aggregation mode fills the same way: times, the
        evaluation metrics (accuracy / F1 / AUC and whatever else the table declares, such
        as fedmoe's both inferences and routing NMI), client counts, bytes and phase means.
        ``outs``: the outcomes this row accounts for; ``done``: those aggregated;
        ``count``: outcomes per status. The caller adds ``online``, ``version``,
        ``updates`` and the staleness columns."""

        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else math.nan

        from fedsim.engine.tables import TABLES

        m = st.metrics
        more = {k: v for k, v in m.items() if k not in ("accuracy", "f1", "auc") and k in TABLES["rounds"].names}
        return dict(
            round=st.round, t_start_s=st.t_start_s, t_end_s=st.t_end_s, duration_s=st.t_end_s - st.t_start_s,
            accuracy=m["accuracy"], f1=m["f1"], auc=m["auc"], **more,
            selected=len(st.selected), completed=len(done), stragglers=count.get("straggler", 0),
            dropouts=count.get("dropout", 0), ooms=count.get("oom", 0), skipped=count.get("skipped", 0),
            bytes_up=float(sum(o.bytes_up for o in outs)), bytes_down=float(sum(o.bytes_down for o in outs)),
            clients_per_expert_cv=self.clients_per_expert_cv(st),
            t_download_s=mean([o.t_download_s for o in done]), t_compute_s=mean([o.t_compute_s for o in done]),
            t_upload_s=mean([o.t_upload_s for o in done]), t_wait_s=mean([st.t_close_s - o.t_end_s for o in done]),
            t_server_s=st.t_end_s - st.t_close_s,
        )

    def record_round(self, st: RoundState) -> None:
        """Write the ``rounds``, ``clients`` and ``assignments`` rows of a finished round."""
        outs = [self.outcomes[c] for c in st.selected if c in self.outcomes]
        done = [o for o in outs if o.status == "completed"]
        count = {s: sum(1 for o in outs if o.status == s) for s in STATUSES}
        self.record_rounds_row(
            **self.round_row_fields(st, outs, done, count),
            online=st.online,
            # a synchronous round: one new version, every update trained on the previous one (staleness 0)
            version=st.round + 1, updates=len(done),
            staleness_mean=0.0 if done else math.nan, staleness_max=0.0 if done else math.nan,
        )
        for o in outs:
            self.record_client_row(st.round, o)

    def record_client_row(self, r: int, o: ClientOutcome) -> None:
        """The ``clients`` row of ``o`` (round ``r``) and its ``assignments`` rows."""
        wasted = o.status != "completed"
        self.rec.row(
            "clients",
            round=r, client=o.client, device_class=self.systems.device_class(o.client), bs=o.bs, k=len(o.experts),
            experts=",".join(str(e) for e in o.experts), status=o.status, t_dispatch_s=o.t_dispatch_s,
            t_download_s=o.t_download_s, t_compute_s=o.t_compute_s, t_upload_s=o.t_upload_s, t_end_s=o.t_end_s,
            latency_s=o.t_end_s - o.t_dispatch_s, bytes_down=o.bytes_down, bytes_up=o.bytes_up,
            wasted_s=(o.t_end_s - o.t_dispatch_s) if wasted else 0.0,
            wasted_bytes=(o.bytes_down + o.bytes_up) if wasted else 0.0,
            num_samples=o.num_samples, flops=o.flops,
        )
        for e in o.experts:
            self.rec.row("assignments", round=r, client=o.client, expert=int(e))


class Loop:
    """An aggregation mode: the server process of a :class:`Protocol`, driven through the
    protocol's hooks only (module docstring). Subclasses implement :meth:`serve` and are
    listed in :data:`fedsim.config.registry.AGGREGATION_MODES`."""

    def __init__(self, p: Protocol) -> None:
        self.p = p

    def serve(self) -> Generator[Any, Any, None]:
        """The server process.

        Raises:
            NotImplementedError: the base has no loop.
        """
        raise NotImplementedError
        yield  # pragma: no cover - makes this a generator


class SyncLoop(Loop):
    """``sync``: ``run.rounds`` synchronous rounds (:meth:`Protocol.play_round`), stopping at ``run.horizon_s``."""

    def serve(self) -> Generator[Any, Any, None]:
        """The server process: rounds, the idle interval between them, a checkpoint after each."""
        p = self.p
        rounds, horizon = p.settings.rounds, p.settings.horizon_s
        p.on_start()
        p.progress(round=0, rounds=rounds, t_s=0.0, bytes=0.0)
        for r in range(rounds):
            if r > 0 and p.round_interval_s() > 0:
                yield p.env.timeout(p.round_interval_s())
            if horizon is not None and p.env.now >= horizon:
                break
            yield from p.play_round(r)
            p.checkpoint(r + 1)
        p.on_end()
