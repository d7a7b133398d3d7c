"""Link sampling: the last partial interval is written, idle intervals are zeros, and the
bytes in ``links`` equal the bytes each link carried (issue 18, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.engine import Simulation
from fedsim.net.network import Network
from fedsim.net.params import ChannelParams, NetworkParams
from fedsim.net.topology import manhattan_grid


def _bytes_by_link(sim: Simulation) -> tuple[pd.Series, pd.Series]:
    links = sim.rec.frame("links")
    edges = sim.rec.frame("edges")
    carried = pd.Series(edges.bytes_carried.to_numpy(), index=edges.link)
    return links.groupby("link")["bytes"].sum(), carried


@pytest.mark.parametrize("end_s", [4.09, 7.3, 12.0])
def test_link_bytes_equal_bytes_carried_for_runs_ending_mid_interval(end_s: float) -> None:
    sim = Simulation(3)
    g = manhattan_grid(blocks_x=3, blocks_y=3, bs_sites=[(0, 0, "macro"), (3, 3, "macro"), (1, 2, "small")],
                       clients_per_class={"phone": 6, "vehicle": 4, "camera": 3},
                       rng=sim.rng.numpy("topology"))
    from fedsim.devices.params import default_device_classes

    net = Network(sim, g, NetworkParams(channel=ChannelParams(), link_sample_interval_s=5.0,
                                        mobility_interval_s=1.0), "cloud",
                  classes=default_device_classes())
    env = sim.env
    rng = np.random.default_rng(0)
    procs = []
    for i, c in enumerate(net.client_ids):  # uploads and downloads, staggered, some interrupted
        def go(c: str = c, i: int = i) -> object:
            yield env.timeout(0.9 * i)
            p = net.transfer(c, "cloud", float(rng.integers(1e6, 3e7)), tag="up")
            q = net.transfer("cloud", c, float(rng.integers(1e6, 3e7)), tag="down")
            procs.extend((p, q))
            if i % 4 == 0:
                yield env.timeout(0.05)
                if p.is_alive:
                    p.interrupt("cut")
            yield p & q
        env.process(go())
    env.run(until=end_s)
    assert any(p.is_alive for p in procs), "some transfers must still be in flight at the end"
    net.finish()
    got, carried = _bytes_by_link(sim)
    assert carried.sum() > 0
    for name, b in carried.items():
        if b == 0:
            assert got.get(name, 0.0) == 0.0
            continue
        assert got[name] == pytest.approx(b, abs=0.5), name  # to the byte (measured: < 1e-7 B)
    links = sim.rec.frame("links")
    assert links.t_s.max() == pytest.approx(end_s)  # the final partial interval
    last = links[links.t_s == links.t_s.max()]
    assert (last.interval_s < 5.0 + 1e-9).all()
    # every link that carried traffic has a row in every interval since its first one
    for _, d in links.groupby("link"):
        ts = d.t_s.to_numpy()
        k = np.arange(len(ts))
        assert np.allclose(ts[:-1], (round(ts[0] / 5.0) + k[:-1]) * 5.0)


def test_run_shorter_than_one_interval_writes_links(tmp_path: Path) -> None:
    """A run of a few seconds with the default 5 s sampling wrote no links.parquet at all."""
    from fedsim.cli import main

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "r"
    code = main(["run", str(repo / "scenarios" / "smart-city-small.yaml"), "--out", str(out), "--quiet",
                 "--no-figures", "--set", "run.rounds=1", "--set", "output.link_sample_s=1000",
                 "--set", "data.max_train_samples=200", "--set", "evaluation.max_test_samples=100",
                 "--set", "topology.grid.clients={phone: 3, camera: 2}"])
    assert code == 0
    links = pd.read_parquet(out / "links.parquet")
    edges = pd.read_parquet(out / "edges.parquet")
    assert len(links) > 0 and links.t_s.max() < 1000
    assert links["bytes"].sum() == pytest.approx(edges.bytes_carried.sum(), abs=len(edges))



def test_rate_cap_limits_a_clients_flows_and_is_shared_by_them() -> None:
    """FedScale's device ``communication`` rate caps the client's access link: alone a
    flow runs at the cap; two concurrent uploads share it; downloads have their own."""
    from fedsim.net.topology import explicit

    g = explicit([{"id": "cloud", "kind": "cloud"},
                  {"id": "bs", "kind": "bs_small", "x": 0, "y": 0, "z": 10},
                  {"id": "c", "kind": "client", "device_class": "sensor", "x": 30, "y": 0, "z": 1.5}],
                 [{"src": "bs", "dst": "cloud", "capacity_bps": 1e9, "latency_s": 0.0}])
    cp = ChannelParams(model="free_space", fading="none", shadowing_std_db=0.0, access_latency_s=0.0)
    sim = Simulation(0)
    net = Network(sim, g, NetworkParams(channel=cp, link_sample_interval_s=1.0), "cloud")
    free = net.nominal_rate_bps("c", "up")
    cap = 1e6
    assert free > 10 * cap
    net.set_rate_cap("c", cap)
    assert net.nominal_rate_bps("c", "up") == cap
    ups = [net.transfer("c", "cloud", 125_000.0) for _ in range(2)]  # 1 Mbit each
    down = net.transfer("cloud", "c", 125_000.0)
    sim.env.run(until=sim.env.all_of([*ups, down]))
    assert [p.value.seconds for p in ups] == [pytest.approx(2.0, rel=1e-9)] * 2
    assert down.value.seconds == pytest.approx(1.0, rel=1e-9)
    net.finish()
    got, carried = _bytes_by_link(sim)
    assert carried["c/cap_up"] == pytest.approx(250_000.0) and got["c/cap_up"] == pytest.approx(250_000.0)
    with pytest.raises(ValueError):
        net.set_rate_cap("c", 0.0)
