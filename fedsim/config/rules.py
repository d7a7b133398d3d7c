"""Cross-field rules of a scenario, checked after schema validation.

Each rule raises a :class:`ScenarioError` naming the key path it concerns,
so the user sees the file and line that must change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.config.errors import ScenarioError
from fedsim.config.schema import DEVICE_CLASSES

if TYPE_CHECKING:
    from fedsim.config.loader import LoadedScenario

__all__ = ["check_rules", "DATASETS_NEEDING_DIR"]

DATASETS_NEEDING_DIR = ("mnist", "fashion_mnist", "cifar10")


def _fail(origins: dict, key: str, rule: str, default_file: str | None) -> None:
    parts = tuple(key.split("."))
    fname, line = default_file, None
    for n in range(len(parts), 0, -1):
        hit = origins.get(parts[:n])
        if hit is not None:
            fname, line = hit
            break
    raise ScenarioError(rule, file=fname, key=key, line=line)


def check_rules(loaded: LoadedScenario, origins: dict) -> None:
    """Check every cross-field rule of ``loaded``; raise on the first broken one."""
    s = loaded.scenario
    f = str(loaded.path) if loaded.path else None

    def fail(key: str, rule: str) -> None:
        _fail(origins, key, rule, f)

    if s.model.top_k > s.model.num_experts:
        fail("model.top_k", f"must be <= model.num_experts ({s.model.num_experts}), got {s.model.top_k}")
    if s.model.backbone == "cnn" and s.data.dataset == "synthetic":
        fail("model.backbone", "cnn needs image data; synthetic data is flat vectors (use mlp)")

    for cls in s.devices.classes:
        if cls not in DEVICE_CLASSES:
            fail(f"devices.classes.{cls}", f"unknown device class (valid: {', '.join(DEVICE_CLASSES)})")
    for cls, c in s.devices.classes.items():
        if c.speed_min_mps is not None and c.speed_max_mps is not None and c.speed_min_mps > c.speed_max_mps:
            fail(f"devices.classes.{cls}.speed_min_mps", "must be <= speed_max_mps")
        if c.altitude_min_m is not None and c.altitude_max_m is not None and c.altitude_min_m > c.altitude_max_m:
            fail(f"devices.classes.{cls}.altitude_min_m", "must be <= altitude_max_m")
    for key in ("availability_trace", "capacity_trace"):
        p = getattr(s.devices, key)
        if p is not None and not loaded.resolve_path(p).is_file():
            fail(f"devices.{key}", f"trace file {p!r} does not exist")

    if s.data.dataset in DATASETS_NEEDING_DIR:
        if s.data.dir is None:
            fail("data.dir", f"dataset {s.data.dataset!r} needs a data directory")
        d = loaded.resolve_path(s.data.dir)
        if not d.is_dir():
            fail("data.dir", f"data directory {s.data.dir!r} does not exist (resolved to {d})")

    fm = s.protocol.fedmoe
    if fm.min_completions is not None and fm.min_completions > fm.clients_per_round:
        fail("protocol.fedmoe.min_completions", f"must be <= clients_per_round ({fm.clients_per_round})")

    from fedsim.alignment.policies import POLICIES

    if s.alignment.policy not in POLICIES:
        fail("alignment.policy", f"unknown policy {s.alignment.policy!r} (valid: {', '.join(sorted(POLICIES))})")

    topo = s.topology
    if topo.kind == "manhattan_grid":
        g = topo.grid
        for cls, n in g.clients.items():
            if cls not in DEVICE_CLASSES:
                fail(f"topology.grid.clients.{cls}", f"unknown device class (valid: {', '.join(DEVICE_CLASSES)})")
            if n < 0:
                fail(f"topology.grid.clients.{cls}", f"must be >= 0, got {n}")
        if sum(g.clients.values()) < 1:
            fail("topology.grid.clients", "the grid needs at least one client")
        for i, site in enumerate(g.base_stations):
            if site.ix > g.blocks_x or site.iy > g.blocks_y:
                fail(
                    f"topology.grid.base_stations.{i}",
                    f"intersection ({site.ix}, {site.iy}) is outside the {g.blocks_x}x{g.blocks_y}-block grid (max ix={g.blocks_x}, iy={g.blocks_y})",
                )
    elif topo.kind == "graphml":
        if topo.graphml is None:
            fail("topology.graphml", "a graphml topology needs a file path")
        if not loaded.resolve_path(topo.graphml).is_file():
            fail("topology.graphml", f"GraphML file {topo.graphml!r} does not exist")
    elif topo.kind == "explicit" and not topo.nodes:
        fail("topology.nodes", "an explicit topology needs a node list")

    _check_reachability(loaded, fail)


def _check_reachability(loaded: LoadedScenario, fail) -> None:  # noqa: ANN001
    """Build the topology and check that the server exists and every client reaches it."""
    from fedsim.build import TopologyError, build_graph, unreachable_clients_of

    s = loaded.scenario
    try:
        graph = build_graph(loaded, seed=s.run.seed)
    except TopologyError as e:
        fail(e.key or "topology", e.rule)
        return
    if s.topology.server not in graph:
        fail("topology.server", f"server node {s.topology.server!r} is not in the topology")
    bad = unreachable_clients_of(graph, s.topology.server)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        fail("topology", f"client(s) {', '.join(bad[:3])}{more} cannot reach server {s.topology.server!r}")
