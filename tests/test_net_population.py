"""Lazy population (trajectories, keyed fading, on-demand channels) vs today's eager model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedsim.devices import DEVICE_CLASSES, default_device_classes
from fedsim.engine import Simulation
from fedsim.engine.clock import block_index
from fedsim.net import NetworkParams, manhattan_grid
from fedsim.net.network import Network
from fedsim.net.params import ChannelParams
from fedsim.net.population import LazyNetwork, next_block
from fedsim.net.trajectory import Trajectories
from fedsim.rng import RngStreams


def _build(cls: type[Network], seed: int, per: dict[str, int], blocks: int = 8,
           block_m: float = 150.0, **ch: object) -> tuple[Simulation, Network]:
    sim = Simulation(seed)
    sites = [(ix, iy, "macro" if (ix + iy) % 4 == 0 else "small")
             for ix in range(1, blocks, 3) for iy in range(1, blocks, 3)]
    g = manhattan_grid(blocks_x=blocks, blocks_y=blocks, block_m=block_m, bs_sites=sites,
                       clients_per_class=per, rng=sim.rng.numpy("topology"))
    params = NetworkParams(channel=ChannelParams(**ch), link_sample_interval_s=0.0)
    return sim, cls(sim, g, params, server="cloud", classes=default_device_classes())


def test_keyed_fading_lazy_equals_eager_in_any_order() -> None:
    sim, net = _build(LazyNetwork, 3, {c: 20 for c in DEVICE_CLASSES})
    assert isinstance(net, LazyNetwork)
    n = len(net.client_ids)
    rows = np.arange(n)
    eager = np.stack([net.fading_power(rows, b) for b in range(50)])  # every client, every block
    rng = np.random.default_rng(0)
    for _ in range(200):  # single lazy queries, random order
        i, b = int(rng.integers(n)), int(rng.integers(50))
        assert net.fading_power(np.array([i]), b)[0] == eager[b, i]


def test_keyed_fading_distribution_matches_eager_draws() -> None:
    """Lazy keyed Rayleigh / Rician powers vs the eager model's numpy draws (two-sample KS)."""
    for fading in ("rayleigh", "rician"):
        sim, lazy = _build(LazyNetwork, 1, {"phone": 50}, fading=fading)
        _, eager = _build(Network, 1, {"phone": 50}, fading=fading)
        rows = np.repeat(np.arange(50), 400)
        blocks = np.tile(np.arange(400), 50)
        a = lazy.fading_power(rows, blocks)
        b = eager._draw_fading(a.size)
        assert abs(a.mean() - 1.0) < 0.02  # unit mean (hand value)
        assert stats.ks_2samp(a, b).pvalue > 0.01, fading


def test_trajectory_exact_and_query_order_free() -> None:
    n = 30
    pos = np.column_stack([np.full(n, 300.0), np.linspace(0, 600, n), np.full(n, 1.5)])
    streets = {"blocks_x": 6, "blocks_y": 6, "block_m": 100.0}
    modes = ["street"] * 10 + ["walk"] * 10 + ["fly"] * 5 + ["highway"] * 5
    args = (modes, [(5.0, 15.0)] * n, [(30.0, 120.0)] * n, streets, (0.0, 0.0, 600.0, 600.0))
    key = RngStreams(7).counter("mobility")
    a = Trajectories(pos, *args, key)
    b = Trajectories(pos, *args, key)
    rows = np.arange(n)
    for t in np.linspace(0.5, 500.0, 400):  # a: queried often
        pa, oa = a.positions(rows, float(t))
    pb, ob = b.positions(rows, 500.0)  # b: only at the end
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(oa, ob)
    # piecewise linear: mid-leg position is the average of the leg's ends
    i = 0
    tm = 0.5 * (a.t0[i] + a.t1[i])
    p, _ = a.positions(np.array([i]), tm)
    np.testing.assert_allclose(p[0], 0.5 * (a.p0[i] + a.p1[i]))
    # street and highway clients stay on streets; highway ones on their road (y fixed)
    for t in (600.0, 900.0):
        p, _ = a.positions(rows, t)
        on = np.minimum(np.abs(p[:10, 0] % 100.0), np.abs(p[:10, 1] % 100.0))
        assert np.all(np.minimum(on, 100.0 - on) < 1e-6)
        np.testing.assert_allclose(p[25:, 1], np.round(pos[25:, 1] / 100.0) * 100.0)


