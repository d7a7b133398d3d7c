"""Cross-field rules of a scenario, checked after schema validation.

Each rule raises a :class:`ScenarioError` naming the key path it concerns,
so the user sees the file and line that must change. Rules that need the
built world (the topology builds and every client reaches the server; the
alignment policy is registered) live where the world is built,
:func:`fedsim.build.check_world_rules`: configuration is the bottom layer and
imports no other fedsim layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from fedsim.config.schema import DEVICE_CLASSES

if TYPE_CHECKING:
    from fedsim.config.loader import LoadedScenario

__all__ = ["check_rules", "scenario_hints", "DATASETS_NEEDING_DIR", "CELL_KIND_ALIASES"]

#: Cell kinds in scenario files are ``macro`` / ``small`` in both topology forms (grid
#: ``base_stations[].kind`` and explicit ``nodes[].kind``); the internal node kinds
#: (``nodes.parquet``, GraphML) ``bs_macro`` / ``bs_small`` are accepted in explicit
#: nodes with a one-line hint (:func:`scenario_hints`).
CELL_KIND_ALIASES: dict[str, str] = {"bs_macro": "macro", "bs_small": "small"}


def scenario_hints(loaded: LoadedScenario) -> list[str]:
    """One-line hints on accepted but non-canonical spellings (no error): ``FILE:LINE: key: hint``.

    Today: an explicit topology node with ``kind: bs_macro`` / ``bs_small`` (the
    internal names) where scenario files write ``macro`` / ``small``.
    """
    out = []
    for i, node in enumerate(loaded.scenario.topology.nodes):
        kind = node.get("kind") if isinstance(node, dict) else None
        if kind in CELL_KIND_ALIASES:
            err = loaded.error(f"topology.nodes.{i}.kind", f"{kind!r} is accepted, but scenario files spell it "
                               f"{CELL_KIND_ALIASES[kind]!r} (as in topology.grid.base_stations)")
            out.append(str(err))
    return out

DATASETS_NEEDING_DIR = ("mnist", "fashion_mnist", "cifar10")


def check_rules(loaded: LoadedScenario) -> None:
    """Check every cross-field rule of ``loaded`` that needs no built world; raise on the first broken one.

    Raises:
        ScenarioError: the first broken rule, naming the file, line and key path.
    """
    s = loaded.scenario
    paths = loaded.paths

    def fail(key: str, rule: str) -> NoReturn:
        raise loaded.error(key, rule)

    if s.model.top_k > s.model.num_experts:
        fail("model.top_k", f"must be <= model.num_experts ({s.model.num_experts}), got {s.model.top_k}")
    if not s.model.stem_projection and (s.model.backbone != "mlp" or s.model.stem_layers):
        fail("model.stem_projection", "false needs backbone mlp and stem_layers 0 (no shared layer at all)")
    if not s.model.feature_layer and s.model.backbone != "mlp":
        fail("model.feature_layer", f"false needs backbone mlp, got {s.model.backbone!r}")
    if s.model.backbone == "cnn" and s.data.dataset == "synthetic":
        fail("model.backbone", "cnn needs image data; synthetic data is flat vectors (use mlp)")

    for cls in s.devices.classes:
        if cls not in DEVICE_CLASSES:
            fail(f"devices.classes.{cls}", f"unknown device class (valid: {', '.join(DEVICE_CLASSES)})")
    for cls, c in s.devices.classes.items():
        if c.speed_min_mps is not None and c.speed_max_mps is not None and c.speed_min_mps > c.speed_max_mps:
            fail(f"devices.classes.{cls}.speed_min_mps", "must be <= speed_max_mps")
        if c.speed_min_mps == 0 and c.mobility not in (None, "static") and (c.speed_max_mps or 0) > 0:  # given as 0 (class defaults: fedsim.devices)
            fail(f"devices.classes.{cls}.speed_min_mps", "must be > 0 for a moving class: with leg speeds drawn down to 0 the mean "
                 "speed decays towards 0 over the run (random-waypoint speed decay, Yoon et al. 2003); e.g. 0.1 x speed_max_mps")
        if c.altitude_min_m is not None and c.altitude_max_m is not None and c.altitude_min_m > c.altitude_max_m:
            fail(f"devices.classes.{cls}.altitude_min_m", "must be <= altitude_max_m")
    for key in ("availability_trace", "capacity_trace"):
        p = getattr(s.devices, key)
        resolved = getattr(paths, key)
        if p is not None and (resolved is None or not resolved.is_file()):
            fail(f"devices.{key}", f"trace file {p!r} does not exist")

    if s.data.dataset in DATASETS_NEEDING_DIR:
        if s.data.dir is None:
            fail("data.dir", f"dataset {s.data.dataset!r} needs a data directory")
        d = paths.data_dir
        if d is None or not d.is_dir():
            fail("data.dir", f"data directory {s.data.dir!r} does not exist (resolved to {d})")

    fm = s.protocol.fedmoe
    if fm.min_completions is not None and fm.min_completions > fm.clients_per_round:
        fail("protocol.fedmoe.min_completions", f"must be <= clients_per_round ({fm.clients_per_round})")
    if fm.expert_widths is not None and s.protocol.name == "fedmoe":
        if s.model.expert_hidden == 0:
            fail("protocol.fedmoe.expert_widths", "needs expert MLP heads to slice (model.expert_hidden > 0)")
        if fm.aggregation != "sync":
            fail("protocol.fedmoe.expert_widths", "sub-networks are aggregated in sync mode only (aggregation: sync)")

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
        if paths.graphml is None or not paths.graphml.is_file():
            fail("topology.graphml", f"GraphML file {topo.graphml!r} does not exist")
    elif topo.kind == "explicit" and not topo.nodes:
        fail("topology.nodes", "an explicit topology needs a node list")

