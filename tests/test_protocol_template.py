"""The protocol template, SimPy style: one client's round on a systems test double,
asserting on the logged ``(kind, node, t)`` tuples with hand-computed times.

The systems double moves bytes at a fixed rate per direction (no latency, no
sharing) and computes at a fixed speed, so every time below is arithmetic:

    download 1e6 B at 8e6 bit/s = 1 s      -> ends at t = 1
    compute  2e9 FLOP at 1e9 FLOP/s = 2 s  -> ends at t = 3
    upload   5e5 B at 4e6 bit/s = 1 s      -> ends at t = 4
    server compute 0.5 s                   -> round ends at t = 4.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import simpy

from fedsim.devices.causes import Deadline, Dropout, OutOfMemory, interrupt_status
from fedsim.engine import Simulation
from fedsim.parts.bundle import Parts, RunSettings
from fedsim.parts.systems import StarSystems, Systems
from fedsim.protocols import PROTOCOL_NAMES, REGISTRY, make_protocol, protocol_class
from fedsim.protocols.base import ClientOutcome, Protocol

DOWN_BPS, UP_BPS, FLOPS_PER_S = 8e6, 4e6, 1e9


@dataclass
class _Result:
    delivered_bytes: float
    completed: bool
    cause: Any = None


class StandInSystems:
    """A systems double (the members of :class:`fedsim.parts.systems.Systems`) with exact timing."""

    def __init__(self, clients: list[str], rounds: int = 1) -> None:
        self.sim = Simulation(0)
        self.clients = clients
        self.server = "server"
        self.rounds = rounds
        self.graph = None
        self.devices: dict[str, Any] = {}
        self.finished = False

    def is_online(self, c: str) -> bool:
        return True

    def serving_bs(self, c: str) -> str:
        return "bs0"

    def device_class(self, c: str) -> str:
        return "phone"

    def speed_flops(self, c: str) -> float:
        return FLOPS_PER_S

    def cause_status(self, cause: Any) -> str:
        return interrupt_status(cause)

    def finish(self) -> None:
        self.finished = True

    def _timed(self, kind: str, node: str, seconds: float, nbytes: float, r: int) -> Any:
        env, t0 = self.sim.env, self.sim.env.now
        try:
            yield env.timeout(seconds)
        except simpy.Interrupt as intr:
            done = (env.now - t0) / seconds
            self.sim.rec.event(env.now, kind, node=node, round=r, bytes=nbytes * done, seconds=env.now - t0, completed=False)
            return _Result(nbytes * done, False, intr.cause)
        self.sim.rec.event(env.now, kind, node=node, round=r, bytes=nbytes, seconds=seconds, completed=True)
        return _Result(nbytes, True)

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        rate = DOWN_BPS if src == self.server else UP_BPS
        client = dst if src == self.server else src
        return self.sim.env.process(self._timed(tag, client, 8.0 * nbytes / rate, nbytes, r))

    def compute(self, c: str, flops: float, r: int, memory_bytes: float, tag: str = "train") -> simpy.Process:
        return self.sim.env.process(self._timed("compute", c, flops / FLOPS_PER_S, 0.0, r))


class _NoTrainer:
    """The trainer a protocol that trains nothing is handed (closing it does nothing)."""

    def close(self) -> None:
        pass


def _parts(w: StandInSystems) -> Parts:
    return Parts(
        protocol="one-expert-fl", config=None, run=RunSettings(rounds=w.rounds), sim=w.sim, clients=w.clients,
        systems=w, trainer=_NoTrainer(), evaluator=None,  # type: ignore[arg-type]
    )


class OneExpertFL(Protocol):
    """The smallest round-loop protocol on the hooks: everyone, expert 0, download -> compute -> upload."""

    name = "one-expert-fl"

    def __init__(self, w: StandInSystems, deadline_s: float = math.inf) -> None:
        super().__init__(_parts(w))
        self.deadline_s = deadline_s
        self.aggregated: list[list[str]] = []

    def select(self, r: int) -> list[str]:
        return list(self.clients)

    def assign(self, r: int, selected: list[str]) -> dict[str, list[int]]:
        return {c: [0] for c in selected}

    def round_deadline_s(self) -> float:
        return self.deadline_s

    def server_compute_s(self) -> float:
        return 0.5

    def client_round(self, o: ClientOutcome):  # noqa: ANN201 - SimPy process body
        w = self.systems
        phase = None
        try:
            steps = (
                ("download", lambda: w.transfer(w.server, o.client, 1e6, o.round, "download")),
                ("compute", lambda: w.compute(o.client, 2e9, o.round, 0.0)),
                ("upload", lambda: w.transfer(o.client, w.server, 5e5, o.round, "upload")),
            )
            for name, start in steps:
                o.phase = name
                phase = start()
                res = yield phase
                if not res.completed:
                    o.status = w.cause_status(res.cause)
                    return
            o.status = "completed"
        except simpy.Interrupt as intr:
            if phase is not None and phase.is_alive:
                phase.interrupt(intr.cause)
                yield phase
            o.status = w.cause_status(intr.cause)

    def aggregate(self, r: int, arrived: list[str]) -> Any:
        self.aggregated.append(arrived)
        self.rec.event(self.env.now, "aggregate", round=r, updates=len(arrived))
        return arrived

    def evaluate(self, r: int) -> dict[str, float]:
        return {"accuracy": 0.5, "f1": 0.4, "auc": 0.6}


def _log(world: StandInSystems) -> list[tuple[str, str | None, float]]:
    return [(e["kind"], e["node"], e["t_s"]) for e in world.sim.rec.rows("events")]


def test_systems_doubles_have_every_member_of_the_systems_part() -> None:
    """The stand-ins a protocol may be handed have every public member of :class:`Systems`
    (so library code never asks which one it got)."""
    from tests.systems_double import TimedSystems

    members = [n for n in vars(Systems) if not n.startswith("_")] + ["sim", "graph", "server", "clients", "network", "devices"]
    members = [m for m in members if m not in ("true_capacity", "sim", "network")]  # fedmoe's self-reports; the real ones only
    assert len(members) >= 12
    env = simpy.Environment()
    doubles = [StarSystems(env, ["c0"]), TimedSystems(env, "server", ["c0"], {}), StandInSystems(["c0"])]
    for d in doubles:
        assert [m for m in members if not hasattr(d, m)] == [], type(d).__name__


def test_one_client_round_logs_hand_computed_times() -> None:
    w = StandInSystems(["c0"])
    p = OneExpertFL(w)
    p.run()
    assert _log(w) == [
        ("round_start", None, 0.0),
        ("download", "c0", 1.0),
        ("compute", "c0", 3.0),
        ("upload", "c0", 4.0),
        ("aggregate", None, 4.0),
        ("round_end", None, 4.5),
    ]
    assert w.finished and p.aggregated == [["c0"]]
    (row,) = w.sim.rec.rows("rounds")
    assert (row["t_start_s"], row["t_end_s"], row["t_server_s"], row["t_wait_s"]) == (0.0, 4.5, 0.5, 0.0)
    assert (row["t_download_s"], row["completed"], row["accuracy"]) == (0.0, 1, 0.5)  # phase times are the protocol's to fill
    (cl,) = w.sim.rec.rows("clients")
    assert (cl["status"], cl["t_dispatch_s"], cl["t_end_s"], cl["latency_s"]) == ("completed", 0.0, 4.0, 4.0)


def test_deadline_cuts_the_client_in_compute() -> None:
    """Deadline 2.5 s: the download ends at 1, compute is cut at 2.5 (a straggler, one client_lost)."""
    w = StandInSystems(["c0"])
    p = OneExpertFL(w, deadline_s=2.5)
    p.run()
    assert _log(w) == [
        ("round_start", None, 0.0),
        ("download", "c0", 1.0),
        ("compute", "c0", 2.5),
        ("client_lost", "c0", 2.5),
        ("aggregate", None, 2.5),
        ("round_end", None, 3.0),
    ]
    lost = [e for e in w.sim.rec.rows("events") if e["kind"] == "client_lost"]
    assert lost[0]["phase"] == "compute" and lost[0]["status"] == "straggler" and lost[0]["seconds"] == 2.5
    (row,) = w.sim.rec.rows("rounds")
    assert (row["completed"], row["stragglers"], row["t_end_s"]) == (0, 1, 3.0)
    assert p.aggregated == [[]]


def test_two_rounds_follow_each_other() -> None:
    w = StandInSystems(["c0"], rounds=2)
    OneExpertFL(w).run()
    starts = [t for k, _, t in _log(w) if k == "round_start"]
    ends = [t for k, _, t in _log(w) if k == "round_end"]
    assert starts == [0.0, 4.5] and ends == [4.5, 9.0]


def test_nobody_dispatched_still_advances_the_clock() -> None:
    w = StandInSystems([])
    OneExpertFL(w, deadline_s=3.0).run()
    assert _log(w) == [("round_start", None, 0.0), ("aggregate", None, 3.0), ("round_end", None, 3.5)]


def test_causes_carry_their_status() -> None:
    assert interrupt_status(Deadline()) == "straggler"
    assert interrupt_status(Dropout("c", 0.0)) == "dropout"
    assert interrupt_status(OutOfMemory("c", 0.0, 2.0, 1.0)) == "oom"
    assert interrupt_status(None) == "straggler"
    assert repr(Deadline()) == "Deadline()"


def test_registry_is_the_one_list() -> None:
    assert PROTOCOL_NAMES == tuple(REGISTRY)
    for name in PROTOCOL_NAMES:
        cls = protocol_class(name)
        assert issubclass(cls, Protocol) and cls.name == name
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        make_protocol(Parts(protocol="nope", config=None, run=RunSettings(rounds=1), sim=None, clients=[], systems=None, trainer=None, evaluator=None))  # type: ignore[arg-type]


def test_schema_names_every_registered_protocol() -> None:
    """The config layer cannot import protocols, so a test holds its ``Literal`` equal to the registry."""
    import typing

    from fedsim.config.schema import ProtocolConfig

    assert typing.get_args(ProtocolConfig.model_fields["name"].annotation) == PROTOCOL_NAMES


def test_aggregation_modes_are_one_registry_held_equal_to_the_schema() -> None:
    """Each aggregation mode is one Loop class listed once in the config layer's registry
    (AGGREGATION_MODES), which the schema's ``Literal`` is built from and loop_class resolves."""

    from fedsim.config.registry import AGGREGATION_MODES
    from fedsim.config.schema import FedMoEConfig
    from fedsim.protocols.base import Loop, loop_class

    for mode in AGGREGATION_MODES:  # every registered mode is accepted by the schema and runs a Loop
        assert FedMoEConfig(aggregation=mode).aggregation == mode
        assert issubclass(loop_class(mode), Loop)
    with pytest.raises(ValueError, match="aggregation"):
        FedMoEConfig(aggregation="nope")
    with pytest.raises(ValueError, match="unknown aggregation mode 'nope'"):
        loop_class("nope")