def _drive(cls: type[Network], seed: int, seconds: float) -> tuple[int, float, np.ndarray, np.ndarray]:
    """Every client downloads 4 MB again and again (always connected): handovers,
    client-minutes, per-transfer mean rates and the connected clients' downlink SE
    sampled every second."""
    sim, net = _build(cls, seed, {"vehicle": 60, "pedestrian": 30, "sensor": 20},
                      blocks=8, block_m=150.0)
    rates: list[float] = []
    se: list[float] = []

    def loop(c: str):
        while sim.env.now < seconds:
            res = yield net.transfer("cloud", c, 4e6)
            rates.append(res.delivered_bytes * 8.0 / res.seconds)

    def sample():
        while True:
            yield sim.env.timeout(1.0)
            se.extend(net.se_down[np.array(sorted(net._active), dtype=np.int64)].tolist())

    for c in net.client_ids:
        sim.env.process(loop(c))
    sim.env.process(sample())
    sim.env.run(until=seconds)
    return net.handovers, len(net.client_ids) * seconds / 60.0, np.array(rates), np.array(se)


def _compare(seeds: range, seconds: float) -> dict[str, float]:
    out: dict[str, list] = {"Network": [], "LazyNetwork": []}
    for cls in (Network, LazyNetwork):
        for seed in seeds:
            out[cls.__name__].append(_drive(cls, seed, seconds))
    e, lz = out["Network"], out["LazyNetwork"]
    he = sum(x[0] for x in e) / sum(x[1] for x in e)
    hl = sum(x[0] for x in lz) / sum(x[1] for x in lz)
    re, rl = np.concatenate([x[2] for x in e]), np.concatenate([x[2] for x in lz])
    se, sl = np.concatenate([x[3] for x in e]), np.concatenate([x[3] for x in lz])
    return {"ho_e": he, "ho_l": hl, "rate_ratio": float(np.median(rl) / np.median(re)),
            "rate_ks": float(stats.ks_2samp(re, rl).statistic),
            "se_ratio": float(sl.mean() / se.mean()), "se_ks": float(stats.ks_2samp(se, sl).statistic)}


def test_connected_channel_and_throughput_match_eager() -> None:
    """Clients always connected: the lazy model's SE and throughput distributions and its
    handover rate are the eager model's (same channel model, different draws)."""
    r = _compare(range(2), 60.0)
    assert r["ho_e"] > 0.05  # handovers happen at all
    assert abs(r["ho_l"] / r["ho_e"] - 1.0) < 0.3, r
    assert abs(r["se_ratio"] - 1.0) < 0.03 and r["se_ks"] < 0.05, r
    assert abs(r["rate_ratio"] - 1.0) < 0.15 and r["rate_ks"] < 0.1, r


@pytest.mark.slow
def test_handover_rate_matches_eager_many_seeds() -> None:
    """6 seeds x 90 s (measured: lazy / eager handovers 0.947, SE mean 1.003)."""
    r = _compare(range(6), 90.0)
    assert abs(r["ho_l"] / r["ho_e"] - 1.0) < 0.1, r
    assert abs(r["se_ratio"] - 1.0) < 0.02, r
    assert abs(r["rate_ratio"] - 1.0) < 0.08, r


def test_idle_clients_cost_no_events() -> None:
    """Without transfers, the lazy network schedules nothing per client (eager: per second)."""
    per = {c: 100 for c in DEVICE_CLASSES}
    sim_l, _ = _build(LazyNetwork, 0, per)
    sim_l.env.run(until=300.0)
    sim_e, _ = _build(Network, 0, per)
    sim_e.env.run(until=300.0)
    assert next(sim_l.env._eid) <= 5
    assert next(sim_e.env._eid) >= 300


@settings(max_examples=500, deadline=None)
@given(st.floats(1e-3, 10.0), st.integers(0, 10**9), st.integers(1, 5))
def test_fading_loop_clock_always_advances(c: float, k: int, steps: int) -> None:
    """The lazy fading loop's next event (``next_block``) is strictly in the future and
    handles each block once, even on a boundary the loop itself computed, where float
    phase arithmetic (``(floor(now / c + eps) + 1) * c``) gave a zero delay (e.g.
    c = 1.5510991035597232 s, block 31,250,000)."""
    now, b = k * c, k
    for _ in range(steps):
        nb, delay = next_block(now, c, b)
        assert nb > b and delay > 0.0 and now + delay > now
        assert nb * c > now
        now, b = now + delay, nb
        assert block_index(now, c) in (b - 1, b)  # landed on (or one ulp short of) the boundary


