"""Availability traces: the clock always advances and the online/offline sequence is the
trace's, period after period (issue 18, item 1)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedsim.devices import AvailabilityTrace, Device, DeviceClassParams
from fedsim.engine import Simulation
from fedsim.engine.clock import delay_to, step

QUIET = DeviceClassParams(flops_mean=1e9, flops_cv=0.0, background_load_mean=0.0,
                          memory_gb=4.0, memory_pressure_levels=(0.25,),
                          memory_pressure_mean_hold_s=(1.0,), memory_pressure_jump=((0.0,),),
                          mean_on_s=math.inf, mean_off_s=1.0)


def _expected_toggles(active: list[float], inactive: list[float], period: float) -> list[tuple[float, bool]]:
    """One period's state changes, computed independently (state sampled just after
    each distinct edge, compared with the state just before it)."""
    def online(x: float) -> bool:  # x in [0, period)
        return any(a <= x < b for a, b in zip(active, inactive))

    edges = sorted({0.0, *(v for v in active + inactive if 0.0 < v < period)})
    out = []
    prev = online(math.nextafter(period, 0.0))  # state just before the wrap
    for e in edges:
        now = online(e)
        if now != prev:
            out.append((e, now))
        prev = now
    return out


def _drive(tr: AvailabilityTrace, until_s: float, max_steps: int = 200_000) -> tuple[bool, list[tuple[float, bool]]]:
    """Run one device on ``tr`` until ``until_s``; return its initial state and its
    recorded state changes. Fails (instead of spinning) if the clock stops."""
    sim = Simulation(0)
    dev = Device(sim, "d", QUIET, flops_per_s=1e9, availability=tr)
    first = dev.online
    env = sim.env
    steps = 0
    last = -math.inf
    while env.peek() <= until_s:
        t = env.peek()
        assert t >= env.now
        env.step()
        steps += 1
        assert steps < max_steps, f"clock stuck at t={env.now!r}"
        last = max(last, env.now)
    ev = sim.rec.frames()["events"] if sim.rec.frames() else None
    changes: list[tuple[float, bool]] = []
    if ev is not None and len(ev):
        for t, kind in zip(ev["t_s"], ev["kind"]):
            if kind in ("online", "dropout"):
                changes.append((float(t), kind == "online"))
    return first, changes


def test_minimal_input_of_the_report_does_not_freeze() -> None:
    """Online 0.2 s .. 27 s of every 30 s: the phase recomputed from the absolute time
    froze the clock or raised ``Negative delay`` once the period wrapped."""
    tr = AvailabilityTrace((0.2,), (27.0,), 30.0)
    first, ch = _drive(tr, 3000.0)
    assert first is False
    assert len(ch) == 200
    for c, (t, on) in enumerate(ch):
        cyc, k = divmod(c, 2)
        assert on == (k == 0)
        assert t == pytest.approx(cyc * 30.0 + (0.2 if on else 27.0), abs=1e-9)
    ts = [t for t, _ in ch]
    assert all(b > a for a, b in zip(ts, ts[1:]))


def test_always_online_across_the_wrap_never_toggles() -> None:
    tr = AvailabilityTrace((0.0,), (30.0,), 30.0)
    first, ch = _drive(tr, 1000.0)
    assert first is True and ch == []
    tr2 = AvailabilityTrace((0.0, 20.0), (10.0, 30.0), 30.0)  # online across the wrap, off 10..20
    first, ch = _drive(tr2, 95.0)
    assert first is True
    assert [on for _, on in ch] == [False, True] * 3
    assert [t for t, _ in ch] == pytest.approx([10, 20, 40, 50, 70, 80])


def test_intervals_beyond_the_period_are_clipped_and_touching_ones_merge() -> None:
    tr = AvailabilityTrace((1.0, 3.0, 8.0), (3.0, 5.0, 50.0), 10.0)
    assert tr.toggles == ((0.0, False), (1.0, True), (5.0, False), (8.0, True))


def test_edges_closer_than_the_clock_resolution_merge_and_the_clock_still_advances() -> None:
    # at t ~ 1e12 an ulp is ~1e-4 s: the 1e-6 s offline gap cannot be represented
    tr = AvailabilityTrace((0.0, 5.0 + 1e-6), (5.0, 9.0), 10.0)
    online, changes = tr.timeline(1e12)
    first = [next(changes) for _ in range(4)]
    ts = [t for t, _ in first]
    assert all(b > a for a, b in zip(ts, ts[1:])) and ts[0] > 1e12
    assert [on for _, on in first] == [False, True, False, True]


def test_clock_helpers() -> None:
    assert step(0.0, 0.0) > 0.0
    big = 1e16
    d = step(big, 1e-3)  # below half an ulp of 1e16
    assert big + d > big
    assert delay_to(5.0, 5.0) > 0 and 5.0 + delay_to(5.0, 5.0) > 5.0
    assert delay_to(5.0, 7.5) == 2.5
    with pytest.raises(ValueError):
        step(0.0, math.nan)


@st.composite
def traces(draw: st.DrawFn) -> tuple[list[float], list[float], float]:
    period = draw(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False))
    n = draw(st.integers(min_value=0, max_value=6))
    # interval edges on a grid of period / 1000 (plus exact 0 and period), some touching
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=1000), min_size=2 * n, max_size=2 * n)))
    act = [c * period / 1000.0 for c in cuts[0::2]]
    ina = [c * period / 1000.0 for c in cuts[1::2]]
    return act, ina, period


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.floats(min_value=0.0, max_value=5.0))
@example(([0.0], [536871.3660526399], 536871.36605264), 0.0)  # CI: a 1-ulp offline gap at the period's end
def test_property_clock_advances_and_sequence_repeats(tr_args: tuple[list[float], list[float], float],
                                                      start_frac: float) -> None:
    """Thousands of random traces and periods: every state change moves the clock
    forward, and the changes are the trace's, period after period."""
    act, ina, period = tr_args
    tr = AvailabilityTrace(tuple(act), tuple(ina), period)
    want = _expected_toggles(act, ina, period)
    assert list(tr.toggles) == want
    periods = 7
    first, ch = _drive(tr, periods * period)
    ts = [t for t, _ in ch]
    assert all(b > a for a, b in zip(ts, ts[1:])), "the clock must advance between state changes"
    # expected sequence over the horizon (excluding the instant 0 itself)
    raw = [(c * period + off, on) for c in range(periods + 1) for off, on in want
           if 0.0 < c * period + off <= periods * period * (1 + 1e-12)]
    assert first == (want[0][1] if want and want[0][0] == 0.0 else tr.timeline(0.0)[0])
    # edges the float clock cannot separate (an offline gap of an ulp at the period's end, whose
    # off edge rounds onto the next period's on edge) are one instant: the state after it is
    # the last edge's, and an instant that leaves the state unchanged is no change (documented
    # in AvailabilityTrace.timeline)
    exp: list[tuple[float, bool]] = []
    state = first
    i = 0
    while i < len(raw):
        j = i
        while j + 1 < len(raw) and raw[j + 1][0] == raw[i][0]:
            j += 1
        if raw[j][1] != state:
            exp.append((raw[i][0], raw[j][1]))
            state = raw[j][1]
        i = j + 1
    assert [on for _, on in ch] == [on for _, on in exp][:len(ch)]
    assert len(exp) - len(ch) <= 1  # the very last edge may fall just past the horizon by rounding
    for (t, _), (te, _) in zip(ch, exp):
        assert t == pytest.approx(te, rel=1e-12, abs=1e-12 * period)
    # timelines started at any instant agree with the device's sequence
    t0 = start_frac * period
    on0, it = tr.timeline(t0)
    nxt = [c for c in ch if c[0] > t0][:3]
    got = [next(it, None) for _ in range(len(nxt))]
    assert [g[1] for g in got if g] == [c[1] for c in nxt]  # the device's clock may differ by an ulp
    assert [g[0] for g in got if g] == pytest.approx([c[0] for c in nxt], rel=1e-12, abs=1e-12 * period)
    before = [c for c in ch if c[0] <= t0]
    assert on0 == (before[-1][1] if before else first)


