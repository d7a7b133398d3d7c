"""Incremental max-min (bundles, virtual time) == a from-scratch max-min solution after every change."""

from __future__ import annotations

import math

import numpy as np
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.net.flows import Flow, FlowSystem, Link, maxmin_rates


def _check(fs: FlowSystem, flows: list[Flow], links: list[Link]) -> None:
    active = [f for f in flows if f.active]
    ref = maxmin_rates(active, links)
    for f in active:
        r = ref[f]
        assert math.isclose(f.rate, r, rel_tol=1e-9, abs_tol=1e-9), (f, r)
    for lk in links:  # link usage and load are the sums over its flows
        use = sum(a * ref[f] for f, a in lk.flows.items() if a != math.inf)
        assert math.isclose(lk.usage, use, rel_tol=1e-9, abs_tol=1e-6)
        assert use <= lk.capacity * (1 + 1e-9) + 1e-9
        assert math.isclose(lk.load_bps, sum(ref[f] for f in lk.flows), rel_tol=1e-9, abs_tol=1e-6)
    # superseded schedule entries never outnumber the live ones (plus a constant)
    assert fs.schedule_size <= 2 * len(fs._bundles) + 64 + 1


def _run(seed: int, n_links: int, n_events: int) -> int:
    """Random topology and a random sequence of changes; checks after each one."""
    rng = np.random.default_rng(seed)
    env = simpy.Environment()
    fs = FlowSystem(env)
    links = [fs.add_link(f"l{i}", "uplink" if i % 3 == 0 else "wired", "n",
                         float(rng.uniform(1e3, 1e5))) for i in range(n_links)]
    # a few fixed paths per topology, so bundles hold several flows
    paths = [sorted(rng.choice(n_links, size=int(rng.integers(1, min(4, n_links) + 1)),
                               replace=False).tolist()) for _ in range(max(3, n_links))]
    flows: list[Flow] = []
    completions = 0

    def coeff() -> float:
        return math.inf if rng.random() < 0.08 else float(rng.uniform(0.2, 3.0))

    for _ in range(n_events):
        op = rng.random()
        live = [f for f in flows if f.active]
        if op < 0.35 or not live:
            idx = paths[int(rng.integers(len(paths)))]
            cs = [coeff() if links[i].kind == "uplink" else 1.0 for i in idx]
            flows.append(fs.start([links[i] for i in idx], cs, float(rng.uniform(1e2, 5e4))))
        elif op < 0.5:
            fs.stop(live[int(rng.integers(len(live)))])
        elif op < 0.7:
            f = live[int(rng.integers(len(live)))]
            k = int(rng.integers(len(f.path)))
            fs.set_coeff(f, k, coeff() if f.path[k].kind == "uplink" else 1.0)
        elif op < 0.78:
            lk = links[int(rng.integers(n_links))]
            fs.set_capacity(lk, 0.0 if rng.random() < 0.1 else float(rng.uniform(1e3, 1e5)))
        elif op < 0.85:
            f = live[int(rng.integers(len(live)))]
            idx = paths[int(rng.integers(len(paths)))]
            fs.reroute(f, [links[i] for i in idx],
                       [coeff() if links[i].kind == "uplink" else 1.0 for i in idx])
        else:  # let time pass: flows complete, bundles advance their virtual time
            before = sum(1 for f in flows if f.active)
            env.run(until=env.now + float(rng.exponential(0.5)))
            completions += before - sum(1 for f in flows if f.active)
        _check(fs, flows, links)
    return completions


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_links=st.integers(1, 10))
def test_incremental_rates_equal_from_scratch(seed: int, n_links: int) -> None:
    _run(seed, n_links, 150)


def test_incremental_thousands_of_events() -> None:
    completions = 0
    for seed in range(3):
        completions += _run(1000 + seed, 14, 1500)
    assert completions > 100  # the completion path was exercised


def test_completion_times_exact_in_a_bundle() -> None:
    """Three flows of one path (one bundle) started at different times: hand-computed finishes."""
    env = simpy.Environment()
    fs = FlowSystem(env)
    lk = fs.add_link("l", "wired", "a", 8.0)  # 1 byte/s
    ends: dict[str, float] = {}

    def go(name: str, t0: float, nbytes: float):
        yield env.timeout(t0)
        res = yield fs.transfer([lk], [1.0], nbytes)
        ends[name] = res.end_s

    env.process(go("a", 0.0, 4.0))
    env.process(go("b", 1.0, 2.0))
    env.process(go("c", 2.0, 1.0))
    env.run()
    # a alone 1 B in [0,1); a,b share in [1,2): 0.5 B each; a,b,c 1/3 B each until c ends at 5;
    # then a (1.5 B left... ) : a=4-1-0.5-1=1.5, b=2-0.5-1=0.5 -> b ends at 6, a at 6+1=7
    assert ends["c"] == 5.0
    assert math.isclose(ends["b"], 6.0)
    assert math.isclose(ends["a"], 7.0)
    assert math.isclose(lk.bytes_carried, 7.0)


def test_stop_at_the_instant_a_bundle_was_due_does_not_finish_another_flow() -> None:
    """Deferred recomputation: a flow stopped at the very instant its bundle's wake is due
    must not make the wake complete the bundle's next flow early."""
    env = simpy.Environment()
    fs = FlowSystem(env, defer=True)
    lk = fs.add_link("l", "wired", "a", 8.0)  # 1 byte/s
    flows: dict[str, object] = {}
    ends: dict[str, float] = {}

    def stopper():  # created first: its timeout is queued before the bundle's wake
        yield env.timeout(4.0)
        fs.stop(flows["a"])  # same instant as a's scheduled completion

    def starter():
        yield env.timeout(0.0)
        for name, size in (("a", 2.0), ("b", 10.0)):  # a due at t = 4 while sharing with b
            f = fs.start([lk], [1.0], size)
            f.done.callbacks.append(lambda e, n=name: ends.setdefault(n, env.now))
            flows[name] = f

    env.process(stopper())
    env.process(starter())
    env.run()
    # b: 2 bytes by t = 4 (0.5 B/s), then 8 bytes alone at 1 B/s -> t = 12
    assert math.isclose(ends["b"], 12.0), ends
    assert math.isclose(flows["b"].done_bits, 80.0)
