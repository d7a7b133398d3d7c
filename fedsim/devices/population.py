"""Devices as columns: a population whose idle devices schedule no event.

:class:`DevicePopulation` holds the client devices as arrays (class, base
speed, memory) and their time-varying state as functions of (device, time):

- **Availability** (exponential on/off sessions, as :class:`Device`): session
  ``k`` of device ``i`` has state ``online_0 xor (k odd)`` and length
  ``mean_{on|off} * E(i, k)``, with ``online_0`` drawn with probability
  ``mean_on / (mean_on + mean_off)`` (the stationary fraction).
- **Background load**: segment ``k`` holds the load ``U(i, k) * 2 * mean``
  (clipped to [0, 0.95]) for ``change_mean * E(i, k)`` seconds.
- **Memory pressure** (the CTMC of :class:`Device`): state 0 from the chain's
  stationary distribution, state ``k + 1`` from the jump row of state ``k``,
  each held ``mean_hold[state] * E(i, k)`` seconds.

``U`` and ``E`` are uniform and exponential draws of the counter-based streams
``"availability"``, ``"background_load"`` and ``"memory"``
(:class:`fedsim.rng.CounterRng`) keyed by (device, segment): a query walks the
segments from the kept ones (or from 0 for a query in the past), so any query
time, in any order, gets the same answer, and a device nobody asks about costs
nothing. Availability traces (FedScale) are read the same way
(:meth:`AvailabilityTrace.timeline` at the query time).

A device becomes an object (:class:`PopulationDevice`, a :class:`Device`) when
something asks for it (``population.devices[c]``); it runs one process, which
applies the state changes above at their times, only while it has a compute
job or a watched transfer, and none otherwise. Events recorded: as
:class:`Device`, except that ``online`` / ``dropout (offline)`` rows are
written only for devices that are busy when they change state (idle devices
change state silently). The eager :class:`Device` stays the reference;
``bench/population_equivalence.py`` compares the two in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from itertools import takewhile
from typing import Any

import numpy as np
import simpy

from fedsim.devices.device import Device, lognormal_params, memory_stationary
from fedsim.devices.params import DeviceClassParams
from fedsim.devices.traces import AvailabilityTrace
from fedsim.engine.clock import delay_to
from fedsim.engine.simulation import Simulation

__all__ = ["DevicePopulation", "PopulationDevice", "PopulationDevices", "build_devices"]

#: a time query for one device at a new instant is answered for that device alone; from
#: this many queries at one instant on, the whole population is advanced at once
_BULK_AFTER = 32


def build_devices(sim: Simulation, nodes: Sequence[str], device_classes: Sequence[str],
                  classes: Mapping[str, DeviceClassParams], flops_per_s: Sequence[float | None],
                  availability: Sequence[AvailabilityTrace | None], *, lazy: bool
                  ) -> tuple[DevicePopulation | None, Mapping[str, Device]]:
    """The devices of a run: ``(population, client id -> device)``. ``lazy``: columns
    (:class:`DevicePopulation`); otherwise one eager :class:`Device` per node, made in
    node order (so their processes start in a fixed order) and no population."""
    if lazy:
        pop = DevicePopulation(sim, nodes, device_classes, classes, flops_per_s=flops_per_s,
                               availability=availability)
        return pop, pop.devices
    return None, {c: Device(sim, c, classes[k], flops_per_s=f, availability=a)
                  for c, k, f, a in zip(nodes, device_classes, flops_per_s, availability)}


class _Segments:
    """Piecewise-constant state of every device: segment ``k[i]`` spans ``[t0[i], t1[i])``.

    ``draw(rows, k, prev)`` returns the state and length (s) of segment ``k``
    given the previous segment's state (``prev`` is ignored for ``k == 0``);
    draws must be pure functions of (row, k) so that replays agree.
    """

    def __init__(self, n: int, dtype: Any, draw: Any) -> None:
        self.draw = draw
        self.k = np.zeros(n, dtype=np.int64)
        self.t0 = np.zeros(n)
        self.t1 = np.zeros(n)
        self.state = np.zeros(n, dtype=dtype)
        self.reset(np.arange(n, dtype=np.int64))

    def reset(self, rows: np.ndarray) -> None:
        """Put ``rows`` back on their first segment (a query before their kept one)."""
        st, hold = self.draw(rows, np.zeros(rows.size, dtype=np.int64), self.state[rows])
        self.k[rows] = 0
        self.t0[rows] = 0.0
        self.t1[rows] = hold
        self.state[rows] = st

    def at(self, rows: np.ndarray, t: float) -> np.ndarray:
        """States of ``rows`` (unique) at time ``t`` (s, >= 0)."""
        back = t < self.t0[rows]
        if back.any():
            self.reset(rows[back])
        r = rows[t >= self.t1[rows]]
        while r.size:
            k = self.k[r] + 1
            st, hold = self.draw(r, k, self.state[r])
            t0 = self.t1[r]
            self.k[r] = k
            self.t0[r] = t0
            self.t1[r] = t0 + hold
            self.state[r] = st
            r = r[t >= self.t1[r]]
        return self.state[rows]


class DevicePopulation:
    """The client devices as columns (see the module docstring).

    Args:
        sim: the run's Simulation (streams ``availability``, ``background_load``,
            ``memory``, ``compute/speed``, ``hazard``, all counter-based).
        nodes: client node ids, one per device (row ``i`` is ``nodes[i]``).
        device_classes: class name of each device.
        classes: class name -> :class:`DeviceClassParams`.
        flops_per_s: base speeds (FLOP/s) overriding the drawn ones (a capacity
            trace); ``None`` entries or no sequence: drawn (lognormal, as :class:`Device`).
        availability: per-device trace (FedScale) or ``None`` (exponential on/off).

    Raises:
        ValueError: lengths differ, or a given speed is not > 0.
    """

    def __init__(self, sim: Simulation, nodes: Sequence[str], device_classes: Sequence[str],
                 classes: Mapping[str, DeviceClassParams], *,
                 flops_per_s: Sequence[float | None] | None = None,
                 availability: Sequence[AvailabilityTrace | None] | None = None) -> None:
        n = len(nodes)
        if len(device_classes) != n:
            raise ValueError('"device_classes" must have one entry per node')
        self.sim = sim
        self.env = sim.env
        self.nodes = list(nodes)
        self.index = {c: i for i, c in enumerate(self.nodes)}
        names = sorted(set(device_classes))
        self.class_names = names
        self.params = [classes[c] for c in names]
        code = {c: j for j, c in enumerate(names)}
        self.cls = np.fromiter((code[c] for c in device_classes), dtype=np.int64, count=n)
        self._tables()
        rows = np.arange(n, dtype=np.int64)
        self._cr_speed = sim.rng.counter("compute/speed")
        mu, sigma = self._c_mu[self.cls], self._c_sigma[self.cls]
        self.base_flops = np.exp(mu + sigma * self._cr_speed.normal(rows))
        if flops_per_s is not None:
            if len(flops_per_s) != n:
                raise ValueError('"flops_per_s" must have one entry per node')
            for i, f in enumerate(flops_per_s):
                if f is not None:
                    if not f > 0:
                        raise ValueError('"flops_per_s" must be > 0')
                    self.base_flops[i] = float(f)
        self.memory_total_bytes = self._c_mem_bytes[self.cls]
        self._cr_avail = sim.rng.counter("availability")
        self._cr_load = sim.rng.counter("background_load")
        self._cr_mem = sim.rng.counter("memory")
        self._cr_hazard = sim.rng.counter("hazard")
        self._hazard_n = np.zeros(n, dtype=np.int64)
        self.traces: dict[int, AvailabilityTrace] = {}
        if availability is not None:
            if len(availability) != n:
                raise ValueError('"availability" must have one entry per node')
            self.traces = {i: a for i, a in enumerate(availability) if a is not None}
        self._avail = _Segments(n, bool, self._draw_avail)
        self._load = _Segments(n, np.float64, self._draw_load)
        self._mem = _Segments(n, np.int64, self._draw_mem)
        self._live: dict[int, PopulationDevice] = {}
        self._bulk_t = -math.inf
        self._bulk_calls = 0
        self._online_now: np.ndarray | None = None
        self.devices = PopulationDevices(self)

    # -- per-class tables ----------------------------------------------------------
    def _tables(self) -> None:
        ps = self.params
        self._c_mu = np.array([lognormal_params(p.flops_mean, p.flops_cv)[0] for p in ps])
        self._c_sigma = np.array([lognormal_params(p.flops_mean, p.flops_cv)[1] for p in ps])
        self._c_mem_bytes = np.array([p.memory_gb * 1e9 for p in ps])
        self._c_on = np.array([p.mean_on_s for p in ps])
        self._c_off = np.array([p.mean_off_s for p in ps])
        self._c_frac_on = np.where(np.isfinite(self._c_on), self._c_on / (self._c_on + self._c_off), 1.0)
        self._c_load = np.array([p.background_load_mean for p in ps])
        self._c_load_s = np.array([p.background_load_change_mean_s for p in ps])
        nl = max(len(p.memory_pressure_levels) for p in ps)
        self._c_levels = np.zeros((len(ps), nl))
        self._c_hold = np.full((len(ps), nl), np.inf)
        self._c_jump = np.ones((len(ps), nl, nl))  # cumulative rows (inverse-CDF draws)
        self._c_pi = np.ones((len(ps), nl))
        for j, p in enumerate(ps):
            m = len(p.memory_pressure_levels)
            self._c_levels[j, :m] = p.memory_pressure_levels
            if m > 1:
                self._c_hold[j, :m] = p.memory_pressure_mean_hold_s
                jump = np.array(p.memory_pressure_jump, dtype=float)
                np.fill_diagonal(jump, 0.0)
                self._c_jump[j, :m, :m] = np.cumsum(jump / jump.sum(axis=1, keepdims=True), axis=1)
                pi = memory_stationary(p.memory_pressure_jump, p.memory_pressure_mean_hold_s)
                self._c_pi[j, :m] = np.cumsum(pi)
            self._c_jump[j, :, m - 1:] = 1.0
            self._c_pi[j, m - 1:] = 1.0

    # -- segment draws (pure functions of (row, k)) --------------------------------
    def _draw_avail(self, rows: np.ndarray, k: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cls[rows]
        on0 = self._cr_avail.uniform(rows, 0, 1) < self._c_frac_on[c]
        on = on0 ^ (k % 2 == 1)
        mean = np.where(on, self._c_on[c], self._c_off[c])
        hold = mean * self._cr_avail.exponential(rows, k, 0)
        if self.traces:
            for r, i in enumerate(rows.tolist()):
                if i in self.traces:
                    on[r], hold[r] = False, 0.0  # traces are read directly (see online())
        return on, np.where(np.isfinite(mean), hold, np.inf)

    def _draw_load(self, rows: np.ndarray, k: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cls[rows]
        m = self._c_load[c]
        load = np.clip(self._cr_load.uniform(rows, k, 1) * 2.0 * m, 0.0, 0.95)
        hold = self._c_load_s[c] * self._cr_load.exponential(rows, k, 0)
        return load, np.where(m > 0, hold, np.inf)

    def _draw_mem(self, rows: np.ndarray, k: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cls[rows]
        u = self._cr_mem.uniform(rows, k, 1)
        cdf = np.where((k == 0)[:, None], self._c_pi[c], self._c_jump[c, np.maximum(prev, 0)])
        st = np.minimum((u[:, None] > cdf).sum(axis=1), cdf.shape[1] - 1).astype(np.int64)
        hold = self._c_hold[c, st] * self._cr_mem.exponential(rows, k, 0)
        return st, hold

    # -- state queries ---------------------------------------------------------------
    def row(self, c: str) -> int:
        """Row of client ``c``. Raises KeyError for an unknown client."""
        return self.index[c]

    def online_rows(self, rows: np.ndarray, t_s: float) -> np.ndarray:
        """Whether ``rows`` (unique row indices) are online at ``t_s`` (bool array)."""
        on = self._avail.at(rows, t_s)
        if self.traces:
            on = on.copy()
            for r, i in enumerate(rows.tolist()):
                tr = self.traces.get(i)
                if tr is not None:
                    on[r] = tr.timeline(t_s)[0]
        return on

    def background_load_rows(self, rows: np.ndarray, t_s: float) -> np.ndarray:
        """Background-load fractions of ``rows`` (unique) at ``t_s``."""
        return self._load.at(rows, t_s).copy()

    def memory_free_rows(self, rows: np.ndarray, t_s: float) -> np.ndarray:
        """Memory left by other apps (bytes: total x (1 - pressure level)) of ``rows`` at ``t_s``
        (running jobs not counted)."""
        st = self._mem.at(rows, t_s)
        return self.memory_total_bytes[rows] * (1.0 - self._c_levels[self.cls[rows], st])

    def is_online(self, c: str) -> bool:
        """Whether client ``c`` is online now. Many queries at one instant (a selection
        scanning the population) advance the whole population once, vectorised."""
        now = self.env.now
        if now != self._bulk_t:
            self._bulk_t, self._bulk_calls, self._online_now = now, 0, None
        self._bulk_calls += 1
        if self._online_now is None and self._bulk_calls >= _BULK_AFTER:
            self._online_now = self.online_rows(np.arange(len(self.nodes), dtype=np.int64), now)
        i = self.index[c]
        if self._online_now is not None:
            return bool(self._online_now[i])
        return bool(self.online_rows(np.array([i], dtype=np.int64), now)[0])

    def state(self, i: int, t_s: float) -> tuple[bool, float, int]:
        """(online, background load, memory-pressure state) of row ``i`` at ``t_s``."""
        r = np.array([i], dtype=np.int64)
        return (bool(self.online_rows(r, t_s)[0]), float(self._load.at(r, t_s)[0]),
                int(self._mem.at(r, t_s)[0]))

    def next_change(self, i: int, t_s: float) -> float:
        """Earliest time > ``t_s`` at which row ``i``'s state may change (s; inf if never)."""
        self.state(i, t_s)
        t = min(float(self._load.t1[i]), float(self._mem.t1[i]))
        tr = self.traces.get(i)
        if tr is None:
            return min(t, float(self._avail.t1[i]))
        nxt = next(tr.timeline(t_s)[1], None)
        return t if nxt is None else min(t, nxt[0])

    def ever_online_rows(self, rows: np.ndarray, t_end_s: float) -> np.ndarray:
        """Whether ``rows`` were online at some time in ``[0, t_end_s]`` (bool array)."""
        k0 = np.zeros(rows.size, dtype=np.int64)
        on0, hold0 = self._draw_avail(rows, k0, k0.astype(bool))
        out = on0 | (hold0 <= t_end_s)
        for r, i in enumerate(rows.tolist()):
            tr = self.traces.get(i)
            if tr is not None:
                on, changes = tr.timeline(0.0)
                out[r] = on or any(s for _, s in takewhile(lambda e: e[0] <= t_end_s, changes))
        return out

    def never_online(self, t_end_s: float) -> list[str]:
        """Clients offline during the whole of ``[0, t_end_s]`` (never selectable)."""
        ever = self.ever_online_rows(np.arange(len(self.nodes), dtype=np.int64), t_end_s)
        return [self.nodes[i] for i in np.nonzero(~ever)[0].tolist()]

    def capacity(self, c: str) -> tuple[float, float]:
        """(mean speed, FLOP/s: base x (1 - mean background load); memory free now, bytes)
        of client ``c``, as a self-report would give them."""
        i = self.index[c]
        d = self._live.get(i)
        if d is not None:
            return d.base_flops_per_s * (1.0 - d.params.background_load_mean), d.memory_available_bytes()
        j = int(self.cls[i])
        st = int(self._mem.at(np.array([i], dtype=np.int64), self.env.now)[0])
        return (float(self.base_flops[i]) * (1.0 - self.params[j].background_load_mean),
                float(self.memory_total_bytes[i]) * (1.0 - float(self._c_levels[j, st])))

    def hazard_delay(self, i: int, rate_per_s: float) -> float:
        """Time to failure (s) of row ``i``'s next hazard-watched transfer (keyed by its count)."""
        n = int(self._hazard_n[i])
        self._hazard_n[i] = n + 1
        return float(self._cr_hazard.exponential(i, n)) / rate_per_s

    def device(self, c: str) -> PopulationDevice:
        """The object of client ``c`` (made on first request, then kept)."""
        i = self.index[c]
        d = self._live.get(i)
        if d is None:
            d = PopulationDevice(self, i)
            self._live[i] = d
        return d

    def busy_devices(self) -> int:
        """Devices that currently run their state process (a job or a watched transfer)."""
        return sum(1 for d in self._live.values() if d.following)


