"""Property tests: byte conservation and capacity under random flows and interruptions."""

from __future__ import annotations

import math

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.net.flows import FlowSystem

flow_spec = st.tuples(
    st.floats(0.0, 5.0),  # start time
    st.floats(1.0, 5e4),  # bytes
    st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),  # links
    st.one_of(st.none(), st.floats(0.0, 6.0)),  # interrupt time
    st.floats(0.2, 3.0),  # coefficient on the first link
)


@settings(max_examples=40, deadline=None)
@given(flows=st.lists(flow_spec, min_size=1, max_size=12),
       caps=st.lists(st.floats(1e3, 1e5), min_size=4, max_size=4),
       changes=st.lists(st.tuples(st.floats(0.0, 6.0), st.integers(0, 3), st.floats(0.0, 1e5)),
                        max_size=4),
       defer=st.booleans())
def test_conservation_and_capacity(flows, caps, changes, defer) -> None:
    env = simpy.Environment()
    fs = FlowSystem(env, defer=defer)
    links = [fs.add_link(f"l{i}", "wired" if i else "uplink", "n", c) for i, c in enumerate(caps)]
    procs = []
    violations: list[str] = []

    def check(_ev: object = None) -> None:
        fs.flush()
        for lk in links:
            use = sum(a * f.rate for f, a in lk.flows.items() if a != math.inf)
            if use > lk.capacity * (1 + 1e-6) + 1e-9:
                violations.append(f"{lk.name}: {use} > {lk.capacity}")

    def launcher(t0: float, nbytes: float, idx: list[int], t_int: float | None, a0: float):
        yield env.timeout(t0)
        path = [links[i] for i in idx]
        coeffs = [a0 if i == 0 else 1.0 for i in idx]
        p = fs.transfer(path, coeffs, nbytes)
        procs.append(p)
        if t_int is not None:
            yield env.timeout(t_int)
            if p.is_alive:
                p.interrupt("cut")

    def changer(t: float, i: int, c: float):
        yield env.timeout(t)
        fs.set_capacity(links[i], c)

    def monitor():
        while env.now < 12.0:  # every start, interruption and change happens before
            yield env.timeout(0.05)
            check()

    for spec in flows:
        env.process(launcher(*spec))
    for ch in changes:
        env.process(changer(*ch))
    env.process(monitor())
    # capacities can drop to 0: bound the run, then interrupt leftovers
    env.run(until=5000.0)
    for p in procs:
        if p.is_alive:
            p.interrupt("end")
    env.run(until=5001.0)
    assert not violations, violations[:3]
    total_by_link = {lk.name: 0.0 for lk in links}
    for p in procs:
        r = p.value
        assert math.isclose(r.delivered_bytes + r.lost_bytes, r.requested_bytes, rel_tol=1e-12)
        assert 0.0 <= r.delivered_bytes <= r.requested_bytes * (1 + 1e-12)
        if r.completed:
            assert r.delivered_bytes == r.requested_bytes
        for name in r.path:
            total_by_link[name] += r.delivered_bytes
    for lk in links:
        assert math.isclose(lk.bytes_carried, total_by_link[lk.name], rel_tol=1e-9, abs_tol=1e-6)
        assert not lk.flows
