"""Topology builders and reachability."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from fedsim.net.topology import explicit, from_graphml, manhattan_grid, unreachable_clients


def test_manhattan_grid_conventions() -> None:
    g = manhattan_grid(blocks_x=4, blocks_y=4, block_m=100.0,
                       bs_sites=[(2, 2, "macro"), (0, 0, "small")],
                       clients_per_class={"vehicle": 3, "drone": 2, "sensor": 1},
                       rng=np.random.default_rng(0))
    kinds = nx.get_node_attributes(g, "kind")
    assert kinds["bs0"] == "bs_macro" and kinds["bs1"] == "bs_small"
    assert kinds["cloud"] == "cloud" and kinds["edge0"] == "edge"
    cl = [n for n, k in kinds.items() if k == "client"]
    assert len(cl) == 6
    for n, d in g.nodes(data=True):
        assert {"x", "y", "z"} <= set(d)
        if d["kind"] == "client":
            assert not list(g.neighbors(n))
            if d["device_class"] == "vehicle":  # on a street centre line
                assert min(d["x"] % 100, d["y"] % 100) < 1e-9 or d["x"] in (0.0, 400.0)
            if d["device_class"] == "drone":
                assert 30.0 <= d["z"] <= 120.0
    for _, _, d in g.edges(data=True):
        assert d["kind"] == "wired" and d["capacity_bps"] > 0 and d["latency_s"] >= 0
    assert nx.has_path(g, "bs1", "cloud")
    assert unreachable_clients(g, "cloud") == []


def test_grid_is_deterministic() -> None:
    a = manhattan_grid(rng=np.random.default_rng(5))
    b = manhattan_grid(rng=np.random.default_rng(5))
    assert list(a.nodes(data=True)) == list(b.nodes(data=True))


def _small() -> tuple[list[dict], list[dict]]:
    nodes = [
        {"id": "cloud", "kind": "cloud"},
        {"id": "bsA", "kind": "bs_small", "x": 0, "y": 0, "z": 10, "range_m": 200},
        {"id": "bsB", "kind": "bs_small", "x": 1000, "y": 0, "z": 10, "range_m": 200},
        {"id": "c1", "kind": "client", "device_class": "sensor", "x": 50, "y": 0, "z": 1.5},
        {"id": "c2", "kind": "client", "device_class": "sensor", "x": 1000, "y": 50, "z": 1.5},
        {"id": "c3", "kind": "client", "device_class": "phone", "x": 500, "y": 0, "z": 1.5},
    ]
    edges = [{"src": "bsA", "dst": "cloud", "capacity_bps": 1e9, "latency_s": 0.001}]
    return nodes, edges


def test_explicit_and_unreachable() -> None:
    nodes, edges = _small()
    g = explicit(nodes, edges)
    # c2 is in range of bsB, but bsB has no wire to the cloud; c3 is out of range
    assert unreachable_clients(g, "cloud") == ["c2", "c3"]
    with pytest.raises(ValueError, match="kind"):
        explicit([{"id": "x", "kind": "router"}], [])
    with pytest.raises(ValueError, match="capacity_bps"):
        explicit(nodes, [{"src": "bsA", "dst": "cloud", "latency_s": 0.0}])


def test_graphml_roundtrip(tmp_path: Path) -> None:
    nodes, edges = _small()
    g = explicit(nodes, edges)
    path = tmp_path / "t.graphml"
    nx.write_graphml(g, path)
    h = from_graphml(path)
    assert sorted(h.nodes) == sorted(g.nodes)
    assert h.edges["bsA", "cloud"]["capacity_bps"] == 1e9
    assert unreachable_clients(h, "cloud") == ["c2", "c3"]