class PopulationDevices(Mapping[str, Device]):
    """client id -> :class:`PopulationDevice`, made on access (``len`` and iteration
    cover the whole population without making objects)."""

    def __init__(self, pop: DevicePopulation) -> None:
        self._pop = pop

    def __getitem__(self, c: str) -> Device:
        return self._pop.device(c)

    def __contains__(self, c: object) -> bool:
        return c in self._pop.index

    def __iter__(self) -> Iterator[str]:
        return iter(self._pop.nodes)

    def __len__(self) -> int:
        return len(self._pop.nodes)


class PopulationDevice(Device):
    """One device of a :class:`DevicePopulation` as an object (the :class:`Device`
    interface). Its state is read from the population; while it has a compute job
    or a watched process it runs one process that applies the state changes at
    their times (interrupting jobs and transfers as :class:`Device` does)."""

    def __init__(self, pop: DevicePopulation, i: int) -> None:  # noqa: D107 (no super(): no processes)
        self._pop = pop
        self._i = i
        self.sim = pop.sim
        self.env = pop.env
        self.node = pop.nodes[i]
        self.params = pop.params[int(pop.cls[i])]
        self.base_flops_per_s = float(pop.base_flops[i])
        self.memory_total_bytes = float(pop.memory_total_bytes[i])
        self.availability = pop.traces.get(i)
        self._jobs = []
        self._watched = {}
        self.processes: dict[str, simpy.Process] = {}
        self._proc: simpy.Process | None = None
        self._idle: simpy.Event | None = None
        self._t_sync = -math.inf
        self._on, self._bg, self._mstate = True, 0.0, 0

    @property
    def following(self) -> bool:
        """Whether the state process runs (the device is busy)."""
        return self._proc is not None

    def _sync(self) -> None:
        now = self.env.now
        if self._proc is None and self._t_sync != now:
            self._on, self._bg, self._mstate = self._pop.state(self._i, now)
            self._t_sync = now

    @property  # type: ignore[override]
    def online(self) -> bool:
        self._sync()
        return self._on

    @online.setter
    def online(self, v: bool) -> None:
        self._on = bool(v)

    @property  # type: ignore[override]
    def background_load(self) -> float:
        self._sync()
        return self._bg

    @background_load.setter
    def background_load(self, v: float) -> None:
        self._bg = float(v)

    @property  # type: ignore[override]
    def memory_state(self) -> int:
        self._sync()
        return self._mstate

    @memory_state.setter
    def memory_state(self, v: int) -> None:
        self._mstate = int(v)

    @property
    def ever_online(self) -> bool:  # type: ignore[override]
        """Whether the device was online at some time up to now."""
        return bool(self._pop.ever_online_rows(np.array([self._i]), self.env.now)[0])

    def _hazard_delay(self, rate_per_s: float) -> float:
        return self._pop.hazard_delay(self._i, rate_per_s)

    def _engage(self) -> None:
        if self._proc is None:
            self._sync()
            self._proc = self.env.process(self._follow())
            self.processes["state"] = self._proc

    def _release(self) -> None:
        if not self._jobs and not self._watched and self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def _follow(self) -> Any:
        """Apply the population's state changes while busy; end when idle."""
        env = self.env
        try:
            while self._jobs or self._watched:
                t = self._pop.next_change(self._i, env.now)
                self._idle = env.event()
                if math.isfinite(t):
                    yield env.timeout(delay_to(env.now, t)) | self._idle
                else:
                    yield self._idle
                if self._idle.triggered:
                    continue
                on, bg, ms = self._pop.state(self._i, env.now)
                if bg != self._bg:
                    self.set_background_load(bg)
                if ms != self._mstate:
                    self.set_memory_state(ms)
                if on != self._on:
                    if on:
                        self.go_online()
                    else:
                        self.go_offline()
        finally:
            self._proc = None
            self._idle = None
            self.processes.pop("state", None)
            self._t_sync = -math.inf
