"""Scenario -> world: the one place where configuration meets the layers.

:func:`build_graph` turns the ``topology`` section into a networkx graph
(used by validation too); :func:`build_world` builds the whole run: the
Simulation, the network, the devices, the dataset and its partition, and
the model configuration. Protocols talk to the :class:`World` only, so the
systems and learning layers stay independent of each other and of the
scenario schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from fedsim.config.errors import ScenarioError
from fedsim.engine.checkpoint import Checkpointer, Replay

if TYPE_CHECKING:
    import pandas as pd
    import simpy

    from fedsim.config.loader import LoadedScenario

__all__ = ["TopologyError", "build_graph", "check_world_rules", "load_checked", "unreachable_clients_of", "build_world", "World", "Accounting"]


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


def unreachable_clients_of(graph: nx.Graph, server: str) -> list[str]:
    """Clients of ``graph`` that cannot reach ``server`` (see :func:`fedsim.net.topology.unreachable_clients`)."""
    from fedsim.net.topology import unreachable_clients

    return unreachable_clients(graph, server)


def check_world_rules(loaded: LoadedScenario) -> nx.Graph:
    """Check the rules that need the built world and return the topology graph.

    The rules: the alignment policy is registered
    (:data:`fedsim.alignment.policies.POLICIES`); the topology builds; the
    server is a node of it; every client reaches the server; an ``nmoe``
    aggregator (``protocol.nmoe.server``) is a node of it. :class:`World`
    calls this once per run (so the graph is built once) and ``fedsim
    validate`` calls it after loading, so every rule is reported before a run.

    Raises:
        ScenarioError: ``FILE:LINE: key.path: rule``, like the loader's errors.
    """
    from fedsim.alignment.policies import POLICIES

    s = loaded.scenario
    if s.alignment.policy not in POLICIES:
        raise loaded.error("alignment.policy", f"unknown policy {s.alignment.policy!r} (valid: {', '.join(sorted(POLICIES))})")
    try:
        graph = build_graph(loaded, seed=s.run.seed)
    except TopologyError as e:
        raise loaded.error(e.key or "topology", e.rule) from None
    if s.topology.server not in graph:
        raise loaded.error("topology.server", f"server node {s.topology.server!r} is not in the topology")
    bad = unreachable_clients_of(graph, s.topology.server)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise loaded.error("topology", f"client(s) {', '.join(bad[:3])}{more} cannot reach server {s.topology.server!r}")
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


@dataclass
class Accounting:
    """Bytes, FLOPs and memory of a client's round, from the actual model.

    All figures come from :mod:`fedsim.learning.accounting`: payload bytes
    are the tensors sent (backbone + gate + assigned experts); FLOPs are
    forward + backward of backbone, gate and ``min(top_k, k)`` experts per
    sample per epoch; memory is parameters + gradients + optimizer state +
    one batch of activations.
    """

    bytes_shared: int
    bytes_per_expert: int
    flops_shared_per_sample: float  # training FLOPs per sample, backbone + gate + routing
    flops_expert_per_sample: float  # training FLOPs per sample per active expert
    mem_by_k: list[int]  # training memory in bytes with k assigned experts (index k)
    epochs: int
    top_k: int
    num_experts: int

    def payload_bytes(self, experts: list[int], shared: bool = True) -> float:
        """Bytes of the tensors for ``experts`` (plus backbone and gate if ``shared``)."""
        return float((self.bytes_shared if shared else 0) + len(experts) * self.bytes_per_expert)

    def job_flops(self, k: int, num_samples: int) -> float:
        """Training FLOPs of a job with ``k`` assigned experts over ``num_samples`` samples."""
        active = min(self.top_k, k)
        return float(self.epochs * num_samples * (self.flops_shared_per_sample + active * self.flops_expert_per_sample))

    def memory_bytes(self, k: int) -> float:
        """Training memory in bytes with ``k`` assigned experts."""
        return float(self.mem_by_k[min(max(k, 0), len(self.mem_by_k) - 1)])

    def budget(self, est: Any, num_samples: int, deadline_s: float, margin: float) -> int:
        """Expert budget k_c from a capacity estimate (see :func:`fedsim.alignment.capacity.expert_budget`)."""
        from fedsim.alignment.capacity import expert_budget

        mem1 = self.mem_by_k[1]
        mem_per = (self.mem_by_k[-1] - mem1) / max(1, self.num_experts - 1)
        return expert_budget(
            est, deadline_s=deadline_s, safety_margin=margin,
            bytes_shared=self.bytes_shared, bytes_per_expert=self.bytes_per_expert,
            flops_shared=self.epochs * num_samples * self.flops_shared_per_sample,
            flops_per_expert=self.epochs * num_samples * self.flops_expert_per_sample,
            mem_shared_bytes=mem1 - mem_per, mem_per_expert_bytes=mem_per,
            num_experts=self.num_experts, min_k=1,
        )

    def assign_context(self, estimates: dict, deadline_s: float, margin: float, samples: dict[str, int] | None = None, needed: int | None = None) -> Any:
        """The :class:`~fedsim.alignment.policies.AssignContext` for deadline-aware policies."""
        from fedsim.alignment.policies import AssignContext

        samples = samples or {}
        return AssignContext(
            estimates, deadline_s, margin, self.bytes_shared, self.bytes_per_expert,
            flops_shared={c: self.epochs * samples.get(c, 0) * self.flops_shared_per_sample for c in estimates},
            flops_per_expert={c: self.epochs * samples.get(c, 0) * self.flops_expert_per_sample for c in estimates},
            needed=needed,
        )


class World:
    """Everything a protocol needs, built from one scenario under one root seed.

    Attributes:
        loaded / scenario: the scenario and where it came from.
        sim: the :class:`~fedsim.engine.Simulation` (env, recorder, rng streams).
        graph: the topology; ``server``: the federated server node id.
        network: the :class:`~fedsim.net.network.Network` (flows, channels, mobility).
        devices: client id -> device (compute, memory, availability).
        clients: sorted client ids; ``dataset`` and ``splits`` (client id -> split).
        model_config: the :class:`~fedsim.learning.models.MoEConfig`.
    """

    def __init__(self, loaded: LoadedScenario) -> None:
        from fedsim.engine import Simulation

        self.loaded = loaded
        self.scenario = s = loaded.scenario
        self.sim = Simulation(s.run.seed)
        # the replay seam (fedsim/engine/checkpoint.py): every real PyTorch result goes through it
        self.replay = Replay(record=False)
        self.checkpointer: Checkpointer | None = None
        self.graph = check_world_rules(loaded)  # the one build of the topology per run
        self.server = s.topology.server
        self.clients = sorted(n for n, d in self.graph.nodes(data=True) if d.get("kind") == "client")
        self._executors: list[Any] = []  # closed by finish()
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

    def num_samples(self, c: str) -> int:
        """Training samples held by client ``c``."""
        return int(len(self.splits[c].train_idx))

    def new_model(self) -> Any:
        """A fresh MoE with the run's initial weights (stream ``model/init``)."""
        from fedsim.learning.training import build_model, init_state

        return build_model(self.model_config, init_state(self.model_config, self.sim.rng.seed_int("model/init")))

    def train_job(self, c: str, r: int, state: dict, experts: list[int], train_shared: bool) -> Any:
        """The training job of client ``c`` in round ``r`` (a pure function of its inputs)."""
        from fedsim.learning.training import TrainConfig, TrainJob

        t = self.scenario.training
        idx = self.splits[c].train_idx  # gathered per job: a city of clients keeps no copy per client
        x, y = self.dataset.x_train[idx], self.dataset.y_train[idx]
        return TrainJob(
            client_id=c, round=r, global_state=state, model_config=self.model_config, experts=list(experts), x=x, y=y,
            train=TrainConfig(
                optimizer=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                local_epochs=t.local_epochs, batch_size=t.batch_size, fedprox_mu=t.fedprox_mu, train_shared=train_shared,
                device=self.train_device,
            ),
            seed=self.sim.rng.seed_int(f"train/{r}/{c}"),
        )

    @property
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

    def new_executor(self) -> Any:
        """The training executor of ``training.executor``; :meth:`finish` closes it."""
        from fedsim.learning.executors import make_executor

        t = self.scenario.training
        _ = self.train_device  # a missing GPU fails here, before the run directory is written
        ex = make_executor(t.executor, workers=t.workers, torch_threads=t.torch_threads)
        self._executors.append(ex)
        return ex

    def evaluate(self, model: Any, state: dict) -> dict[str, float]:
        """Accuracy, macro-F1 and macro AUC of ``state`` on the global test set."""
        from fedsim.learning.metrics import evaluate

        model.load_state_dict(state)
        return self.replayed("evaluate", lambda: evaluate(model, self.x_test, self.y_test))

    # ------------------------------------------------- replay / checkpoints
    def replayed(self, key: str, fn: Callable[[], Any]) -> Any:
        """The result of ``fn()`` (real learning work at zero simulated time), through the
        run's replay log: answered from the log while a resumed run replays, else
        computed and kept for the next checkpoint (:mod:`fedsim.engine.checkpoint`).
        ``key`` names the call (its position in the log is its identity; the key
        catches a diverged replay). ``fn`` must not draw from a shared RNG stream.

        Raises:
            CheckpointError: the replay diverged from the stored calls.
        """
        return self.replay.call(key, fn)

    def run_jobs(self, executor: Any, jobs: list[Any], reduce: Callable[[list[Any]], Any] | None = None) -> Any:
        """Run training jobs with ``executor`` through the replay seam (key: their round/client ids).

        Without ``reduce`` the updates themselves are logged (every client's
        weights); with it, ``reduce(updates)`` runs inside the seam and only its
        result is logged and returned: a pure fold such as FedAvg into one
        state, so that a checkpoint holds one model per round, not one per client.
        """
        key = "train/" + ",".join(f"{j.round}:{j.client_id}" for j in jobs)
        if reduce is None:
            return self.replayed(key, lambda: list(executor.run(jobs)) if jobs else [])
        return self.replayed(key, lambda: reduce(list(executor.run(jobs)) if jobs else []))

    def checkpoint(self, rounds_done: int, *, force: bool = False) -> None:
        """Round boundary: let the checkpointer (if the run has one) write every
        ``output.checkpoint_every_rounds`` rounds."""
        if self.checkpointer is not None:
            self.checkpointer.round_done(rounds_done, float(self.sim.now), force=force)

    def personalised_accuracy(self, model: Any, state: dict) -> None:
        """Record each client's accuracy on its own test split (table ``personal``)."""
        from fedsim.learning.metrics import personalised_accuracy

        model.load_state_dict(state)
        splits = [self.splits[c] for c in self.clients]
        acc = self.replayed("personalised", lambda: personalised_accuracy(model, self.dataset.x_train, self.dataset.y_train, splits))
        for c, a, sp in zip(self.clients, acc, splits):
            self.sim.rec.row("personal", client=c, accuracy=float(a), num_test=int(len(sp.test_idx)), num_train=int(len(sp.train_idx)), group=int(sp.group))

    def new_alignment_state(self) -> Any:
        """Fresh client-expert alignment state for the run's clients."""
        from fedsim.alignment.state import AlignmentState

        a = self.scenario.alignment
        return AlignmentState(
            self.clients, self.scenario.model.num_experts, fitness_ema=a.fitness_ema,
            fitness_decay=a.fitness_decay, usage_decay=a.usage_decay, reward=a.reward,
        )

    def evaluate_alignment(self, model: Any, state: dict, fitness: np.ndarray) -> dict[str, float]:
        """The paper's per-client inference and test routing (see :mod:`fedsim.learning.routing`)."""
        from fedsim.learning.routing import alignment_metrics

        model.load_state_dict(state)
        k = self.scenario.alignment.max_experts_per_client or self.model_config.top_k
        return self.replayed("evaluate_alignment", lambda: alignment_metrics(
            model, self.dataset.x_train, self.dataset.y_train, [self.splits[c] for c in self.clients],
            fitness, k, self.x_test, self.y_test, self.test_groups,
        ))

    def accounting(self, model: Any) -> Accounting:
        """Bytes / FLOPs / memory figures of ``model`` for this scenario's training settings."""
        from fedsim.learning.accounting import (
            flops_per_sample,
            payload_bytes,
            training_memory_bytes,
        )

        cfg = self.model_config
        t = self.scenario.training
        shared = payload_bytes(model, [])
        per_e = payload_bytes(model, [0]) - shared
        f1 = flops_per_sample(model, cfg.input_shape, experts_active=1, train=True)
        f2 = flops_per_sample(model, cfg.input_shape, experts_active=2, train=True)
        f_exp = f2 - f1
        mem = [
            training_memory_bytes(model, t.batch_size, cfg.input_shape, t.optimizer, max(k, 1), momentum=t.momentum)
            for k in range(cfg.num_experts + 1)
        ]
        return Accounting(
            bytes_shared=shared, bytes_per_expert=per_e, flops_shared_per_sample=f1 - f_exp,
            flops_expert_per_sample=f_exp, mem_by_k=mem, epochs=t.local_epochs, top_k=cfg.top_k, num_experts=cfg.num_experts,
        )

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
                raise ScenarioError(str(e), file=str(self.loaded.path), key=f"devices.classes.{cls}") from None
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

    def is_online(self, c: str) -> bool:
        """Whether client ``c`` is online now (ground truth)."""
        return self.population.is_online(c) if self.population is not None else bool(self.devices[c].online)

    def device_class(self, c: str) -> str:
        """Device class of client ``c``."""
        return str(self.graph.nodes[c]["device_class"])

    def serving_bs(self, c: str) -> str:
        """Base station currently serving client ``c``."""
        return self.network.serving_bs(c)

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        """Start a transfer; the client end's device watches it (dropout, link-failure hazard)."""
        proc = self.network.transfer(src, dst, nbytes, round=r, tag=tag)
        for end in (src, dst):
            dev = self.devices.get(end)
            if dev is not None:
                dev.watch(proc, hazard=True)
        return proc

    def compute(self, c: str, flops: float, r: int, memory_bytes: float) -> simpy.Process:
        """Start a compute job of ``flops`` FLOPs needing ``memory_bytes`` on client ``c``."""
        return self.devices[c].compute(flops, memory_bytes=memory_bytes, round=r, tag="train")

    @staticmethod
    def cause_status(cause: Any) -> str:
        """Client status for an interrupt cause (``cause.status``: ``oom``, ``dropout`` or ``straggler``)."""
        from fedsim.devices.causes import interrupt_status

        return interrupt_status(cause)

    def true_capacity(self, c: str) -> Any:
        """Ground-truth capacity of ``c`` (what a device would self-report, before noise)."""
        from fedsim.alignment.capacity import CapacityEstimate

        if self.population is not None:  # from the columns: no device object needed
            flops, mem = self.population.capacity(c)
        else:
            dev = self.devices[c]
            flops, mem = dev.base_flops_per_s * (1.0 - dev.params.background_load_mean), dev.memory_available_bytes()
        return CapacityEstimate(
            flops_per_s=flops, memory_bytes=mem,
            up_bps=max(self.network.nominal_rate_bps(c, "up"), 1.0),
            down_bps=max(self.network.nominal_rate_bps(c, "down"), 1.0),
            latency_s=self.network.path_latency_s(c, self.server),
        )

    def new_capacity_estimator(self) -> Any:
        """The server's capacity estimator, primed with each client's noisy self-report."""
        from fedsim.alignment.capacity import CapacityEstimator

        cap = self.scenario.alignment.capacity
        est = CapacityEstimator(cap.mode, noise_cv=cap.report_noise_cv, ewma=cap.ewma)
        if self.population is not None:  # devices as columns: a client reports when first asked about
            est.reporter = lambda c: est.self_report(
                c, self.true_capacity(c), self.sim.rng.fresh_numpy(f"capacity/report/{c}"))
            return est
        rng = self.sim.rng.numpy("capacity/report")
        for c in self.clients:
            est.self_report(c, self.true_capacity(c), rng)
        return est

    # ---------------------------------------------------------------- output
    def finish(self) -> None:
        """Write end-of-run tables (edges with bytes carried); close the training executors."""
        for ex in self._executors:
            ex.close()
        self.network.finish()

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every recorded table as a DataFrame."""
        return self.sim.rec.frames()


def build_world(loaded: LoadedScenario) -> World:
    """Build the whole run of a scenario (see :class:`World`)."""
    return World(loaded)
