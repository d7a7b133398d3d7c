"""Scenario -> the parts a protocol is handed: the one place where configuration meets the layers.

:func:`build_graph` turns the ``topology`` section into a networkx graph
(used by validation too); :func:`build_parts` builds the whole run once: the
Simulation, the network and the devices (the systems part), the dataset, its
partition and the model configuration (the trainer and the evaluator), the
alignment services, and hands the protocol its own typed config section
(:class:`~fedsim.parts.bundle.Parts`). Protocols never see the scenario, so the
systems and learning layers stay independent of each other and of the schema.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from fedsim.config.errors import ScenarioError
from fedsim.engine.checkpoint import Replay
from fedsim.parts.alignment import AlignmentServices
from fedsim.parts.bundle import Parts, RunSettings
from fedsim.parts.learning import Evaluator, Trainer
from fedsim.parts.systems import Systems

if TYPE_CHECKING:
    from fedsim.config.loader import LoadedScenario

__all__ = ["TopologyError", "build_graph", "check_world_rules", "load_checked", "build_parts"]


class TopologyError(ValueError):
    """The topology section cannot be turned into a graph (``key`` names the offending key)."""

    def __init__(self, rule: str, key: str | None = None) -> None:
        super().__init__(rule)
        self.rule = rule
        self.key = key


def build_graph(loaded: LoadedScenario, seed: int | None = None) -> nx.Graph:
    """The topology graph of a scenario (clients placed with the ``topology`` stream).

    Raises:
        TopologyError: the ``topology`` section cannot be built (``key`` names it).
    """
    from fedsim.net import topology as topo
    from fedsim.rng import RngStreams

    s = loaded.scenario
    t = s.topology
    rng = RngStreams(s.run.seed if seed is None else seed).fresh_numpy("topology")
    try:
        if t.kind == "manhattan_grid":
            g = t.grid
            return topo.manhattan_grid(
                blocks_x=g.blocks_x, blocks_y=g.blocks_y, block_m=g.block_m,
                bs_sites=[(b.ix, b.iy, b.kind) for b in g.base_stations],
                clients_per_class=dict(g.clients), rng=rng,
                backhaul_bps=g.backhaul_bps, backhaul_latency_s=g.backhaul_latency_s,
                macro_height_m=s.channel.bs_height_macro_m, small_height_m=s.channel.bs_height_small_m,
                edge_server_bps=g.edge_bps, edge_server_latency_s=g.edge_latency_s,
                cloud_bps=g.cloud_bps, cloud_latency_s=g.cloud_latency_s,
            )
        if t.kind == "explicit":
            return topo.explicit(list(t.nodes), list(t.edges))
        return topo.from_graphml(loaded.paths.graphml)
    except (ValueError, KeyError, TypeError) as e:
        raise TopologyError(str(e), key=f"topology.{ {'manhattan_grid': 'grid', 'explicit': 'nodes', 'graphml': 'graphml'}[t.kind] }") from None


def check_world_rules(loaded: LoadedScenario) -> nx.Graph:
    """Check the rules that need the built world and return the topology graph.

    The rules: the alignment policy is registered
    (:data:`fedsim.alignment.policies.POLICIES`); the topology builds; the
    server is a node of it; every client reaches the server and every cell has
    backhaul (:func:`fedsim.net.topology.connectivity_rule`); an ``nmoe``
    aggregator (``protocol.nmoe.server``) is a node of it. :func:`build_parts`
    calls this once per run (so the graph is built once) and ``fedsim
    validate`` calls it after loading, so every rule is reported before a run.

    Raises:
        ScenarioError: ``FILE:LINE: key.path: rule``, like the loader's errors.
    """
    from fedsim.alignment.policies import POLICIES

    s = loaded.scenario
    policy = s.protocol.fedmoe.alignment.policy
    if policy not in POLICIES:
        raise loaded.error("protocol.fedmoe.alignment.policy", f"unknown policy {policy!r} (valid: {', '.join(sorted(POLICIES))})")
    try:
        graph = build_graph(loaded, seed=s.run.seed)
    except TopologyError as e:
        raise loaded.error(e.key or "topology", e.rule) from None
    if s.topology.server not in graph:
        raise loaded.error("topology.server", f"server node {s.topology.server!r} is not in the topology")
    from fedsim.net.topology import connectivity_rule

    if (rule := connectivity_rule(graph, s.topology.server)) is not None:  # unreachable clients, cells without backhaul
        raise loaded.error("topology", rule)
    agg = s.protocol.nmoe.server
    if s.protocol.name == "nmoe" and agg is not None and agg not in graph:
        raise loaded.error("protocol.nmoe.server", f"aggregator node {agg!r} is not in the topology (a base station, the cloud or a client id)")
    return graph


def load_checked(path: str | Path, overrides: list[str] | None = None, *, seed: int | None = None) -> LoadedScenario:
    """:func:`fedsim.config.load_scenario` plus :func:`check_world_rules`: every rule of a scenario.

    Raises:
        ScenarioError: the first broken rule, ``FILE:LINE: key.path: rule``.
    """
    from fedsim.config.loader import load_scenario

    loaded = load_scenario(path, overrides, seed=seed)
    check_world_rules(loaded)
    return loaded


class _Builder:
    """Builds a run's parts from one scenario under one root seed (:func:`build_parts`).

    Attributes (after construction): ``loaded`` / ``scenario``, ``sim``, ``graph``,
    ``server``, ``clients``; the data (``dataset``, ``splits``, ``model_config``,
    ``x_test`` / ``y_test`` / ``test_groups``, ``client_groups``);
    the systems (``class_params``, ``network``, ``devices``, ``population``: the
    device columns of a lazy run, else None).
    """

    def __init__(self, loaded: LoadedScenario) -> None:
        from fedsim.engine import Simulation

        self.loaded = loaded
        self.scenario = s = loaded.scenario
        self.sim = Simulation(s.run.seed)
        self.graph = check_world_rules(loaded)  # the one build of the topology per run
        self.server = s.topology.server
        self.clients = sorted(n for n, d in self.graph.nodes(data=True) if d.get("kind") == "client")
        self._build_data()
        self._build_systems()

    # ------------------------------------------------------------------ data
    def _build_data(self) -> None:
        from fedsim.learning.datasets import DatasetError, load_dataset
        from fedsim.learning.models import MoEConfig
        from fedsim.learning.partition import partition

        s = self.scenario
        d = s.data
        rng = self.sim.rng
        try:
            kw = {"n": d.synthetic_samples} if d.dataset == "synthetic" else {}
            ds = load_dataset(d.dataset, self.loaded.paths.data_dir, rng=rng.fresh_numpy("data/load"), **kw)
        except DatasetError as e:
            raise ScenarioError(str(e), file=str(self.loaded.path), key="data.dir") from None
        if d.max_train_samples is not None and len(ds.y_train) > d.max_train_samples:
            keep = np.sort(rng.fresh_numpy("data/subsample").choice(len(ds.y_train), d.max_train_samples, replace=False))
            ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
        self.dataset = ds
        n_clients = len(self.clients)
        try:
            splits = partition(
                d.partition, ds.y_train.numpy(), n_clients, rng.fresh_numpy("data/split"),
                test_fraction=d.test_fraction, alpha=d.alpha, tau=d.tau, clusters=d.clusters, tau_definition=d.tau_definition,
                num_classes=ds.num_classes, group_shares=tuple(d.group_shares),
                client_order=self._availability_order() if d.partition == "domain_skew" else None,
            )
        except ValueError as e:
            raise ScenarioError(str(e), file=str(self.loaded.path), key=f"data.{d.partition}") from None
        self.splits = dict(zip(self.clients, splits))
        m = s.model
        stem = m.stem_layers if m.stem_layers is not None else (1 if m.backbone == "mlp" else 2)
        self.model_config = MoEConfig(
            input_shape=tuple(ds.input_shape), num_classes=ds.num_classes, backbone=m.backbone,
            widths=(m.hidden,) * stem if m.backbone == "mlp" else (16, 32, 64, 128, 128, 128, 128, 128)[:stem],
            feature_dim=(m.feature_dim if m.feature_layer else m.hidden) if m.stem_projection else int(np.prod(ds.input_shape)),
            stem_projection=m.stem_projection, feature_layer=m.feature_layer,
            num_experts=m.num_experts, top_k=m.top_k, expert_hidden=m.expert_hidden,
            gate_noise_std=m.gate_noise_std, aux_loss_weight=m.aux_loss_weight,
            expert_layers=m.expert_layers, gate_weights=m.gate_weights,
            route_target_weight=m.route_target_weight,
        )
        cap = s.evaluation.max_test_samples
        self.x_test, self.y_test = ds.x_test[:cap], ds.y_test[:cap]
        self.test_groups: np.ndarray | None = None
        self.client_groups: dict[str, int] = {}
        if d.partition == "domain_skew":
            self._apply_domains(splits, tuple(d.group_shares), d.domain_transform)

    def _availability_order(self) -> list[int]:
        """Client indices, most often online first (long-run online share of the
        device class, ``mean_on / (mean_on + mean_off)``; ties by client id)."""
        import math

        classes = self._class_params()

        def share(c: str) -> float:
            p = classes[self.graph.nodes[c]["device_class"]]
            return 1.0 if math.isinf(p.mean_on_s) else p.mean_on_s / (p.mean_on_s + p.mean_off_s)

        return sorted(range(len(self.clients)), key=lambda i: (-share(self.clients[i]), i))

    def _apply_domains(self, splits: list, shares: tuple[float, ...], kind: str) -> None:
        """domain_skew: pass each client's samples through its group's transform, and
        draw a group for every global test sample (stream ``data/test_groups``,
        probabilities = group shares) and transform it too."""
        from fedsim.learning.partition import domain_transform

        ds = self.dataset
        seed = self.sim.rng.seed_int("data/domains")
        x = ds.x_train.clone()
        for sp in splits:
            idx = np.concatenate([sp.train_idx, sp.test_idx])
            if len(idx):
                x[idx] = domain_transform(ds.x_train[idx], sp.group, kind, seed)
        ds.x_train = x
        w = np.asarray(shares, dtype=float)
        g = self.sim.rng.fresh_numpy("data/test_groups").choice(len(w), size=len(self.y_test), p=w / w.sum())
        xt = self.x_test.clone()
        for k in range(len(w)):
            sel = np.flatnonzero(g == k)
            if len(sel):
                xt[sel] = domain_transform(self.x_test[sel], k, kind, seed)
        self.x_test, self.test_groups = xt, g
        self.client_groups = {c: sp.group for c, sp in zip(self.clients, splits)}

    # --------------------------------------------------------------- systems
    def _class_params(self) -> dict[str, Any]:
        """Device-class parameters: defaults, then scenario overrides and switches."""
        import dataclasses

        from fedsim.devices.params import default_device_classes

        dv = self.scenario.devices
        out = {}
        for cls, p in default_device_classes().items():
            over = {k: v for k, v in (dv.classes[cls].model_dump() if cls in dv.classes else {}).items() if v is not None}
            for k in ("memory_pressure_levels", "memory_pressure_mean_hold_s"):
                if k in over:
                    over[k] = tuple(over[k])
            if "memory_pressure_levels" in over and len(over["memory_pressure_levels"]) != len(p.memory_pressure_levels):
                n = len(over["memory_pressure_levels"])
                over.setdefault("memory_pressure_mean_hold_s", tuple([600.0] * n))
                over["memory_pressure_jump"] = tuple(tuple(0.0 if i == j else 1.0 / max(1, n - 1) for j in range(n)) for i in range(n))
            if not dv.background_load:
                over["background_load_mean"] = 0.0
            if not dv.memory_pressure:
                lv = over.get("memory_pressure_levels", p.memory_pressure_levels)
                over["memory_pressure_levels"] = (float(lv[0]),)
                over["memory_pressure_mean_hold_s"] = (math.inf,)
                over["memory_pressure_jump"] = ((0.0,),)
            if not dv.dropout:
                over["mean_on_s"] = math.inf
                over["transfer_hazard_per_s"] = 0.0
            try:
                out[cls] = dataclasses.replace(p, **over)
            except ValueError as e:
                raise self.loaded.error(f"devices.classes.{cls}" + (".speed_min_mps" if str(e).startswith("speed_min") else ""), str(e)) from None
        return out

    def _build_systems(self) -> None:
        from fedsim.devices.population import build_devices
        from fedsim.net.network import Network
        from fedsim.net.params import ChannelParams, NetworkParams

        s = self.scenario
        classes = self._class_params()
        self.class_params = classes
        params = NetworkParams(
            channel=ChannelParams(**s.channel.model_dump()),
            mobility_interval_s=s.devices.mobility_interval_s,
            link_sample_interval_s=s.output.link_sample_s,
        )
        net_cls: type[Network] = Network
        if params.channel.population == "lazy":
            from fedsim.net.population import LazyNetwork

            net_cls = LazyNetwork
        self.network = net_cls(self.sim, self.graph, params, server=self.server, classes=classes)
        avail = caps = None
        if s.devices.availability_trace:
            from fedsim.devices.traces import load_fedscale_availability

            avail = load_fedscale_availability(self.loaded.paths.availability_trace)
        if s.devices.capacity_trace:
            from fedsim.devices.traces import load_fedscale_capacity
            from fedsim.learning.accounting import flops_per_sample
            from fedsim.learning.models import MoEClassifier

            fps = flops_per_sample(MoEClassifier(self.model_config), self.model_config.input_shape, train=True)
            caps = load_fedscale_capacity(self.loaded.paths.capacity_trace, fps)
        trace_ids, cap_ids, n = sorted(avail or ()), sorted(caps or ()), len(self.clients)
        a = [avail[trace_ids[i % len(trace_ids)]] if trace_ids else None for i in range(n)]
        f = [caps[cap_ids[i % len(cap_ids)]].flops_per_s if cap_ids else None for i in range(n)]
        kinds = [self.graph.nodes[c]["device_class"] for c in self.clients]
        self.population, self.devices = build_devices(  # lazy: columns, idle devices schedule nothing
            self.sim, self.clients, kinds, classes, f, a, lazy=params.channel.population == "lazy")
        for i, c in enumerate(self.clients) if cap_ids else ():  # the trace's rate caps the access link
            self.network.set_rate_cap(c, caps[cap_ids[i % len(cap_ids)]].link_rate_bps)

    # ------------------------------------------------------------------ parts
    def train_device(self) -> str:
        """``training.device`` resolved (``auto`` -> cuda when present, else cpu).

        Raises:
            ScenarioError: ``cuda`` asked for where torch sees no CUDA device.
        """
        from fedsim.learning.executors import resolve_device

        try:
            return resolve_device(self.scenario.training.device)
        except ValueError as e:
            raise self.loaded.error("training.device", str(e)) from None

    def trainer(self, replay: Replay) -> Trainer:
        """The :class:`~fedsim.parts.learning.Trainer` of ``training`` (the executor is built at its first use)."""
        from fedsim.learning.executor_registry import make_executor
        from fedsim.learning.training import TrainConfig

        t = self.scenario.training
        proto = self.scenario.protocol
        reward = proto.fedmoe.alignment.reward if proto.name == "fedmoe" else None  # only the feedback passes it reads
        train = TrainConfig(
            optimizer=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
            local_epochs=t.local_epochs, batch_size=t.batch_size, fedprox_mu=t.fedprox_mu,
            device=self.train_device(),  # a missing GPU fails here, before the run directory is written
            expert_loss=reward == "expert_loss", gate_feedback=reward == "gate_prob",
        )
        return Trainer(
            self.sim, self.clients, self.dataset, self.splits, self.model_config, train,
            lambda: make_executor(t.executor, workers=t.workers, torch_threads=t.torch_threads), replay,
        )

    def alignment(self, systems: Systems) -> AlignmentServices:
        """The :class:`~fedsim.parts.alignment.AlignmentServices` of ``protocol.fedmoe.alignment``:
        fresh state, the policy, the capacity estimator primed with each client's noisy
        self-report (stream ``capacity/report``; with device columns, a client reports when
        first asked about, stream ``capacity/report/{c}``)."""
        from fedsim.alignment.capacity import CapacityEstimator
        from fedsim.alignment.policies import make_policy, policy_params
        from fedsim.alignment.state import AlignmentState

        a = self.scenario.protocol.fedmoe.alignment
        state = AlignmentState(
            self.clients, self.scenario.model.num_experts, fitness_ema=a.fitness_ema,
            fitness_decay=a.fitness_decay, usage_decay=a.usage_decay, reward=a.reward,
        )
        policy = make_policy(a.policy, **policy_params(a))
        est = CapacityEstimator(a.capacity.mode, noise_cv=a.capacity.report_noise_cv, ewma=a.capacity.ewma)
        if self.population is not None:  # devices as columns: a client reports when first asked about
            est.reporter = lambda c: est.self_report(
                c, systems.true_capacity(c), self.sim.rng.fresh_numpy(f"capacity/report/{c}"))
        else:
            rng = self.sim.rng.numpy("capacity/report")
            for c in self.clients:
                est.self_report(c, systems.true_capacity(c), rng)
        return AlignmentServices(
            state=state, estimator=est, policy=policy, safety_margin=a.capacity.safety_margin,
            max_experts_per_client=a.max_experts_per_client,
            inference_k=a.max_experts_per_client or self.model_config.top_k,
        )

    def parts(self, replay: Replay) -> Parts:
        """The :class:`~fedsim.parts.bundle.Parts` handed to the protocol."""
        s = self.scenario
        systems = Systems(self.sim, self.graph, self.server, self.clients, self.network, self.devices, self.population)
        trainer = self.trainer(replay)
        evaluator = Evaluator(trainer, self.x_test, self.y_test, self.test_groups, self.sim.rec)
        name = s.protocol.name
        return Parts(
            protocol=name, config=getattr(s.protocol, name),
            run=RunSettings(rounds=s.run.rounds, horizon_s=s.run.horizon_s, eval_every=s.evaluation.every_rounds),
            sim=self.sim, clients=self.clients, systems=systems, trainer=trainer, evaluator=evaluator,
            alignment=self.alignment(systems) if name == "fedmoe" else None,
        )


def build_parts(loaded: LoadedScenario, replay: Replay | None = None) -> Parts:
    """Build the whole run of a scenario: the parts a protocol is handed (:class:`~fedsim.parts.bundle.Parts`).

    ``replay``: the run's replay seam (default: a fresh one that records nothing).

    Raises:
        ScenarioError: bad input found while building (a dataset directory without
            the expected files, a partition that cannot be made, a missing GPU, ...).
    """
    return _Builder(loaded).parts(replay if replay is not None else Replay(record=False))
