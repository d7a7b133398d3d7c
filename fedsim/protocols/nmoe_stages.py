"""nmoe training on the simulated clock: the SimPy side of the three stages.

Every stage of :mod:`fedsim.protocols.nmoe` is a sequence of *exchanges*
(:meth:`StageRunner.exchange`): the aggregator (``protocol.nmoe.server``: a
base station, the cloud, or a volunteer client) sends each selected client a
payload, the client computes for the FLOPs of its local work on its own device
(speed, memory, availability and dropout from :mod:`fedsim.devices`), then
uploads its result. Either transfer may be empty (0 bytes: skipped) and the
aggregator may be the client itself (a volunteer server: no transfer). The
exchange closes at ``deadline_s`` after dispatch, or at the first
``k_needed`` completions, whichever comes first (as in ``fedmoe``); clients
still running are interrupted and recorded as stragglers, and a device going
offline (or a link failure) makes a dropout. Clients whose leg completed are
what the learning step may use; the learning itself runs at zero simulated
time on the inputs fixed at dispatch (the result is the same as running it
inside the leg).

RollGate's hops (:meth:`StageRunner.hop`) move the gate from the client that
holds it to the next one (client -> client through the flow network), then the
receiver computes.

Every transfer goes through the systems part's ``transfer`` (the flow network:
routes, max-min sharing, channel, outage) and every compute through its
``compute`` (the device model), so both are recorded as ``transfer`` /
``compute`` events with the stage in their ``tag``. Unit tests hand the
stand-in :class:`~fedsim.parts.systems.StarSystems` (a star network and a
fixed 1 GFLOP/s per client).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

__all__ = ["Leg", "StageSystems", "StageRunner", "ExchangeResult", "STATUSES"]

#: Client statuses of a leg, in the order the ``rounds`` table counts them.
STATUSES = ("completed", "straggler", "dropout", "oom", "skipped")


class _Deadline:
    """Interrupt cause: the exchange closed before the client finished (a straggler)."""

    def __repr__(self) -> str:
        return "Deadline()"


@dataclass
class Leg:
    """One client's part of one exchange (times in s, sizes in bytes)."""

    client: str
    t_start_s: float
    status: str = "running"
    phase: str = ""
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    t_end_s: float = math.nan
    flops: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds spent in it


@dataclass
class ExchangeResult:
    """The legs of one exchange and when it opened / closed."""

    legs: dict[str, Leg]
    t_start_s: float
    t_end_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> list[str]:
        """Clients whose leg completed, sorted."""
        return sorted(c for c, g in self.legs.items() if g.status == "completed")

    def count(self, status: str) -> int:
        """Number of legs with ``status``."""
        return sum(1 for g in self.legs.values() if g.status == status)

    @property
    def bytes_up(self) -> float:
        """Bytes delivered towards the aggregator (or the next hop)."""
        return float(sum(g.bytes_up for g in self.legs.values()))

    @property
    def bytes_down(self) -> float:
        """Bytes delivered towards the clients."""
        return float(sum(g.bytes_down for g in self.legs.values()))


class StageSystems:
    """The systems interface of the stages over the run's systems part
    (:class:`~fedsim.parts.systems.Systems` or the stand-in
    :class:`~fedsim.parts.systems.StarSystems`): nothing to move or compute starts nothing."""

    def __init__(self, systems: Any) -> None:
        self.systems = systems

    def is_online(self, c: str) -> bool:
        """Whether ``c`` is online now (a node without a device always is)."""
        return bool(self.systems.is_online(c))

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process | None:
        """Start moving ``nbytes`` ``src`` -> ``dst``; None when there is nothing to move."""
        if src == dst or nbytes <= 0:
            return None
        return self.systems.transfer(src, dst, nbytes, r, tag)

    def compute(self, c: str, flops: float, r: int, memory_bytes: float, tag: str) -> simpy.Process | None:
        """Start ``flops`` FLOPs on ``c``'s device; None when there is nothing to compute."""
        if flops <= 0:
            return None
        return self.systems.compute(c, flops, r, memory_bytes, tag)

    def status_of(self, cause: Any) -> str:
        """Leg status for an interrupt cause: ``straggler`` (the deadline), ``oom`` or ``dropout``."""
        if isinstance(cause, _Deadline) or cause is None:
            return "straggler"
        return str(self.systems.cause_status(cause))


