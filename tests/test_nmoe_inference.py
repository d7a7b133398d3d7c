"""NMoE serverless inference on the simulated clock: closed-form latencies, queueing,
bytes, and the protocol end to end on the systems stand-in (StarSystems)."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import simpy
import torch

from fedsim.engine import Simulation
from fedsim.learning.datasets import load_dataset
from fedsim.learning.models import MoEConfig
from fedsim.learning.partition import partition
from fedsim.net.star import StarNetwork
from fedsim.protocols.nmoe import InferenceCosts, InferenceSim, NMoE, latency_summary

COSTS = InferenceCosts(extract_flops=1e9, expert_flops=5e8, latent_bytes=1250.0, reply_bytes=125.0)


def _sim(routes: dict, rate: float = 1.0, horizon: float = 10.0, seed: int = 0) -> tuple[Simulation, InferenceSim]:
    sim = Simulation(seed)
    clients = ["a", "b", "c"]
    net = StarNetwork(sim.env, clients, rate_bps=1e6, latency_s=0.01)
    inf = InferenceSim(
        sim.env, sim.rec, clients, routes, net.transfer, lambda c: 1e9, COSTS, rate, horizon,
        {c: sim.rng.numpy(f"req/{c}") for c in clients},
    )
    return sim, inf


def test_single_remote_request_closed_form() -> None:
    sim, inf = _sim({})
    proc = sim.env.process(inf.serve(0, "a", [1], True))
    sim.env.run(until=proc)
    (row,) = sim.rec.rows("requests")
    # extract 1 s; latent: 10 ms latency + 2 links x 1250 B x 8 / 1 Mbit/s = 0.01 + 0.02;
    # expert 0.5 s; reply: 0.01 + 2 x 0.001
    assert row["t_extract_s"] == pytest.approx(1.0)
    assert row["t_network_s"] == pytest.approx(0.03 + 0.012)
    assert row["t_expert_s"] == pytest.approx(0.5)
    assert row["t_queue_s"] == 0.0
    assert row["latency_s"] == pytest.approx(1.0 + 0.042 + 0.5)
    assert row["bytes"] == pytest.approx(1375.0)
    assert row["experts"] == "1" and row["local"] is False and row["remote"] == 1 and row["completed"]


def test_local_expert_moves_no_bytes_and_parallel_branches() -> None:
    sim, inf = _sim({})
    p = sim.env.process(inf.serve(0, "a", [0, 2], False))
    sim.env.run(until=p)
    (row,) = sim.rec.rows("requests")
    assert row["local"] is True and row["remote"] == 1 and row["bytes"] == pytest.approx(1375.0)
    # the local branch (0.5 s compute) and the remote one (0.042 s network + 0.5 s) run in parallel
    assert row["latency_s"] == pytest.approx(1.0 + 0.542)
    assert row["latency_s"] == pytest.approx(row["t_extract_s"] + row["t_network_s"] + row["t_queue_s"] + row["t_expert_s"])


def test_requests_queue_at_a_busy_expert() -> None:
    sim, inf = _sim({})
    p1 = sim.env.process(inf.serve(0, "a", [2], True))
    p2 = sim.env.process(inf.serve(1, "b", [2], True))
    sim.env.run(until=sim.env.all_of([p1, p2]))
    rows = sorted(sim.rec.rows("requests"), key=lambda r: r["request"])
    assert rows[0]["t_queue_s"] == 0.0
    assert rows[1]["t_queue_s"] == pytest.approx(0.5, abs=0.05)  # waits for the first expert job
    assert rows[1]["latency_s"] > rows[0]["latency_s"]


def test_poisson_arrivals_rate_and_determinism() -> None:
    routes = {c: (lambda rng, allowed, i=i: ([int(rng.integers(3))], True)) for i, c in enumerate(["a", "b", "c"])}
    sim, inf = _sim(routes, rate=2.0, horizon=200.0)
    inf.run()
    rows = sim.rec.rows("requests")
    assert len(rows) == pytest.approx(3 * 2.0 * 200.0, rel=0.1)
    assert all(r["t_s"] < 200.0 for r in rows)
    sim2, inf2 = _sim(routes, rate=2.0, horizon=200.0)
    inf2.run()
    assert [r["latency_s"] for r in rows] == [r["latency_s"] for r in sim2.rec.rows("requests")]
    s = latency_summary(rows)
    assert s["p50_s"] <= s["p95_s"] <= s["p99_s"]


def test_nmoe_protocol_on_stand_in_world() -> None:
    """Train (tiny) on digits and serve requests on the systems stand-in (StarSystems)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    from fedsim.config.schema import NMoEConfig
    from fedsim.engine.checkpoint import Replay
    from fedsim.learning.training import TrainConfig
    from fedsim.parts.bundle import Parts, RunSettings
    from fedsim.parts.learning import Evaluator, Trainer
    from fedsim.parts.systems import StarSystems

    sim = Simulation(0)
    ds = load_dataset("digits", rng=sim.rng.fresh_numpy("data"))
    clients = [f"c{i}" for i in range(4)]
    splits = dict(zip(clients, partition("noniid_tau", ds.y_train.numpy(), 4, sim.rng.fresh_numpy("split"), tau=0.3)))
    cfg = MoEConfig(ds.input_shape, 10, backbone="cnn", widths=(8,), feature_dim=16, num_experts=4, top_k=2, expert_hidden=16)
    trainer = Trainer(sim, clients, ds, splits, cfg, TrainConfig(lr=0.05, momentum=0.9), lambda: None, Replay(record=False))
    world = Parts(
        protocol="nmoe", config=NMoEConfig(extractor="fedce", gate="fedgate", request_rate_per_s=0.5, inference_horizon_s=20.0),
        run=RunSettings(rounds=2), sim=sim, clients=clients, systems=StarSystems(sim.env, clients),
        trainer=trainer, evaluator=Evaluator(trainer, ds.x_test, ds.y_test, None, sim.rec),
    )
    try:
        NMoE(world).run()
    finally:
        torch.set_num_threads(old)
    rows = sim.rec.rows("requests")
    assert len(rows) > 10
    assert all(len(r["experts"].split(",")) == 2 for r in rows)
    assert all((r["bytes"] == 0) == (r["remote"] == 0) for r in rows)
    (ev_own, ev_glob) = sim.rec.rows("nmoe_eval")
    assert ev_own["test"] == "own" and 0.0 <= ev_glob["accuracy"] <= 1.0
    (summ,) = sim.rec.rows("nmoe_inference")
    assert summ["n"] == len(rows) and np.isfinite(summ["p99_s"])
    # one rounds row per training-stage round (2 stage-1 rounds, the experts, FedGate's
    # scoring and its 50 rounds); the last row carries the trained model's global accuracy
    stages = sim.rec.rows("rounds")
    assert [r["stage"] for r in stages] == ["extractor"] * 2 + ["experts"] + ["gate"] * 51
    assert stages[-1]["accuracy"] == ev_glob["accuracy"] and np.isfinite(stages[0]["loss"])
    from fedsim.engine.tables import check_frame

    for name, df in sim.rec.frames().items():
        check_frame(name, df)  # every table nmoe writes is declared