class _Samples(_NoTrainer):
    def num_samples(self, c: str) -> int:
        return 10


class OneExpertBuffered(OneExpertFL):
    """OneExpertFL on the ``async`` loop: the buffered loop drives any protocol through the
    base's hooks (select with slots, assign, client_round, fold_stale, publish), not fedmoe's members."""

    def __init__(self, w: StandInSystems) -> None:
        super().__init__(w)
        fb = SimpleNamespace(concurrency=1, buffer_size=1, period_s=None, staleness="constant", staleness_exponent=0.5, hinge_threshold=4)
        self.cfg = SimpleNamespace(fedbuff=fb, deadline_s=100.0, clients_per_round=1, over_selection=1.0)
        self.trainer = _Samples()
        self.folded: list[list[tuple[str, int, float]]] = []

    def aggregation_mode(self) -> str:
        return "async"

    def select(self, r: int, slots: int | None = None, busy: Any = ()) -> list[str]:
        return [c for c in self.clients if c not in busy][:slots]

    def assign(self, r: int, selected: list[str], inflight: Any = None) -> dict[str, list[int]]:
        return {c: [0] for c in selected}

    def fold_stale(self, r: int, batch: list[Any]) -> Any:
        self.folded.append([(b.client, b.version, b.weight_shared) for b in batch])
        return [b.client for b in batch]

    def publish(self, r: int, step: Any, outcomes: Any, lost: Any, staleness: Any) -> set[str]:
        return set(step)


def test_the_async_loop_runs_any_protocol_on_the_base_hooks() -> None:
    """Hand-computed: c0 arrives at 4 (v0 -> v1 published at 4.5; c0 re-dispatched at 4 during the
    server compute, still on v0), arrives at 8 -> v2 at 8.5 with staleness 1; the run ends and
    the client dispatched at 8 is cut (in_flight)."""
    w = StandInSystems(["c0"], rounds=2)
    p = OneExpertBuffered(w)
    p.run()
    assert p.folded == [[("c0", 0, 1.0)], [("c0", 0, 1.0)]]
    rows = w.sim.rec.rows("rounds")
    assert [(r["version"], r["t_end_s"], r["staleness_max"]) for r in rows] == [(1, 4.5, 0.0), (2, 8.5, 1.0)]
    cl = [(c["t_dispatch_s"], c["t_end_s"], c["status"]) for c in w.sim.rec.rows("clients")]
    assert sorted(cl) == [(0.0, 4.0, "completed"), (4.0, 8.0, "completed"), (8.0, 8.5, "in_flight")]