class StageRunner:
    """Runs exchanges and hops on a SimPy environment and records their events."""

    def __init__(self, env: simpy.Environment, rec: Any, systems: StageSystems) -> None:
        self.env, self.rec, self.sys = env, rec, systems

    # ------------------------------------------------------------ exchanges
    def exchange(
        self,
        stage: int,
        r: int,
        server: str,
        clients: Sequence[str],
        *,
        down_bytes: Callable[[str], float],
        flops: Callable[[str], float],
        memory_bytes: Callable[[str], float],
        up_bytes: Callable[[str], float],
        deadline_s: float,
        k_needed: int | None,
        tag: str,
    ) -> Any:
        """SimPy process body: one exchange with ``clients`` (module docstring).

        Clients offline at dispatch are ``skipped``. Returns an
        :class:`ExchangeResult` (via ``yield from``).
        """
        t0 = float(self.env.now)
        legs: dict[str, Leg] = {}
        procs: dict[str, simpy.Process] = {}
        state = {"done": 0}
        dispatched = []
        for c in clients:
            if not self.sys.is_online(c):
                legs[c] = Leg(c, t0, status="skipped", t_end_s=t0)
            else:
                dispatched.append(c)
        need = len(dispatched) if k_needed is None else min(k_needed, len(dispatched))
        k_event = self.env.event()
        for c in dispatched:
            leg = Leg(c, t0)
            legs[c] = leg
            steps = [
                ("download", server, c, float(down_bytes(c))),
                ("compute", c, c, float(flops(c))),
                ("upload", c, server, float(up_bytes(c))),
            ]
            procs[c] = self.env.process(self._leg(leg, steps, stage, r, float(memory_bytes(c)), tag, state, need, k_event))
        if procs:
            waits = [self.env.timeout(deadline_s), self.env.all_of(list(procs.values()))]
            if need < len(procs):
                waits.append(k_event)
            yield self.env.any_of(waits)
        late = [p for p in procs.values() if p.is_alive]
        for p in late:
            p.interrupt(_Deadline())
        if late:
            yield self.env.all_of(late)
        return ExchangeResult(legs, t0, float(self.env.now))

    def _leg(self, leg: Leg, steps: list[tuple[str, str, str, float]], stage: int, r: int, mem: float, tag: str, state: dict[str, int], need: int, k_event: simpy.Event) -> Any:
        """One client's download -> compute -> upload; fills ``leg``."""
        phase: simpy.Process | None = None
        try:
            for name, a, b, amount in steps:
                leg.phase = name
                if name == "compute":
                    leg.flops = amount
                    phase = self.sys.compute(a, amount, r, mem, f"nmoe_s{stage}_{tag}")
                else:
                    phase = self.sys.transfer(a, b, amount, r, f"nmoe_s{stage}_{tag}_{name}")
                if phase is None:
                    continue
                t_phase = float(self.env.now)
                res = yield phase
                leg.seconds[name] = float(self.env.now) - t_phase
                self._add_bytes(leg, name, res)
                phase = None
                if not res.completed:
                    leg.status = self.sys.status_of(getattr(res, "cause", None))
                    return
            leg.status = "completed"
            state["done"] += 1
            if state["done"] >= need and not k_event.triggered:
                k_event.succeed()
        except simpy.Interrupt as intr:
            if phase is not None and phase.is_alive:
                phase.interrupt(intr.cause)
                res = yield phase
                self._add_bytes(leg, leg.phase, res)
            leg.status = self.sys.status_of(intr.cause)
        finally:
            leg.t_end_s = float(self.env.now)
            if leg.status != "completed":
                self.rec.event(
                    self.env.now, "client_lost", node=leg.client, round=r, bytes=leg.bytes_down + leg.bytes_up,
                    seconds=leg.t_end_s - leg.t_start_s, phase=leg.phase, status=leg.status, tag=f"nmoe_s{stage}_{tag}",
                )

    @staticmethod
    def _add_bytes(leg: Leg, name: str, res: Any) -> None:
        moved = float(getattr(res, "delivered_bytes", 0.0))
        if name == "download":
            leg.bytes_down += moved
        elif name == "upload":
            leg.bytes_up += moved

    # ----------------------------------------------------------------- hops
    def hop(self, stage: int, r: int, src: str, dst: str, nbytes: float, flops: float, memory_bytes: float, deadline_s: float, tag: str) -> Any:
        """SimPy process body: move ``nbytes`` ``src`` -> ``dst``, then compute
        ``flops`` on ``dst``, closed by ``deadline_s``. Returns the :class:`Leg`
        (``bytes_down`` = bytes delivered to ``dst``)."""
        t0 = float(self.env.now)
        leg = Leg(dst, t0)
        if not self.sys.is_online(dst):
            leg.status, leg.t_end_s = "skipped", t0
            return leg
        steps = [("download", src, dst, float(nbytes)), ("compute", dst, dst, float(flops))]
        k_event = self.env.event()
        proc = self.env.process(self._leg(leg, steps, stage, r, memory_bytes, tag, {"done": 0}, 1, k_event))
        yield self.env.any_of([proc, self.env.timeout(deadline_s)])
        if proc.is_alive:
            proc.interrupt(_Deadline())
            yield proc
        return leg
