"""Devices: compute integration, memory pressure / OOM, availability, dropout, traces."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import simpy

from fedsim.devices import (
    AvailabilityTrace,
    Device,
    DeviceClassParams,
    Dropout,
    OutOfMemory,
    default_device_classes,
    load_fedscale_availability,
    load_fedscale_capacity,
)
from fedsim.devices.device import lognormal_params
from fedsim.engine import Simulation

QUIET = DeviceClassParams(flops_mean=1e9, flops_cv=0.0, background_load_mean=0.0,
                          memory_gb=4.0, memory_pressure_levels=(0.25,),
                          memory_pressure_mean_hold_s=(1.0,), memory_pressure_jump=((0.0,),),
                          mean_on_s=math.inf, mean_off_s=1.0)


def _dev(sim: Simulation, **kw: object) -> Device:
    return Device(sim, "c0", replace(QUIET, **kw), flops_per_s=1e9)


def test_compute_integrates_speed_change() -> None:
    sim = Simulation(0)
    dev = _dev(sim)
    p = dev.compute(10e9, round=2)

    def slow_down() -> object:
        yield sim.env.timeout(4.0)
        dev.set_background_load(0.5)  # 4 GFLOP done, 6 left at 0.5 GFLOP/s -> 12 s

    sim.env.process(slow_down())
    sim.env.run(until=p)
    r = p.value
    assert r.completed and r.flops_done == 10e9
    assert r.seconds == pytest.approx(16.0)
    ev = sim.rec.frame("events")
    assert ev[ev.kind == "compute"].iloc[0]["round"] == 2


def test_two_jobs_share_the_device() -> None:
    sim = Simulation(0)
    dev = _dev(sim)
    a = dev.compute(2e9)
    b = dev.compute(4e9)
    sim.env.run(until=sim.env.all_of([a, b]))
    # both at 0.5 GFLOP/s until a ends at 4 s; b then has 2 GFLOP left alone: 6 s
    assert a.value.end_s == pytest.approx(4.0)
    assert b.value.end_s == pytest.approx(6.0)


def test_interrupt_reports_partial_flops() -> None:
    sim = Simulation(0)
    dev = _dev(sim)
    p = dev.compute(10e9)

    def stop() -> object:
        yield sim.env.timeout(3.0)
        p.interrupt("deadline")

    sim.env.process(stop())
    sim.env.run(until=p)
    assert not p.value.completed and p.value.cause == "deadline"
    assert p.value.flops_done == pytest.approx(3e9)


def test_oom_at_start() -> None:
    sim = Simulation(0)
    dev = _dev(sim)  # 4 GB, 25 % used -> 3 GB free
    assert dev.memory_available_bytes() == pytest.approx(3e9)
    assert dev.fits(2.9e9) and not dev.fits(3.1e9)
    p = dev.compute(1e9, memory_bytes=3.5e9)
    sim.env.run(until=p)
    r = p.value
    assert not r.completed and isinstance(r.cause, OutOfMemory) and r.seconds == 0.0
    assert r.cause.needed_bytes == 3.5e9
    ev = sim.rec.frame("events")
    assert list(ev.kind) == ["oom", "compute"]


def _pressure(mode: str) -> Device:
    return replace(QUIET, memory_pressure_levels=(0.25, 0.9), memory_pressure_mean_hold_s=(1e9, 1e9),
                   memory_pressure_jump=((0.0, 1.0), (1.0, 0.0)), oom_mode=mode, swap_slowdown=4.0)


def test_pressure_rise_kills_or_swaps() -> None:
    for mode in ("kill", "swap"):
        sim = Simulation(0)
        dev = Device(sim, "c0", _pressure(mode), flops_per_s=1e9)
        dev.set_memory_state(0)
        p = dev.compute(10e9, memory_bytes=2e9)

        def squeeze(dev: Device = dev, sim: Simulation = sim) -> object:
            yield sim.env.timeout(2.0)
            dev.set_memory_state(1)  # only 0.4 GB free now
            yield sim.env.timeout(4.0)
            dev.set_memory_state(0)

        sim.env.process(squeeze())
        sim.env.run(until=p)
        r = p.value
        if mode == "kill":
            assert not r.completed and isinstance(r.cause, OutOfMemory)
            assert r.end_s == pytest.approx(2.0) and r.flops_done == pytest.approx(2e9)
        else:  # 2 s full speed, 4 s at 1/4, then 7 GFLOP at full speed
            assert r.completed and r.end_s == pytest.approx(2 + 4 + 7)


def test_offline_interrupts_watched_process_and_jobs() -> None:
    sim = Simulation(0)
    dev = _dev(sim)
    env = sim.env
    seen = {}

    def client() -> object:
        try:
            yield env.timeout(100.0)
        except simpy.Interrupt as intr:
            seen["cause"] = intr.cause
            seen["t"] = env.now

    proc = dev.watch(env.process(client()))
    job = dev.compute(100e9)

    def off() -> object:
        yield env.timeout(5.0)
        dev.go_offline()

    env.process(off())
    env.run(until=10.0)
    assert isinstance(seen["cause"], Dropout) and seen["t"] == 5.0 and seen["cause"].reason == "offline"
    assert isinstance(job.value.cause, Dropout) and job.value.flops_done == pytest.approx(5e9)
    assert not proc.is_alive
    # watching while offline interrupts at once
    p2 = dev.watch(env.process(client()))
    env.run(until=11.0)
    assert not p2.is_alive
    ev = sim.rec.frame("events")
    assert (ev.kind == "dropout").sum() == 1


def test_transfer_hazard() -> None:
    sim = Simulation(0)
    dev = _dev(sim, transfer_hazard_per_s=1.0)
    env = sim.env
    ends = []
    for _ in range(200):
        def victim() -> object:
            try:
                yield env.timeout(1e6)
            except simpy.Interrupt as intr:
                ends.append((env.now, intr.cause.reason))
        dev.watch(env.process(victim()), hazard=True)
    env.run(until=1e3)
    assert len(ends) == 200 and all(r == "link_failure" for _, r in ends)
    assert sum(t for t, _ in ends) / 200 == pytest.approx(1.0, rel=0.2)


def test_onoff_availability_fraction() -> None:
    sim = Simulation(4)
    p = replace(QUIET, mean_on_s=30.0, mean_off_s=10.0)
    devs = [Device(sim, f"d{i}", p, flops_per_s=1e9) for i in range(200)]
    sim.env.run(until=500.0)
    frac = sum(d.online for d in devs) / len(devs)
    assert frac == pytest.approx(0.75, abs=0.1)


def test_trace_driven_availability() -> None:
    tr = AvailabilityTrace((10.0, 50.0), (20.0, 70.0), 100.0)
    assert [tr.is_active(t) for t in (0, 10, 15, 20, 55, 99, 115, 165)] == [
        False, True, True, False, True, False, True, True]
    assert tr.state_at(15.0) == (True, 5.0)
    assert tr.state_at(75.0) == (False, 35.0)
    sim = Simulation(0)
    dev = Device(sim, "t", QUIET, flops_per_s=1e9, availability=tr)
    times = []
    for t in (5, 12, 30, 60, 80, 112):
        sim.env.run(until=t)
        times.append(dev.online)
    assert times == [False, True, False, True, False, True]


def test_fedscale_formats(tmp_path: Path) -> None:
    av = {7: {"active": [0.0, 100.0], "inactive": [50.0, 150.0], "finish_time": 200.0,
              "duration": 200.0, "model": "x"}}
    cap = {7: {"computation": 162.0, "communication": 5648.1}}
    pa, pc = tmp_path / "a.pkl", tmp_path / "c.pkl"
    pa.write_bytes(pickle.dumps(av))
    pc.write_bytes(pickle.dumps(cap))
    t = load_fedscale_availability(pa)["7"]
    assert t.is_active(25) and not t.is_active(75) and t.is_active(225)
    c = load_fedscale_capacity(pc, flops_per_sample=1e9)["7"]
    assert c.flops_per_s == pytest.approx(1e9 / 0.162)
    assert c.link_rate_bps == pytest.approx(5648.1e3)


def test_speed_draw_matches_class_distribution() -> None:
    sim = Simulation(9)
    p = default_device_classes()["phone"]
    speeds = [Device(sim, f"p{i}", p).base_flops_per_s for i in range(3000)]
    mean = sum(speeds) / len(speeds)
    assert mean == pytest.approx(p.flops_mean, rel=0.05)
    mu, sigma = lognormal_params(2.0, 0.5)
    assert math.exp(mu + sigma**2 / 2) == pytest.approx(2.0)