def test_fading_loop_old_phase_arithmetic_stalls() -> None:
    """The counterexample above really stalled the old formula (so the property can fail)."""
    c, k = 1.5510991035597232, 31_250_000
    now = k * c
    old = (math.floor(now / c + 1e-9) + 1) * c
    assert now + (old - now) == now
    nb, delay = next_block(now, c, k)
    assert nb == k + 1 and now + delay > now


class _OneAtATime(LazyNetwork):
    """The lazy network measuring every client alone (the reference for the cohort pass)."""

    def _prefetched(self, i: int) -> None:
        return None


def _cohort_rounds(cls: type[Network]) -> tuple[Simulation, LazyNetwork, list[int]]:
    """Every 15 s every client downloads 2 MB from the cloud (a cohort starting at one
    instant), then uploads it; 4 rounds with mobility, fading and handovers."""
    sim, net = _build(cls, 5, {"vehicle": 40, "phone": 40, "drone": 10, "sensor": 10})
    assert isinstance(net, LazyNetwork)
    sizes: list[int] = []
    orig = net._measure

    def measure(rows: np.ndarray, with_se: bool = False) -> dict[str, object]:
        sizes.append(int(rows.size))
        return orig(rows, with_se)

    net._measure = measure  # type: ignore[method-assign]

    def client(c: str) -> object:
        yield net.transfer("cloud", c, 2e6)
        yield net.transfer(c, "cloud", 1e6)

    def server() -> object:
        for _ in range(4):
            for c in net.client_ids:
                sim.env.process(client(c))
            yield sim.env.timeout(15.0)

    sim.env.process(server())
    sim.env.run(until=60.0)
    return sim, net, sizes


def test_cohort_measured_in_one_pass_same_results() -> None:
    """The channels of the transfers started at one instant are measured in one vectorised
    pass (issue 28: one ~100-call evaluation per client made the busy regime 1.66x dearer per
    client-round at 10k), with the same events, rates and channel state as one at a time."""
    sim_b, net_b, sizes_b = _cohort_rounds(LazyNetwork)
    sim_r, net_r, sizes_r = _cohort_rounds(_OneAtATime)
    assert max(sizes_b) >= 50  # the cohort (100 clients, those due an evaluation) in one pass
    assert len(sizes_b) < len(sizes_r) / 5
    assert net_b.evaluations == net_r.evaluations and net_b.handovers == net_r.handovers > 0
    ev_b, ev_r = sim_b.rec.frame("events"), sim_r.rec.frame("events")
    assert len(ev_b) > 400
    assert ev_b.equals(ev_r)
    for a in ("serving", "se_up", "se_down", "_cz", "_closs", "_gen", "_t_eval", "pos"):
        assert np.array_equal(getattr(net_b, a), getattr(net_r, a), equal_nan=True), a


def test_lazy_nominal_rate_is_the_networks_own_with_the_access_cap() -> None:
    """LazyNetwork.nominal_rate_bps is Network's (one SINR-to-rate step): the device's access
    rate cap applies, which the copy it replaced left out."""
    sim, net = _build(LazyNetwork, 2, {"phone": 5})
    c = max(net.client_ids, key=lambda x: net.nominal_rate_bps(x, "up"))
    assert net.nominal_rate_bps(c, "down") > 1e6 and net.nominal_rate_bps(c, "up") > 1e5
    net.set_rate_cap(c, 1e5)
    assert net.nominal_rate_bps(c, "down") == 1e5 and net.nominal_rate_bps(c, "up") == 1e5


def test_one_fading_loop_across_idle_gaps() -> None:
    """A client idle for less than a coherence block, after the mobility loop stopped, gets
    no second fading loop (two ran side by side, each refreshing every flow every block)."""
    sim, net = _build(LazyNetwork, 1, {"phone": 3}, coherence_s=5.0)
    c = max(net.client_ids, key=lambda x: net.nominal_rate_bps(x, "down"))
    net.set_rate_cap(c, 1e6)

    def client() -> object:
        while sim.env.now < 60.0:
            yield net.transfer("cloud", c, 3e6 / 8)  # 3 s at the cap
            yield sim.env.timeout(1.5)  # the mobility loop (1 s) stops; the fading one sleeps

    sim.env.process(client())
    sim.env.run(until=60.0)
    assert 0 < net.fading_blocks <= 60.0 / 5.0
