"""A client device: compute speed, memory pressure, availability and dropout.

Each :class:`Device` starts its own processes in ``__init__`` (background
load, memory pressure, availability) and keeps the handles. Going offline
interrupts every process registered with :meth:`Device.watch` (and every
running compute job) with a :class:`Dropout` cause.

Random streams: ``f"compute/{node}"`` (speed draw, background load),
``f"memory/{node}"``, ``f"availability/{node}"``, ``f"hazard/{node}"``.

Events recorded (``sim.rec.event``): ``compute`` (every finished or
interrupted job: bytes = 0, seconds, flops, flops_done, completed, cause),
``oom`` (a job refused at start or killed by a pressure rise; bytes = the
memory it needed), ``dropout`` (going offline or a transfer failure, with
``reason`` and the number of processes interrupted), ``online``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from fedsim.devices.causes import Dropout, OutOfMemory
from fedsim.devices.params import DeviceClassParams
from fedsim.devices.traces import AvailabilityTrace
from fedsim.engine.clock import delay_to, step
from fedsim.engine.simulation import Simulation

__all__ = ["Device", "ComputeResult", "lognormal_params", "memory_stationary"]


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with the given mean and coefficient of variation."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


@dataclass(frozen=True)
class ComputeResult:
    """Outcome of :meth:`Device.compute` (returned, never raised).

    Attributes:
        requested_flops: FLOPs of the job.
        flops_done: FLOPs executed before the end (== requested when completed).
        completed: whether the job finished.
        start_s, end_s: simulated start and end (s).
        cause: ``None``, an :class:`OutOfMemory`, a :class:`Dropout` or the
            cause given to ``interrupt``.
    """

    requested_flops: float
    flops_done: float
    completed: bool
    start_s: float
    end_s: float
    cause: Any = None

    @property
    def seconds(self) -> float:
        """Duration in simulated seconds."""
        return self.end_s - self.start_s


@functools.lru_cache(maxsize=64)
def memory_stationary(jump_t: tuple[tuple[float, ...], ...], hold_s: tuple[float, ...]) -> np.ndarray:
    """Stationary distribution of the memory-pressure CTMC (embedded chain x holding times)."""
    jump = np.array(jump_t, dtype=float)
    n = len(jump)
    np.fill_diagonal(jump, 0.0)
    jump = jump / jump.sum(axis=1, keepdims=True)
    pi = np.full(n, 1.0 / n)
    for _ in range(500):
        pi = 0.5 * pi + 0.5 * (pi @ jump)  # damped power iteration: periodic chains converge
    w = pi * np.array(hold_s, dtype=float)
    return w / w.sum()


class _Job:
    __slots__ = ("remaining", "memory", "swapping", "changed", "proc")

    def __init__(self, flops: float, memory: float) -> None:
        self.remaining = flops
        self.memory = memory
        self.swapping = False
        self.changed: simpy.Event | None = None
        self.proc: simpy.Process | None = None


class Device:
    """Ground-truth model of one client device (see the module docstring).

    Args:
        sim: the run's Simulation.
        node: node id (also names the random streams).
        params: the device class.
        flops_per_s: override of the drawn base speed (e.g. from a trace).
        availability: trace-driven availability instead of exponential on/off.
    """

    def __init__(self, sim: Simulation, node: str, params: DeviceClassParams, *,
                 flops_per_s: float | None = None,
                 availability: AvailabilityTrace | None = None) -> None:
        self.sim = sim
        self.env = sim.env
        self.node = node
        self.params = params
        p = params
        self._rng_compute = sim.rng.numpy(f"compute/{node}")
        self._rng_mem = sim.rng.numpy(f"memory/{node}")
        self._rng_avail = sim.rng.numpy(f"availability/{node}")
        self._rng_hazard = sim.rng.numpy(f"hazard/{node}")
        if flops_per_s is None:
            mu, sigma = lognormal_params(p.flops_mean, p.flops_cv)
            flops_per_s = float(self._rng_compute.lognormal(mu, sigma))
        if not flops_per_s > 0:
            raise ValueError('"flops_per_s" must be > 0')
        self.base_flops_per_s = float(flops_per_s)
        self.background_load = 0.0
        self.memory_total_bytes = p.memory_gb * 1e9
        self.memory_state = self._initial_memory_state()
        self._jobs: list[_Job] = []
        self._watched: dict[simpy.Process, None] = {}
        self.availability = availability
        self.online = True
        self.processes: dict[str, simpy.Process] = {}
        self.ever_online = True  # set after the initial state below
        if p.background_load_mean > 0:
            self.background_load = self._draw_load()
            self.processes["load"] = self.env.process(self._load_loop())
        if len(p.memory_pressure_levels) > 1:
            self.processes["memory"] = self.env.process(self._memory_loop())
        if availability is not None:
            self.online, changes = availability.timeline(self.env.now)
            self.processes["availability"] = self.env.process(self._trace_loop(changes))
        elif math.isfinite(p.mean_on_s):
            frac_on = p.mean_on_s / (p.mean_on_s + p.mean_off_s)
            self.online = bool(self._rng_avail.random() < frac_on)
            self.processes["availability"] = self.env.process(self._onoff_loop())
        self.ever_online = self.online

    # -- compute speed -------------------------------------------------------
    def speed_flops(self) -> float:
        """Current effective speed of the device (FLOP/s, all jobs together)."""
        return self.base_flops_per_s * (1.0 - self.background_load)

    def _draw_load(self) -> float:
        m = self.params.background_load_mean
        return float(min(max(self._rng_compute.uniform(0.0, 2.0 * m), 0.0), 0.95))

    def set_background_load(self, load: float) -> None:
        """Set the background load fraction now (in [0, 1)); running jobs adapt."""
        if not 0.0 <= load < 1.0:
            raise ValueError('"load" must be in [0, 1)')
        self.background_load = float(load)
        self._notify()

    def _load_loop(self) -> Any:
        while True:
            yield self.env.timeout(step(self.env.now, self._rng_compute.exponential(
                self.params.background_load_change_mean_s)))
            self.set_background_load(self._draw_load())

    def _job_rate(self, job: _Job) -> float:
        r = self.speed_flops() / len(self._jobs)
        return r / self.params.swap_slowdown if job.swapping else r

    def _notify(self) -> None:
        for j in self._jobs:
            if j.changed is not None and not j.changed.triggered:
                j.changed.succeed()

    # -- memory --------------------------------------------------------------
    def _initial_memory_state(self) -> int:
        n = len(self.params.memory_pressure_levels)
        if n == 1:
            return 0
        w = memory_stationary(self.params.memory_pressure_jump, self.params.memory_pressure_mean_hold_s)
        return int(self._rng_mem.choice(n, p=w))


    def memory_available_bytes(self) -> float:
        """Memory free for a new job now: total x (1 - pressure level) - running jobs' memory."""
        level = self.params.memory_pressure_levels[self.memory_state]
        used = sum(j.memory for j in self._jobs)
        return self.memory_total_bytes * (1.0 - level) - used

    def fits(self, memory_bytes: float) -> bool:
        """Whether a job needing ``memory_bytes`` could start now without OOM."""
        return memory_bytes <= self.memory_available_bytes()

    def set_memory_state(self, state: int) -> None:
        """Jump to pressure state ``state`` now (index into the levels)."""
        if not 0 <= state < len(self.params.memory_pressure_levels):
            raise ValueError('"state" out of range')
        self.memory_state = int(state)
        free = self.memory_total_bytes * (1.0 - self.params.memory_pressure_levels[state])
        cum = 0.0
        changed = False
        for j in list(self._jobs):
            cum += j.memory
            over = cum > free
            if self.params.oom_mode == "kill":
                if over and j.proc is not None and j.proc.is_alive:
                    cause = OutOfMemory(self.node, self.env.now, j.memory,
                                        max(free - (cum - j.memory), 0.0))
                    j.proc.interrupt(cause)
                    cum -= j.memory
            elif over != j.swapping:
                j.swapping = over
                changed = True
        if changed:
            self._notify()

    def _memory_loop(self) -> Any:
        p = self.params
        jump = np.array(p.memory_pressure_jump, dtype=float)
        np.fill_diagonal(jump, 0.0)
        jump = jump / jump.sum(axis=1, keepdims=True)
        while True:
            yield self.env.timeout(step(self.env.now, self._rng_mem.exponential(
                p.memory_pressure_mean_hold_s[self.memory_state])))
            nxt = int(self._rng_mem.choice(len(jump), p=jump[self.memory_state]))
            self.set_memory_state(nxt)

    # -- compute jobs --------------------------------------------------------
    def compute(self, flops: float, *, memory_bytes: float = 0.0, round: int = -1, tag: str = ""
                ) -> simpy.Process:
        """A process running ``flops`` FLOPs; returns a :class:`ComputeResult`.

        Its duration integrates the FLOPs over the changing speed (background
        load, concurrent jobs sharing the device equally, swap slowdown). If
        ``memory_bytes`` does not fit at start, it ends at once with an
        :class:`OutOfMemory` cause; an offline device gives a :class:`Dropout`.
        The job is watched: going offline interrupts it. ``interrupt(cause)``
        ends it with ``cause``.
        """
        if flops < 0 or memory_bytes < 0:
            raise ValueError('"flops" and "memory_bytes" must be >= 0')
        job = _Job(float(flops), float(memory_bytes))
        proc = self.env.process(self._compute(job, float(flops), int(round), tag))
        job.proc = proc
        return proc

    def _compute(self, job: _Job, flops: float, rnd: int, tag: str) -> Any:
        env = self.env
        start = env.now
        cause: Any = None
        if not self.online:
            cause = Dropout(self.node, start, "offline")
        elif not self.fits(job.memory):
            cause = OutOfMemory(self.node, start, job.memory, self.memory_available_bytes())
        if cause is not None:
            return self._finish_job(job, flops, start, False, cause, rnd, tag)
        self._jobs.append(job)
        self._watched[job.proc] = None  # type: ignore[index]
        self._engage()
        self._notify()
        completed = False
        rate = 0.0
        t0 = env.now
        try:
            while job.remaining > 0.0:
                rate = self._job_rate(job)
                job.changed = env.event()
                t0 = env.now
                if rate > 0.0:
                    t_end = t0 + job.remaining / rate
                    timer = env.timeout(job.remaining / rate)
                    yield timer | job.changed
                    if timer.processed or env.now >= t_end:
                        job.remaining = 0.0
                        break
                else:
                    yield job.changed
                job.remaining = max(job.remaining - rate * (env.now - t0), 0.0)
            completed = True
        except simpy.Interrupt as intr:
            cause = intr.cause
            job.remaining = max(job.remaining - rate * (env.now - t0), 0.0)
        finally:
            if job in self._jobs:
                self._jobs.remove(job)
            self._watched.pop(job.proc, None)  # type: ignore[arg-type]
            job.changed = None
            self._notify()
            self._release()
        return self._finish_job(job, flops, start, completed, cause, rnd, tag)

    def _finish_job(self, job: _Job, flops: float, start: float, completed: bool, cause: Any,
                    rnd: int, tag: str) -> ComputeResult:
        now = self.env.now
        done = flops if completed else flops - job.remaining
        rec = self.sim.rec
        if isinstance(cause, OutOfMemory):
            rec.event(now, "oom", node=self.node, round=rnd, bytes=cause.needed_bytes,
                      seconds=now - start, available_bytes=cause.available_bytes, tag=tag)
        rec.event(now, "compute", node=self.node, round=rnd, seconds=now - start, flops=flops,
                  flops_done=done, completed=completed, tag=tag,
                  cause=None if cause is None else type(cause).__name__)
        return ComputeResult(flops, done, completed, start, now, cause)

    # -- availability and dropout --------------------------------------------
    def watch(self, proc: simpy.Process, *, hazard: bool = False) -> simpy.Process:
        """Register ``proc``: going offline interrupts it with a :class:`Dropout`.

        With ``hazard=True`` (for transfers) a failure time is drawn from the
        class's ``transfer_hazard_per_s``; if ``proc`` still runs then, it is
        interrupted with ``Dropout(reason="link_failure")``. Watching on an
        offline device interrupts at once. Returns ``proc``; it is unwatched
        automatically when it ends.
        """
        if not proc.is_alive:
            return proc
        self._watched[proc] = None
        self._engage()
        proc.callbacks.append(lambda _ev: self.unwatch(proc))
        if not self.online:
            proc.interrupt(Dropout(self.node, self.env.now, "offline"))
            return proc
        rate = self.params.transfer_hazard_per_s
        if hazard and rate > 0:
            t = self._hazard_delay(rate)
            timer = self.env.timeout(t)
            timer.callbacks.append(lambda _ev: self._fail(proc))
        return proc

    def unwatch(self, proc: simpy.Process) -> None:
        """Stop watching ``proc`` (no-op if not watched)."""
        self._watched.pop(proc, None)
        self._release()

    def _hazard_delay(self, rate_per_s: float) -> float:
        """Time to a link failure (s) of a newly watched transfer."""
        return float(self._rng_hazard.exponential(1.0 / rate_per_s))

    def _engage(self) -> None:
        """Hook: a job or a watched process starts (a population device starts following
        its state then; the eager device always does)."""

    def _release(self) -> None:
        """Hook: a job or a watched process ended."""

    def _fail(self, proc: simpy.Process) -> None:
        if proc.is_alive and proc in self._watched:
            proc.interrupt(Dropout(self.node, self.env.now, "link_failure"))
            self.sim.rec.event(self.env.now, "dropout", node=self.node, reason="link_failure",
                               interrupted=1)

    def go_offline(self) -> None:
        """Go offline now: interrupt every watched process with a :class:`Dropout`
        (except the calling process itself, which SimPy cannot interrupt)."""
        if not self.online:
            return
        self.online = False
        cause = Dropout(self.node, self.env.now, "offline")
        n = 0
        active = self.env.active_process
        for proc in list(self._watched):
            if proc.is_alive and proc is not active:
                proc.interrupt(cause)
                n += 1
        self.sim.rec.event(self.env.now, "dropout", node=self.node, reason="offline",
                           interrupted=n)

    def go_online(self) -> None:
        """Come back online now."""
        if self.online:
            return
        self.online = True
        self.ever_online = True
        self.sim.rec.event(self.env.now, "online", node=self.node)

    def _onoff_loop(self) -> Any:
        p = self.params
        while True:
            mean = p.mean_on_s if self.online else p.mean_off_s
            yield self.env.timeout(step(self.env.now, self._rng_avail.exponential(mean)))
            if self.online:
                self.go_offline()
            else:
                self.go_online()

    def _trace_loop(self, changes: Iterator[tuple[float, bool]]) -> Any:
        """Follow the trace's state changes, generated on demand from kept state
        (:meth:`AvailabilityTrace.timeline`): the clock always advances."""
        for t, online in changes:
            if t > self.env.now:
                yield self.env.timeout(delay_to(self.env.now, t))
            if online:
                self.go_online()
            else:
                self.go_offline()
