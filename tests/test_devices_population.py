"""Devices as columns (fedsim.devices.population): idle devices have no process, state is a
function of (device, time) in any query order, and its distribution matches the eager Device."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from fedsim.devices import DEVICE_CLASSES, Device, default_device_classes
from fedsim.devices.causes import Dropout
from fedsim.devices.population import DevicePopulation
from fedsim.engine import Simulation


def _processes(env: simpy.Environment) -> set[simpy.Process]:
    """Live SimPy processes: those a scheduled event will resume (a process waiting on an
    event that is not scheduled is resumed by whoever triggers it: counted through it)."""
    procs: set[simpy.Process] = set()
    for ev in [e[3] for e in env._queue]:  # (time, priority, id, event)
        for cb in ev.callbacks or ():
            owner = getattr(cb, "__self__", None)
            if isinstance(owner, simpy.Process) and owner.is_alive:
                procs.add(owner)
            elif isinstance(owner, simpy.events.Condition):
                procs.update(c.__self__ for c in owner.callbacks or ()
                             if isinstance(getattr(c, "__self__", None), simpy.Process))
    return procs


def _pop(n: int, seed: int = 0) -> tuple[Simulation, DevicePopulation]:
    sim = Simulation(seed)
    cls = [DEVICE_CLASSES[i % len(DEVICE_CLASSES)] for i in range(n)]
    return sim, DevicePopulation(sim, [f"c{i}" for i in range(n)], cls, default_device_classes())


def test_idle_devices_have_no_process_eager_ones_do() -> None:
    """Counted in the event queue: the population schedules nothing for idle devices (the
    eager Device runs load, memory and availability processes: 3 per device)."""
    sim, pop = _pop(500)
    sim.env.run(until=1.0)
    assert len(_processes(sim.env)) == 0 and len(sim.env._queue) <= 1  # noqa: SLF001 (the until event)
    _ = [pop.devices[f"c{i}"].online for i in range(50)]  # asking for objects starts nothing
    sim.env.run(until=2.0)
    assert len(_processes(sim.env)) == 0
    esim = Simulation(0)
    for i in range(500):
        Device(esim, f"c{i}", default_device_classes()["phone"])
    esim.env.run(until=1.0)
    assert len(_processes(esim.env)) == 3 * 500


def test_busy_device_follows_its_state_then_stops() -> None:
    """A compute job on one device: that device (only) runs its state process while the job
    runs; afterwards no process is left."""
    sim, pop = _pop(100)
    c = next(c for c in pop.nodes if pop.devices[c].online and pop.devices[c].params.flops_mean > 1e9)
    dev = pop.devices[c]
    proc = dev.compute(dev.speed_flops() * 5.0)  # about 5 s
    sim.env.run(until=sim.env.now + 1.0)
    live = _processes(sim.env)
    assert dev._proc in live and proc in live and len(live) == 2  # noqa: SLF001
    assert pop.busy_devices() == 1
    sim.env.run(until=proc)
    sim.env.run(until=sim.env.now + 1.0)
    assert len(_processes(sim.env)) == 0 and pop.busy_devices() == 0


def test_state_is_a_function_of_device_and_time_in_any_order() -> None:
    """Queries in random order (and backwards) equal a fresh population queried forwards."""
    _, a = _pop(300, seed=3)
    _, b = _pop(300, seed=3)
    rng = np.random.default_rng(1)
    qs = [(int(rng.integers(300)), float(rng.uniform(0, 20_000))) for _ in range(400)]
    got = [a.state(i, t) for i, t in qs]
    want = [b.state(i, t) for i, t in sorted(qs, key=lambda q: q[1])]
    order = sorted(range(len(qs)), key=lambda k: qs[k][1])
    assert [got[k] for k in order] == want


def test_online_fraction_and_load_match_the_eager_model() -> None:
    """Per class: the stationary online fraction mean_on / (mean_on + mean_off) and the
    background-load mean (uniform on [0, 2 m]) at a late time, over 20,000 devices."""
    n = 20_000
    _, pop = _pop(n, seed=5)
    rows = np.arange(n)
    on = pop.online_rows(rows, 7200.0)
    load = pop._load.at(rows, 7200.0)  # noqa: SLF001
    for j, name in enumerate(pop.class_names):
        p = default_device_classes()[name]
        m = pop.cls == j
        frac = p.mean_on_s / (p.mean_on_s + p.mean_off_s)
        assert on[m].mean() == pytest.approx(frac, abs=4 * np.sqrt(frac * (1 - frac) / m.sum()) + 1e-3)
        assert load[m].mean() == pytest.approx(p.background_load_mean, rel=0.05)


def test_going_offline_interrupts_a_watched_transfer() -> None:
    """A busy device applies its availability change at its time: the watched process gets
    a Dropout exactly at the population's next offline time."""
    sim, pop = _pop(200, seed=2)
    i, dev = next((i, pop.devices[c]) for i, c in enumerate(pop.nodes)
                  if pop.devices[c].online and pop.devices[c].params.mean_on_s < 1e4)
    t_off = pop._avail.t1[i]  # noqa: SLF001
    causes: list[object] = []

    def xfer() -> object:
        try:
            yield sim.env.timeout(1e6)
        except simpy.Interrupt as e:
            causes.append((sim.env.now, e.cause))

    dev.watch(sim.env.process(xfer()))
    sim.env.run(until=t_off + 1.0)
    assert len(causes) == 1 and isinstance(causes[0][1], Dropout)
    assert causes[0][0] == pytest.approx(t_off)


def test_same_seed_same_draws() -> None:
    _, a = _pop(1000, seed=9)
    _, b = _pop(1000, seed=9)
    _, c = _pop(1000, seed=10)
    assert np.array_equal(a.base_flops, b.base_flops)
    assert np.array_equal(a.online_rows(np.arange(1000), 999.0), b.online_rows(np.arange(1000), 999.0))
    assert not np.array_equal(a.base_flops, c.base_flops)