def test_star_network_validates() -> None:
    with pytest.raises(ValueError, match="rate_bps"):
        StarNetwork(simpy.Environment(), ["a"], rate_bps=0)


def test_nmoe_cifar10_scenario_validates() -> None:
    from pathlib import Path

    from fedsim.config.loader import load_scenario
    from tests.shared_data import missing_data_dir

    path = Path(__file__).resolve().parents[1] / "scenarios" / "nmoe-cifar10.yaml"
    if (gone := missing_data_dir(path)) is not None:
        pytest.skip(f"{path.name}: data directory {gone} is missing")
    loaded = load_scenario(path)
    s = loaded.scenario
    assert s.protocol.name == "nmoe" and s.data.dataset == "cifar10" and s.data.partition == "noniid_tau"
    assert sum(s.topology.grid.clients.values()) == 10
    assert loaded.resolve_path(s.data.dir).name == "cifar10-subset"


def test_offline_origin_issues_nothing_and_routes_see_online_owners() -> None:
    seen: list = []

    def route(rng, allowed):  # noqa: ANN001, ANN202
        seen.append(allowed)
        return [0], True

    sim = Simulation(0)
    clients = ["a", "b", "c"]
    net = StarNetwork(sim.env, clients)
    inf = InferenceSim(
        sim.env, sim.rec, clients, {c: route for c in clients}, net.transfer, lambda c: 1e9, COSTS, 1.0, 50.0,
        {c: sim.rng.numpy(f"req/{c}") for c in clients}, online=lambda c: c != "b",
    )
    inf.run()
    rows = sim.rec.rows("requests")
    assert rows and all(r["client"] != "b" for r in rows)
    assert inf.skipped_offline > 0
    assert all(a == [True, False, True] for a in seen)


def _nmoe_table() -> ModuleType:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "nmoe_table.py"
    spec = importlib.util.spec_from_file_location("nmoe_table", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_central_local_ratio_counts_own_expert_slots() -> None:
    """The centralised MoE's LR (bench): share of client i's top-k slots that go to expert i."""
    from fedsim.learning.models import MoEClassifier

    mod = _nmoe_table()
    cfg = MoEConfig((4,), 3, backbone="mlp", widths=(4,), feature_dim=4, num_experts=2, top_k=1)
    model = MoEClassifier(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.gate.bias.copy_(torch.tensor([1.0, 0.0]))  # every sample goes to expert 0
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    clients = [SimpleNamespace(x_test=x), SimpleNamespace(x_test=x)]
    assert mod.central_local_ratio(model, clients) == pytest.approx(0.5)  # client 0: 1.0, client 1: 0.0
