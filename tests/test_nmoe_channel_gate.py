"""Channel-aware gating for NMoE inference (issue 33, item 1): the gate scores each
expert by routing probability and the latency the requesting client predicts;
weight 0 is today's gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import simpy
import torch

from fedsim.engine import Simulation
from fedsim.net.star import StarNetwork, TransferOutcome
from fedsim.protocols.nmoe import InferenceCosts, InferenceSim
from fedsim.protocols.nmoe_gate import LatencyEstimator, channel_aware_topk, gate_probs

COSTS = InferenceCosts(extract_flops=1e8, expert_flops=5e7, latent_bytes=1250.0, reply_bytes=125.0)
CLIENTS = ["a", "b", "c"]
#: client a's routing probabilities: its own expert is poor, b and c are near-equal (b slightly ahead)
PROBS = torch.tensor([0.02, 0.50, 0.48])


class _OutageNet:
    """A star network where every transfer to or from ``down`` stalls (a link in outage)
    until interrupted; the rest is a :class:`StarNetwork`."""

    def __init__(self, env: simpy.Environment, down: str) -> None:
        self.env, self.down = env, down
        self.star = StarNetwork(env, CLIENTS, rate_bps=1e6, latency_s=0.01)

    def transfer(self, src: str, dst: str, nbytes: float, round: int = -1, tag: str = "") -> simpy.Process:  # noqa: A002
        if self.down not in (src, dst):
            return self.star.transfer(src, dst, nbytes)
        return self.env.process(self._stall(nbytes))

    def _stall(self, nbytes: float) -> Any:
        t0 = float(self.env.now)
        try:
            yield self.env.event()  # never triggered: the flow has no rate
        except simpy.Interrupt:
            return TransferOutcome(nbytes, 0.0, False, t0, float(self.env.now))


def _route(rng: np.random.Generator, allowed: list[bool] | None, penalty: list[float] | None = None) -> tuple[list[int], bool]:
    """Top-1 of :data:`PROBS` (today's gate), or the channel-aware choice with ``penalty``."""
    if penalty is None:
        return [int(PROBS.argmax())], True
    idx, _ = channel_aware_topk(PROBS, penalty, 1)
    return idx, True


def _run(weight: float) -> tuple[list[dict], InferenceSim]:
    sim = Simulation(0)
    net = _OutageNet(sim.env, "b")
    inf = InferenceSim(
        sim.env, sim.rec, CLIENTS, {"a": _route}, net.transfer, lambda c: 1e9, COSTS, 2.0, 30.0,
        {"a": sim.rng.numpy("req/a")}, timeout_s=5.0, gate_weight=weight, csi=lambda c: c != "b",
    )
    procs = [sim.env.process(inf.generate("a"))]
    sim.env.run(until=sim.env.all_of(procs))
    sim.env.run(until=sim.env.all_of(inf.pending))
    return sim.rec.rows("requests"), inf


@pytest.mark.parametrize("weight", [0.1, 1.0, 4.0])
def test_channel_aware_gate_never_picks_the_expert_in_outage(weight: float) -> None:
    rows, _ = _run(weight)
    assert len(rows) > 30
    assert all(r["experts"] == "2" for r in rows)  # c, near-equal and reachable, every time
    assert not any(r["fail_reason"] == "timeout" for r in rows)
    assert all(r["completed"] for r in rows)


def test_todays_gate_waits_on_the_expert_in_outage_until_timeout() -> None:
    """The premise (weight 0): every request goes to b and times out."""
    rows, _ = _run(0.0)
    assert len(rows) > 30
    assert all(r["experts"] == "1" and r["fail_reason"] == "timeout" for r in rows)
    assert all(r["latency_s"] == pytest.approx(5.0) for r in rows)


def test_weight_zero_calls_todays_route_unchanged() -> None:
    """Weight 0 builds no estimator and calls the routes as before (two arguments)."""
    calls: list[int] = []

    def route(rng, allowed):  # noqa: ANN001, ANN202  (today's signature: a penalty would raise TypeError)
        calls.append(1)
        return [int(rng.integers(3))], True

    def rows(**kw: Any) -> list[dict]:
        sim = Simulation(0)
        net = StarNetwork(sim.env, CLIENTS)
        inf = InferenceSim(sim.env, sim.rec, CLIENTS, {c: route for c in CLIENTS}, net.transfer, lambda c: 1e9, COSTS, 1.0, 20.0,
                           {c: sim.rng.numpy(f"req/{c}") for c in CLIENTS}, timeout_s=5.0, **kw)
        inf.run()
        assert inf.estimator is None
        return sim.rec.rows("requests")

    assert rows(gate_weight=0.0) == rows() and calls


def test_estimator_predicts_from_observations_only() -> None:
    est = LatencyEstimator(CLIENTS, 10.0, csi=lambda c: c != "c")
    # nothing observed yet: the remote expert b costs 0, c (in outage now) the timeout
    assert est.predict("a", 0.0, local_queue=0, local_compute_s=0.5) == [0.5, 0.0, 10.0]
    est.start("a", 1, 0.0)
    est.end("a", 1, 0.0, t_net=0.2, t_exp=0.1, ok=True)  # a measurement: 0.2 s network, 0.1 s compute
    assert est.predict("a", 1.0, 2, 0.5) == pytest.approx([1.5, 0.3, 10.0])
    est.start("a", 1, 1.0)  # unanswered: one more job in front, and its age bounds the latency
    assert est.predict("a", 1.1, 0, 0.5)[1] == pytest.approx(0.4)
    assert est.predict("a", 4.0, 0, 0.5)[1] == pytest.approx(3.0)
    assert est.predict("a", 40.0, 0, 0.5)[1] == pytest.approx(10.0)  # capped at the timeout
    est.end("a", 1, 1.0, t_net=0.0, t_exp=0.0, ok=False)  # a failure is no measurement
    assert est.predict("a", 41.0, 0, 0.5)[1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="timeout_s"):
        LatencyEstimator(CLIENTS, 0.0)


def test_zero_penalty_is_todays_top_k_of_a_learned_gate() -> None:
    """With no penalty the channel-aware choice equals NMoEModel.route (experts and weights)."""
    from types import SimpleNamespace

    from fedsim.learning.models import MoEConfig
    from fedsim.learning.nmoe_model import NMoEModel, gate_module

    cfg = MoEConfig((8,), 3, backbone="mlp", widths=(8,), feature_dim=8, num_experts=5, top_k=2, expert_hidden=8)
    gen = torch.Generator().manual_seed(0)
    gate = gate_module(cfg, 5)
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    m = SimpleNamespace(gate=gate, top_k=2, generator=gen)  # what NMoEModel.route reads
    h = torch.randn(50, 8, generator=gen)
    mask = torch.tensor([True, False, True, True, True])
    for i in range(50):
        idx, w = NMoEModel.route(m, h[i : i + 1], mask)  # type: ignore[arg-type]
        mine, w2 = channel_aware_topk(gate_probs(m, h[i : i + 1], mask), [0.0] * 5, 2)
        assert mine == [int(e) for e in idx[0]]
        assert torch.allclose(w2, w[0])


def test_channel_aware_topk_validates() -> None:
    with pytest.raises(ValueError, match="penalty"):
        channel_aware_topk(PROBS, [0.0], 1)
    with pytest.raises(ValueError, match="positive"):
        channel_aware_topk(torch.zeros(3), [0.0] * 3, 1)
    assert channel_aware_topk(torch.tensor([0.5, 0.0, 0.5]), [0.0, 0.0, 1.0], 3)[0] == [0, 2]


def _tiny_router(monkeypatch: pytest.MonkeyPatch, forbid: bool) -> Any:
    """NMoE's real router on a hand-made 3-expert learned gate (features = inputs);
    with ``forbid`` the channel-aware functions raise when called."""
    from types import SimpleNamespace

    import fedsim.protocols.nmoe as nmoe_mod
    from fedsim.learning.models import MoEConfig
    from fedsim.learning.nmoe_model import NMoEModel, gate_module
    from fedsim.protocols.nmoe import NMoE

    if forbid:
        def boom(*a: Any, **k: Any) -> Any:
            raise AssertionError("channel-aware code reached")

        monkeypatch.setattr(nmoe_mod, "channel_aware_topk", boom)
        monkeypatch.setattr(nmoe_mod, "gate_probs", boom)
        monkeypatch.setattr(nmoe_mod, "LatencyEstimator", boom)
    cfg = MoEConfig((4,), 3, backbone="mlp", widths=(4,), feature_dim=4, num_experts=3, top_k=1, expert_hidden=4)
    gen = torch.Generator().manual_seed(1)
    gate = gate_module(cfg, 3)
    m = SimpleNamespace(gate=gate, top_k=1, generator=gen)
    m.route = lambda h, mask: NMoEModel.route(m, h, mask)  # type: ignore[arg-type]
    m.expert_proba = lambda h, idx, w: torch.nn.functional.one_hot(idx[:, 0], 3).float()  # expert e answers class e
    proto = NMoE.__new__(NMoE)
    proto.model = m
    h = torch.randn(20, 4, generator=gen)
    return proto._router(h, torch.zeros(20, dtype=torch.int64))


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_weight_zero_never_enters_the_channel_aware_code(monkeypatch: pytest.MonkeyPatch, weight: float) -> None:
    """NMoE's router at weight 0 takes today's path only (the channel-aware functions are
    never called); the same check at weight 1 must reach them (the test can fail)."""
    route = _tiny_router(monkeypatch, forbid=True)

    def run() -> list[dict]:
        sim = Simulation(0)
        net = StarNetwork(sim.env, CLIENTS)
        inf = InferenceSim(sim.env, sim.rec, CLIENTS, {c: route for c in CLIENTS}, net.transfer, lambda c: 1e9, COSTS, 1.0, 10.0,
                           {c: sim.rng.numpy(f"req/{c}") for c in CLIENTS}, timeout_s=5.0, gate_weight=weight)
        inf.run()
        return sim.rec.rows("requests")

    if weight == 0.0:
        assert len(run()) > 10
    else:
        with pytest.raises(AssertionError, match="channel-aware code reached"):
            run()


def test_nmoe_router_with_a_large_weight_avoids_the_owner_in_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """NMoE's real router, channel-aware: with w = 1000 the outage penalty outweighs any
    routing probability, so nobody but b itself uses b's expert (b's link is in outage)."""
    route = _tiny_router(monkeypatch, forbid=False)
    sim = Simulation(0)
    net = _OutageNet(sim.env, "b")
    inf = InferenceSim(sim.env, sim.rec, CLIENTS, {c: route for c in CLIENTS}, net.transfer, lambda c: 1e9, COSTS, 1.0, 20.0,
                       {c: sim.rng.numpy(f"req/{c}") for c in CLIENTS}, timeout_s=5.0, gate_weight=1000.0, csi=lambda c: c != "b")
    inf.run()
    rows = sim.rec.rows("requests")
    assert len(rows) > 20
    assert all(r["experts"] != "1" for r in rows if r["client"] != "b")
    assert all(r["experts"] == "1" for r in rows if r["client"] == "b")  # in outage itself: only its own expert is reachable
    assert not any(r["fail_reason"] == "timeout" for r in rows)
