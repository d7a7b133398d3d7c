"""Lazy population (trajectories, keyed fading, on-demand channels) vs today's eager model."""

from __future__ import annotations

import numpy as np
from scipy import stats

from fedsim.devices import DEVICE_CLASSES, default_device_classes
from fedsim.engine import Simulation
from fedsim.net import NetworkParams, manhattan_grid
from fedsim.net.network import Network
from fedsim.net.params import ChannelParams
from fedsim.net.population import LazyNetwork
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


def _drive(cls: type[Network], seed: int) -> tuple[float, np.ndarray, int, int]:
    """Every client downloads 4 MB again and again for 240 s: handovers per client-minute,
    per-transfer mean rates, events, and transfers."""
    sim, net = _build(cls, seed, {"vehicle": 60, "pedestrian": 30, "sensor": 20},
                      blocks=8, block_m=150.0)
    rates: list[float] = []

    def loop(c: str):
        while sim.env.now < 240.0:
            res = yield net.transfer("cloud", c, 4e6)
            rates.append(res.delivered_bytes * 8.0 / res.seconds)

    for c in net.client_ids:
        sim.env.process(loop(c))
    sim.env.run(until=240.0)
    minutes = len(net.client_ids) * 4.0
    return net.handovers / minutes, np.array(rates), next(sim.env._eid), len(rates)


def test_handover_rate_and_throughput_match_eager() -> None:
    """Clients always connected: the lazy model's handover rate and throughput distribution
    are the eager model's (same channel model, different draws; several seeds)."""
    ho_e, ho_l, r_e, r_l = [], [], [], []
    for seed in range(3):
        h, r, _, _ = _drive(Network, seed)
        ho_e.append(h)
        r_e.append(r)
        h, r, _, _ = _drive(LazyNetwork, seed)
        ho_l.append(h)
        r_l.append(r)
    he, hl = float(np.mean(ho_e)), float(np.mean(ho_l))
    assert he > 0.05  # handovers happen at all
    assert abs(hl - he) / he < 0.2, (he, hl)
    a, b = np.concatenate(r_e), np.concatenate(r_l)
    assert abs(np.median(b) - np.median(a)) / np.median(a) < 0.1, (np.median(a), np.median(b))
    assert stats.ks_2samp(a, b).statistic < 0.1


def test_idle_clients_cost_no_events() -> None:
    """Without transfers, the lazy network schedules nothing per client (eager: per second)."""
    per = {c: 100 for c in DEVICE_CLASSES}
    sim_l, _ = _build(LazyNetwork, 0, per)
    sim_l.env.run(until=300.0)
    sim_e, _ = _build(Network, 0, per)
    sim_e.env.run(until=300.0)
    assert next(sim_l.env._eid) <= 5
    assert next(sim_e.env._eid) >= 300
