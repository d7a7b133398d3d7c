"""Topology builders: networkx graphs of cloud, edge servers, base stations and clients.

Conventions (every builder returns them):

- node attribute ``kind`` in {"cloud", "edge", "bs_macro", "bs_small", "client"};
  clients also carry ``device_class`` in {"vehicle", "drone", "camera",
  "sensor", "phone"}; every node has ``x``, ``y``, ``z`` in metres;
  base stations may carry ``range_m`` (coverage radius used by
  :func:`unreachable_clients`, default unlimited) and ``tx_power_dbm``.
- wired edges: ``kind="wired"``, ``capacity_bps`` (per direction, full
  duplex), ``latency_s`` (one way).
- clients have no edges: they attach wirelessly to the BS with the best
  mean received power (see :mod:`fedsim.net.network`).
- ``graph.graph["streets"]`` (Manhattan grid only) = ``{"blocks_x",
  "blocks_y", "block_m"}``; vehicles and pedestrians move on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

__all__ = [
    "NODE_KINDS",
    "BS_KINDS",
    "CLIENT_HEIGHTS_M",
    "manhattan_grid",
    "explicit",
    "from_graphml",
    "unreachable_clients",
    "cells_without_backhaul",
    "connectivity_rule",
    "clients",
    "base_stations",
]

NODE_KINDS = ("cloud", "edge", "bs_macro", "bs_small", "client")
BS_KINDS = ("bs_macro", "bs_small")
#: Scenario spelling of the cell kinds (as in the grid's ``base_stations[].kind``) -> node kind.
CELL_KINDS: dict[str, str] = {"macro": "bs_macro", "small": "bs_small"}
#: Default antenna height (min, max) in metres per device class.
CLIENT_HEIGHTS_M: dict[str, tuple[float, float]] = {
    "vehicle": (1.5, 1.5),
    "drone": (30.0, 120.0),
    "camera": (6.0, 6.0),
    "sensor": (3.0, 3.0),
    "phone": (1.5, 1.5),
}
_SIDEWALK_M = 8.0


def clients(graph: nx.Graph) -> list[str]:
    """Sorted ids of the client nodes."""
    return sorted(n for n, d in graph.nodes(data=True) if d.get("kind") == "client")


def base_stations(graph: nx.Graph) -> list[str]:
    """Sorted ids of the base-station nodes."""
    return sorted(n for n, d in graph.nodes(data=True) if d.get("kind") in BS_KINDS)


def _street_point(rng: np.random.Generator, bx: int, by: int, block_m: float,
                  offset_m: float) -> tuple[float, float]:
    """A uniform point on a random street, shifted sideways by up to ``offset_m``."""
    off = rng.uniform(-offset_m, offset_m) if offset_m > 0 else 0.0
    if rng.random() < 0.5:  # horizontal street
        iy = int(rng.integers(0, by + 1))
        return float(rng.uniform(0, bx * block_m)), iy * block_m + off
    ix = int(rng.integers(0, bx + 1))
    return ix * block_m + off, float(rng.uniform(0, by * block_m))


def manhattan_grid(
    *,
    blocks_x: int = 6,
    blocks_y: int = 6,
    block_m: float = 100.0,
    bs_sites: Sequence[tuple[int, int, str]] | None = None,
    clients_per_class: Mapping[str, int] | None = None,
    rng: np.random.Generator,
    backhaul_bps: float = 10e9,
    backhaul_latency_s: float = 1e-3,
    edge_server_bps: float = 10e9,
    edge_server_latency_s: float = 1e-4,
    cloud_bps: float = 40e9,
    cloud_latency_s: float = 10e-3,
    macro_height_m: float = 25.0,
    small_height_m: float = 10.0,
    macro_range_m: float = 2000.0,
    small_range_m: float = 500.0,
    heights_m: Mapping[str, tuple[float, float]] | None = None,
) -> nx.Graph:
    """A street grid of ``blocks_x`` x ``blocks_y`` blocks of ``block_m`` metres.

    Nodes: ``cloud`` (the data centre), ``core`` (metro aggregation, kind
    ``edge``), per site ``i`` a base station ``bs{i}`` at intersection
    ``(ix * block_m, iy * block_m)`` and its edge server ``edge{i}``,
    and ``clients_per_class[c]`` clients ``{c}{k:05d}`` per class.

    Wires: ``bs{i} - edge{i}`` (edge server link), ``bs{i} - core``
    (backhaul), ``core - cloud`` (the WAN link to the data centre, shared by
    every BS).

    Placement (stream ``rng``): vehicles on street centre lines, phones on
    sidewalks (up to 8 m off the centre line), cameras and sensors on street
    furniture (same), drones uniform over the area at an altitude drawn in
    ``heights_m["drone"]``.

    Default ``bs_sites``: a macro cell at the centre intersection and four
    small cells at the quarter points. Default ``clients_per_class``: 10 of
    each class.
    """
    if blocks_x < 1 or blocks_y < 1:
        raise ValueError('"blocks_x" and "blocks_y" must be >= 1')
    if not block_m > 0:
        raise ValueError('"block_m" must be > 0')
    if bs_sites is None:
        bs_sites = _default_sites(blocks_x, blocks_y)
    if not bs_sites:
        raise ValueError('"bs_sites" must name at least one base station')
    if clients_per_class is None:
        clients_per_class = {c: 10 for c in CLIENT_HEIGHTS_M}
    heights = dict(CLIENT_HEIGHTS_M)
    if heights_m:
        heights.update(heights_m)
    width, height = blocks_x * block_m, blocks_y * block_m

    g = nx.Graph(streets={"blocks_x": blocks_x, "blocks_y": blocks_y, "block_m": float(block_m)},
                 area_m=(float(width), float(height)))
    # the cloud is reached over the WAN: draw it beyond the top edge, not under a cell
    g.add_node("cloud", kind="cloud", x=width / 2, y=height + block_m, z=0.0)
    g.add_node("core", kind="edge", x=width / 2, y=height / 2, z=0.0)
    g.add_edge("core", "cloud", kind="wired", capacity_bps=float(cloud_bps),
               latency_s=float(cloud_latency_s))
    _add_sites(g, bs_sites, blocks_x, blocks_y, block_m, macro_height_m, small_height_m, macro_range_m, small_range_m,
               edge_server_bps, edge_server_latency_s, backhaul_bps, backhaul_latency_s)
    _add_clients(g, clients_per_class, heights, rng, blocks_x, blocks_y, block_m)
    return g


def _default_sites(blocks_x: int, blocks_y: int) -> list[tuple[int, int, str]]:
    """A macro cell at the centre intersection and four small cells at the quarter points (no duplicates)."""
    cx, cy = blocks_x // 2, blocks_y // 2
    qx, qy = max(blocks_x // 4, 0), max(blocks_y // 4, 0)
    sites = [(cx, cy, "macro"), (qx, qy, "small"), (blocks_x - qx, qy, "small"),
             (qx, blocks_y - qy, "small"), (blocks_x - qx, blocks_y - qy, "small")]
    seen: set[tuple[int, int]] = set()
    out = []
    for s in sites:
        if (s[0], s[1]) not in seen:
            seen.add((s[0], s[1]))
            out.append(s)
    return out


def _add_sites(
    g: nx.Graph, bs_sites: Sequence[tuple[int, int, str]], blocks_x: int, blocks_y: int, block_m: float,
    macro_height_m: float, small_height_m: float, macro_range_m: float, small_range_m: float,
    edge_server_bps: float, edge_server_latency_s: float, backhaul_bps: float, backhaul_latency_s: float,
) -> None:
    """Per site ``i``: base station ``bs{i}``, its edge server ``edge{i}`` and their wires (see :func:`manhattan_grid`)."""
    for i, (ix, iy, kind) in enumerate(bs_sites):
        if kind not in ("macro", "small"):
            raise ValueError(f'bs_sites[{i}]: kind must be "macro" or "small", got {kind!r}')
        if not (0 <= ix <= blocks_x and 0 <= iy <= blocks_y):
            raise ValueError(f"bs_sites[{i}]: intersection ({ix}, {iy}) is outside the grid")
        x, y = ix * block_m, iy * block_m
        bs, edge = f"bs{i}", f"edge{i}"
        macro = kind == "macro"
        g.add_node(bs, kind="bs_macro" if macro else "bs_small", x=float(x), y=float(y),
                   z=float(macro_height_m if macro else small_height_m),
                   range_m=float(macro_range_m if macro else small_range_m))
        g.add_node(edge, kind="edge", x=float(x), y=float(y), z=0.0)
        g.add_edge(bs, edge, kind="wired", capacity_bps=float(edge_server_bps),
                   latency_s=float(edge_server_latency_s))
        g.add_edge(bs, "core", kind="wired", capacity_bps=float(backhaul_bps),
                   latency_s=float(backhaul_latency_s))


def _add_clients(
    g: nx.Graph, clients_per_class: Mapping[str, int], heights: Mapping[str, tuple[float, float]],
    rng: np.random.Generator, blocks_x: int, blocks_y: int, block_m: float,
) -> None:
    """``clients_per_class[c]`` clients ``{c}{k:05d}`` per class, placed with ``rng`` (see :func:`manhattan_grid`)."""
    width, height = blocks_x * block_m, blocks_y * block_m
    for cls in sorted(clients_per_class):
        n = int(clients_per_class[cls])
        if n < 0:
            raise ValueError(f'clients_per_class["{cls}"] must be >= 0')
        zmin, zmax = heights.get(cls, (1.5, 1.5))
        for k in range(n):
            if cls == "drone":
                x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
            elif cls == "vehicle":
                x, y = _street_point(rng, blocks_x, blocks_y, block_m, 0.0)
            else:
                x, y = _street_point(rng, blocks_x, blocks_y, block_m, _SIDEWALK_M)
            z = float(rng.uniform(zmin, zmax)) if zmax > zmin else float(zmin)
            g.add_node(f"{cls}{k:05d}", kind="client", device_class=cls, x=x, y=y, z=z)


_FLOAT_NODE = ("x", "y", "z", "range_m", "tx_power_dbm")
_FLOAT_EDGE = ("capacity_bps", "latency_s")


def _check(g: nx.Graph) -> nx.Graph:
    for n, d in g.nodes(data=True):
        kind = d["kind"] = CELL_KINDS.get(d.get("kind"), d.get("kind"))
        if kind not in NODE_KINDS:
            allowed = ("cloud", "edge", *CELL_KINDS, "client")
            raise ValueError(f"node {n!r}: \"kind\" must be one of {allowed}, got {kind!r}")
        for k in ("x", "y", "z"):
            d[k] = float(d.get(k, 0.0))
        for k in _FLOAT_NODE:
            if k in d:
                d[k] = float(d[k])
        if kind == "client" and "device_class" not in d:
            raise ValueError(f'client {n!r} has no "device_class"')
    for u, v, d in g.edges(data=True):
        if g.nodes[u]["kind"] == "client" or g.nodes[v]["kind"] == "client":
            raise ValueError(f"edge {u!r}-{v!r}: clients attach wirelessly, not by edges")
        d.setdefault("kind", "wired")
        for k in _FLOAT_EDGE:
            if k not in d:
                raise ValueError(f'edge {u!r}-{v!r} has no "{k}"')
            d[k] = float(d[k])
        if not d["capacity_bps"] > 0:
            raise ValueError(f'edge {u!r}-{v!r}: "capacity_bps" must be > 0')
        if d["latency_s"] < 0:
            raise ValueError(f'edge {u!r}-{v!r}: "latency_s" must be >= 0')
    return g


def explicit(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> nx.Graph:
    """A graph from explicit lists.

    ``nodes``: dicts with ``id``, ``kind`` (``cloud``, ``edge``, ``macro``, ``small``,
    ``client``; the internal ``bs_macro`` / ``bs_small`` are accepted too) and optional ``x``, ``y``, ``z``
    (default 0), ``device_class`` (clients), ``range_m``, ``tx_power_dbm``.
    ``edges``: dicts with ``src``, ``dst``, ``capacity_bps``, ``latency_s``.
    """
    g = nx.Graph()
    for i, nd in enumerate(nodes):
        nd = dict(nd)
        if "id" not in nd:
            raise ValueError(f'nodes[{i}] has no "id"')
        g.add_node(str(nd.pop("id")), **nd)
    for i, ed in enumerate(edges):
        ed = dict(ed)
        try:
            u, v = str(ed.pop("src")), str(ed.pop("dst"))
        except KeyError as e:
            raise ValueError(f'edges[{i}] needs "src" and "dst"') from e
        for n in (u, v):
            if n not in g:
                raise ValueError(f"edges[{i}]: unknown node {n!r}")
        g.add_edge(u, v, **ed)
    return _check(g)


def from_graphml(path: str | Path) -> nx.Graph:
    """Read a GraphML file following the conventions above (undirected; cell kinds
    ``macro`` / ``small`` or ``bs_macro`` / ``bs_small``)."""
    g = nx.Graph(nx.read_graphml(str(path)))
    return _check(g)


def _wired_component(graph: nx.Graph, server: str) -> set[str]:
    """Nodes joined to ``server`` by wired edges (clients excluded)."""
    wired = nx.Graph()
    wired.add_nodes_from(n for n, d in graph.nodes(data=True) if d.get("kind") != "client")
    wired.add_edges_from((u, v) for u, v, d in graph.edges(data=True)
                         if d.get("kind", "wired") == "wired")
    return set(nx.node_connected_component(wired, server)) if server in wired else set()


def cells_without_backhaul(graph: nx.Graph, server: str) -> list[str]:
    """Base stations with no wired route to ``server`` (sorted).

    A client attaches to the base station of best received power, whichever
    it is, so a cell without backhaul would take clients it cannot route.
    """
    comp = _wired_component(graph, server)
    return [b for b in base_stations(graph) if b not in comp]


def connectivity_rule(graph: nx.Graph, server: str) -> str | None:
    """The broken connectivity rule of ``graph``, as one line, or ``None``: every client
    reaches ``server`` (:func:`unreachable_clients`), and every base station has a wired
    route (backhaul) to it (:func:`cells_without_backhaul`).

    Raises:
        ValueError: ``server`` is not a node of ``graph``.
    """

    def names(ids: list[str]) -> str:
        return ", ".join(ids[:3]) + (f" (and {len(ids) - 3} more)" if len(ids) > 3 else "")

    bad = unreachable_clients(graph, server)
    if bad:
        return f"client(s) {names(bad)} cannot reach server {server!r}"
    cut = cells_without_backhaul(graph, server)
    if cut:
        return (f"base station(s) {names(cut)} have no backhaul: no wired route to server {server!r} "
                "(clients attach to the strongest cell; add a wired edge or remove the cell)")
    return None


def unreachable_clients(graph: nx.Graph, server: str) -> list[str]:
    """Clients that cannot reach ``server`` (sorted).

    A client reaches the server iff some base station is within that BS's
    ``range_m`` (3D distance, unlimited when absent) of the client's
    *initial* position and that BS is connected to ``server`` through wired
    edges. Pure and cheap (vectorised distances, in chunks of clients); it does not
    check radio quality (a client in range may still be in outage).
    """
    if server not in graph:
        raise ValueError(f"unknown server node {server!r}")
    comp = _wired_component(graph, server)
    bss = [b for b in base_stations(graph) if b in comp]
    cls = clients(graph)
    if not bss:
        return cls
    nd = graph.nodes
    bpos = np.array([[nd[b]["x"], nd[b]["y"], nd[b]["z"]] for b in bss], dtype=float)
    rng_m = np.array([nd[b].get("range_m", math.inf) for b in bss], dtype=float)
    if np.isinf(rng_m).any():  # a BS without range limit reaches every client
        return []
    cpos = np.array([[nd[c]["x"], nd[c]["y"], nd[c]["z"]] for c in cls], dtype=float).reshape(-1, 3)
    ok = np.zeros(len(cls), dtype=bool)
    for a in range(0, len(cls), 4096):  # bounded memory: a city has 10^6 clients x 10^3 cells
        d = np.sqrt(((cpos[a:a + 4096, None, :] - bpos[None, :, :]) ** 2).sum(axis=2))
        ok[a:a + 4096] = (d <= rng_m[None, :]).any(axis=1)
    return [c for c, k in zip(cls, ok) if not k]
