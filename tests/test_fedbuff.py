"""Asynchronous (FedBuff) and semi-asynchronous fedmoe: staleness weights, the
buffered step, a hand-computed trace, and equivalence with sync.

The trace and equivalence tests run the real fedmoe protocol (real training,
alignment, aggregation) on smart-city-small, with the world's transfers and
compute jobs replaced by fixed per-client phase durations and a hand-written
availability trace (``TraceTiming``), so every dispatch and arrival time is
arithmetic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsim.build import build_parts, load_checked
from fedsim.learning.aggregation import aggregate
from fedsim.learning.buffered import BufferedUpdate, buffered_aggregate, staleness_weight
from fedsim.learning.training import Update
from fedsim.parts.bundle import Parts
from fedsim.protocols.fedmoe import FedMoE
from tests.systems_double import TimedSystems

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "scenarios" / "smart-city-small.yaml"


# ----------------------------------------------------------------- units
def test_staleness_weights() -> None:
    assert staleness_weight(7, "constant") == 1.0
    assert staleness_weight(0, "polynomial", a=0.5) == 1.0
    assert staleness_weight(3, "polynomial", a=0.5) == pytest.approx(0.5)
    assert staleness_weight(4, "hinge", a=0.5, b=4) == 1.0
    assert staleness_weight(6, "hinge", a=0.5, b=4) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        staleness_weight(-1, "constant")
    with pytest.raises(ValueError):
        staleness_weight(1, "linear")


def _update(cid: str, state: dict[str, torch.Tensor], n: int, spe: list[float]) -> Update:
    return Update(
        client_id=cid, round=0, experts=[0], state=state, num_samples=n, samples_per_expert=np.array(spe),
        mean_gate_prob=np.full(len(spe), 1.0 / len(spe)), loss_first=1.0, loss_last=0.5, flops=0.0, num_steps=1,
    )


def test_buffered_step_is_fedavg_without_staleness_and_discounts_stale_updates() -> None:
    g = {"backbone.w": torch.tensor([1.0, 2.0]), "experts.0.w": torch.tensor([0.0]), "experts.1.w": torch.tensor([4.0])}
    u1 = _update("a", {"backbone.w": torch.tensor([3.0, 2.0]), "experts.0.w": torch.tensor([2.0])}, 10, [5.0, 0.0])
    u2 = _update("b", {"backbone.w": torch.tensor([1.0, 6.0]), "experts.0.w": torch.tensor([5.0])}, 30, [15.0, 0.0])
    fedavg = aggregate(g, [u1, u2], 2).state
    fresh = buffered_aggregate(g, [BufferedUpdate(u, g, 1.0, {0: 1.0}) for u in (u1, u2)], 2).state
    for k in g:
        assert torch.equal(fedavg[k], fresh[k]), k
    assert torch.equal(fresh["experts.1.w"], g["experts.1.w"])  # nobody trained expert 1
    # b is stale for expert 0 only (weight 0.5): expert 0 moves 0.25*2 + 0.75*5*0.5 = 2.375, the backbone as FedAvg
    mixed = buffered_aggregate(g, [BufferedUpdate(u1, g, 1.0, {0: 1.0}), BufferedUpdate(u2, g, 1.0, {0: 0.5})], 2).state
    assert mixed["experts.0.w"].item() == pytest.approx(2.375)
    assert torch.equal(mixed["backbone.w"], fedavg["backbone.w"])
    half = buffered_aggregate(g, [BufferedUpdate(u, g, 1.0, {0: 1.0}) for u in (u1, u2)], 2, server_lr=0.5).state
    assert torch.allclose(half["backbone.w"], (g["backbone.w"] + fedavg["backbone.w"]) / 2)


# ------------------------------------------------------- timed stand-in
def timed(parts: Parts, phases: dict[str, tuple[float, float, float]], offline: dict[str, list[tuple[float, float]]]) -> TimedSystems:
    """Hand the run the systems test double: fixed phase durations per client and offline intervals."""
    parts.systems = TimedSystems(parts.sim.env, parts.systems.server, parts.clients, phases, offline)
    return parts.systems


def _world(overrides: list[str], n_clients: int) -> tuple[Parts, list[str]]:
    base = ["data.max_train_samples=300", "evaluation.max_test_samples=100", "protocol.fedmoe.server_compute_s=0"]
    w = build_parts(load_checked(SMALL, base + overrides))
    clients = [c for c in w.clients if w.trainer.num_samples(c) > 0][:n_clients]
    w.clients[:] = clients  # the one list the trainer, evaluator and protocol share
    return w, clients


def _run(world: Parts) -> FedMoE:
    p = FedMoE(world)
    p.run()
    return p


def test_async_trace_by_hand() -> None:
    """3 clients A, B, C; concurrency 2, buffer 1, 4 aggregations.

    A: 1 s down, 1 s compute, 1 s up; B: 1 / 3 / 1 s, offline on [4.5, 8); C: 1 / 1 / 1 s, offline on [0, 3.5).
    t=0    A, B dispatched (v0; C is offline)
    t=3    A arrives -> aggregation v1; A re-dispatched (v1; C still offline)
    t=4.5  B goes offline during its upload (dropout); C dispatched (v1)
    t=6    A arrives -> v2 (staleness 0); A dispatched (v2)
    t=7.5  C arrives -> v3 (staleness 1: v2 happened since its download); C dispatched (v3; B is offline)
    t=9    A arrives -> v4 (staleness 1); 4 aggregations: the run ends, C is cut in its compute
           (status in_flight, its download's bytes kept: issue 29)
    """
    w, (a, b, c) = _world(
        ["run.rounds=4", "protocol.fedmoe.aggregation=async", "protocol.fedmoe.fedbuff.concurrency=2",
         "protocol.fedmoe.fedbuff.buffer_size=1"], 3,
    )
    timed(w, {a: (1, 1, 1), b: (1, 3, 1), c: (1, 1, 1)}, {b: [(4.5, 8.0)], c: [(0.0, 3.5)]})
    p = _run(w)
    rec = w.sim.rec
    cl = rec.frame("clients").sort_values(["t_dispatch_s", "client"])
    got = [(r.client, r.round, r.t_dispatch_s, r.t_end_s, r.status) for r in cl.itertuples()]
    assert got == [
        (a, 0, 0.0, 3.0, "completed"), (b, 0, 0.0, 4.5, "dropout"), (a, 1, 3.0, 6.0, "completed"),
        (c, 1, 4.5, 7.5, "completed"), (a, 2, 6.0, 9.0, "completed"), (c, 3, 7.5, 9.0, "in_flight"),
    ]
    rounds = rec.frame("rounds")
    assert rounds["t_end_s"].tolist() == [3.0, 6.0, 7.5, 9.0]
    assert rounds["version"].tolist() == [1, 2, 3, 4]
    assert rounds["updates"].tolist() == [1, 1, 1, 1]
    assert rounds["staleness_max"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert rounds["dropouts"].tolist() == [0, 1, 0, 0]
    cut = cl[cl.status == "in_flight"].iloc[0]
    assert cut["bytes_down"] > 0 and cut["bytes_up"] == 0 and cut["wasted_bytes"] == cut["bytes_down"]
    assert not p.loop.inflight and not p.loop.buffer  # nothing left unaccounted

    # per-expert staleness = versions of that expert aggregated between download and aggregation, from the records
    upd = rec.frame("updates")
    for r in upd.itertuples():
        if r.expert < 0:
            expect = r.version - 1 - int(cl[(cl.client == r.client) & (cl.t_dispatch_s == r.t_dispatch_s)]["round"].iloc[0])
        else:
            earlier = upd[(upd.expert == r.expert) & (upd.version < r.version)]
            dispatched_at = int(cl[(cl.client == r.client) & (cl.t_dispatch_s == r.t_dispatch_s)]["round"].iloc[0])
            expect = earlier[earlier.version > dispatched_at]["version"].nunique()
        assert r.staleness == expect, r


def _equivalence_overrides(mode: str) -> list[str]:
    return [
        "run.rounds=3", f"protocol.fedmoe.aggregation={mode}", "protocol.fedmoe.clients_per_round=3",
        "protocol.fedmoe.over_selection=1.0", "protocol.fedmoe.fedbuff.concurrency=3",
        "protocol.fedmoe.fedbuff.buffer_size=3", "protocol.fedmoe.fedbuff.staleness=constant",
    ]


def _final_state(mode: str, phases: list[tuple[float, float, float]]) -> tuple[dict[str, torch.Tensor], Any]:
    w, clients = _world(_equivalence_overrides(mode), 6)
    timed(w, {c: phases[i % len(phases)] for i, c in enumerate(clients)}, {})
    p = _run(w)
    return p.global_state, w.sim.rec.frame("rounds")


def test_async_equals_sync_without_stragglers_or_dropout() -> None:
    """buffer_size = concurrency = clients_per_round, every client equally fast, nobody offline:
    async gives the weights of sync (float32 rounding of the delta form aside); semi_async too."""
    sync, r_sync = _final_state("sync", [(1, 1, 1)])
    for mode in ("async", "semi_async"):
        other, r_other = _final_state(mode, [(1, 1, 1)])
        assert r_other["staleness_max"].tolist() == [0.0, 0.0, 0.0]
        assert r_other["updates"].tolist() == r_sync["updates"].tolist() == [3, 3, 3]
        for k in sync:
            assert torch.allclose(sync[k].double(), other[k].double(), rtol=0, atol=1e-6), (mode, k)
    # the control: unequal speeds make async updates stale and the weights differ
    hetero, r_h = _final_state("async", [(1, 1, 1), (1, 4, 1), (2, 2, 2)])
    assert r_h["staleness_max"].max() >= 1
    assert any(not torch.allclose(sync[k].double(), hetero[k].double(), atol=1e-6) for k in sync if sync[k].is_floating_point())


def test_semi_async_keeps_late_updates() -> None:
    """Period 2 s, one client needs 3 s: its update arrives in round 1 and is folded in at t=4 with staleness 1."""
    w, clients = _world(
        ["run.rounds=3", "protocol.fedmoe.aggregation=semi_async", "protocol.fedmoe.fedbuff.period_s=2",
         "protocol.fedmoe.clients_per_round=2", "protocol.fedmoe.over_selection=1.0"], 2,
    )
    fast, slow = clients
    timed(w, {fast: (0.5, 0.5, 0.5), slow: (1, 1, 1)}, {})
    _run(w)
    rounds = w.sim.rec.frame("rounds")
    assert rounds["t_end_s"].tolist() == [2.0, 4.0, 6.0]
    assert rounds["updates"].tolist() == [1, 2, 1]
    assert rounds["staleness_max"].tolist()[1] == 1.0
    cl = w.sim.rec.frame("clients")
    # the slow client dispatched at t=4 is still working when the run ends at t=6: cut (issue 29)
    cut = cl[cl["status"] == "in_flight"]
    assert cut[["client", "t_dispatch_s", "t_end_s"]].values.tolist() == [[slow, 4.0, 6.0]]
    assert (cl[cl["status"] != "in_flight"]["status"] == "completed").all() and not math.isnan(cl["t_end_s"].max())


def test_async_ends_when_nobody_can_ever_work() -> None:
    """Every client offline for good: the server polls every min(deadline_s, 10) = 10 s and gives up
    after run.rounds + 1 empty polls (sync would have spent run.rounds empty rounds)."""
    w, clients = _world(["run.rounds=2", "protocol.fedmoe.aggregation=async"], 3)
    timed(w, {c: (1, 1, 1) for c in clients}, {c: [(0.0, 1e9)] for c in clients})
    _run(w)
    ev = w.sim.rec.frame("events")
    stop = ev[ev["kind"] == "async_idle_stop"]
    assert len(stop) == 1 and stop["t_s"].iloc[0] == 20.0
    assert len(w.sim.rec.rows("rounds")) == 0


def test_async_rounds_rows_carry_the_same_evaluation_columns_as_sync() -> None:
    """Both aggregation modes write their rounds rows from one place (Protocol.round_row_fields):
    the per-client inference that fedmoe's evaluation adds reaches async rows too."""
    frames = {}
    for mode in ("sync", "async"):
        w, _ = _world(_equivalence_overrides(mode), 6)
        _run(w)
        frames[mode] = w.sim.rec.frame("rounds")
    assert frames["sync"]["accuracy_client"].notna().all()
    assert frames["async"]["accuracy_client"].notna().all()