def test_trace_scenario_runs_past_the_period(tmp_path: Path) -> None:
    """The report's minimal input end to end: a FedScale trace online 0.2..27 s of every
    30 s, a run longer than 30 s. Before the fix it spun forever at one instant."""
    from fedsim.cli import main

    av = {0: {"active": [0.2], "inactive": [27.0], "finish_time": 30.0}}
    (tmp_path / "av.pkl").write_bytes(pickle.dumps(av))
    repo = Path(__file__).resolve().parents[1]
    scen = tmp_path / "s.yaml"
    scen.write_text(f"extends: {repo / 'scenarios' / 'smart-city-small.yaml'}\n"
                    f"devices: {{availability_trace: {tmp_path / 'av.pkl'}}}\n")
    out = tmp_path / "run"
    code = main(["run", str(scen), "--out", str(out), "--quiet", "--no-figures",
                 "--set", "run.rounds=4", "--set", "protocol.fedmoe.server_compute_s=5",
                 "--set", "data.max_train_samples=200", "--set", "evaluation.max_test_samples=100",
                 "--set", "topology.grid.clients={phone: 2, camera: 2}",
                 "--set", "protocol.fedmoe.deadline_s=20"])
    assert code == 0
    import json

    import pandas as pd
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "completed" and m["sim_end_s"] > 30.0
    ev = pd.read_parquet(out / "events.parquet")
    ch = ev[ev["kind"].isin(["online", "dropout"]) & (ev["reason"].fillna("offline") == "offline")
            if "reason" in ev else ev["kind"].isin(["online", "dropout"])]
    assert len(ch) > 0


