"""Capacity-sized sub-networks (``protocol.fedmoe.expert_widths``, issue 33 item 4):
per-width FedAvg with hand-computed numbers, bytes / FLOPs charged by width, and widths
that fit each client's memory in a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.api import load_scenario, run
from fedsim.learning.aggregation import aggregate
from fedsim.learning.models import MoEConfig
from fedsim.learning.subnet import choose_width, slice_state, sliced_average, width_config
from fedsim.learning.training import TrainConfig, Update, init_state, train_local
from fedsim.parts.learning import Trainer
from fedsim.parts.subnet import Subnetworks

REPO = Path(__file__).resolve().parents[1]


def _update(cid: int, state: dict[str, torch.Tensor], n: int, routed: int) -> Update:
    return Update(client_id=cid, round=0, experts=[0], state=state, num_samples=n,
                  samples_per_expert=np.array([routed]), mean_gate_prob=None,
                  loss_first=1.0, loss_last=0.5, flops=0.0, num_steps=1)


def test_per_width_fedavg_hand_computed() -> None:
    # Prepare: an expert of 4 hidden units (fc1 4x2, fc2 3x4) held at global value 9;
    # client 1 holds it full width (30 samples routed), client 2 at half width (10 samples)
    g = {"experts.0.fc1.weight": torch.full((4, 2), 9.0), "experts.0.fc1.bias": torch.full((4,), 9.0),
         "experts.0.fc2.weight": torch.full((3, 4), 9.0)}
    u1 = _update(1, {"experts.0.fc1.weight": torch.ones(4, 2), "experts.0.fc1.bias": torch.ones(4),
                     "experts.0.fc2.weight": torch.ones(3, 4)}, 30, 30)
    u2 = _update(2, {"experts.0.fc1.weight": torch.full((2, 2), 5.0), "experts.0.fc1.bias": torch.full((2,), 5.0),
                     "experts.0.fc2.weight": torch.full((3, 2), 5.0)}, 10, 10)
    # Execute
    s = aggregate(g, [u1, u2], num_experts=1).state
    # Assert: the overlap (first 2 hidden units) is (30*1 + 10*5) / 40 = 2; the rest is client 1's alone
    assert s["experts.0.fc1.weight"].tolist() == [[2.0, 2.0], [2.0, 2.0], [1.0, 1.0], [1.0, 1.0]]
    assert s["experts.0.fc1.bias"].tolist() == [2.0, 2.0, 1.0, 1.0]
    assert s["experts.0.fc2.weight"].tolist() == [[2.0, 2.0, 1.0, 1.0]] * 3  # fc2 is sliced by columns


def test_elements_no_holder_covers_keep_their_global_value() -> None:
    like = torch.full((4,), 9.0)
    out = sliced_average([torch.ones(2), torch.full((1,), 5.0)], np.array([30.0, 10.0]), like)
    assert out.tolist() == [2.0, 1.0, 9.0, 9.0]  # (30 + 50) / 40; client 1 only; nobody
    with pytest.raises(ValueError, match="not a corner"):
        sliced_average([torch.ones(5)], np.array([1.0]), like)


def test_a_job_trains_the_sub_network_and_folds_back() -> None:
    cfg = MoEConfig((6,), 3, widths=(), feature_dim=6, num_experts=2, top_k=1, expert_hidden=8)
    g = init_state(cfg, 0)
    sub = width_config(cfg, 0.25)
    assert sub.expert_hidden == 2
    s = slice_state(g, sub)
    assert s["experts.1.fc1.weight"].shape == (2, 6) and torch.equal(s["experts.1.fc1.weight"], g["experts.1.fc1.weight"][:2])
    assert torch.equal(s["experts.1.fc2.weight"], g["experts.1.fc2.weight"][:, :2])
    from fedsim.learning.training import TrainJob

    x, y = torch.randn(20, 6, generator=torch.Generator().manual_seed(1)), torch.arange(20) % 3
    u = train_local(TrainJob(0, 0, s, sub, [1], x, y, TrainConfig(lr=0.1), seed=3))
    assert u.state["experts.1.fc1.weight"].shape == (2, 6)
    new = aggregate(g, [u], num_experts=2).state
    assert not torch.equal(new["experts.1.fc1.weight"][:2], g["experts.1.fc1.weight"][:2])
    assert torch.equal(new["experts.1.fc1.weight"][2:], g["experts.1.fc1.weight"][2:])  # units it never held


def test_bytes_and_flops_are_charged_by_width() -> None:
    f, h, c = 6, 8, 3
    cfg = MoEConfig((f,), c, widths=(), feature_dim=f, num_experts=2, top_k=1, expert_hidden=h)
    trainer = Trainer(None, [], None, {}, cfg, TrainConfig(), lambda: None, None)  # type: ignore[arg-type]
    sn = Subnetworks(trainer, [1.0, 0.5])
    for r in (1.0, 0.5):
        hr = math.ceil(r * h)
        acct = sn.acct[r]
        assert acct.bytes_per_expert == 4 * (f * hr + hr + hr * c + c)  # fc1 + fc2, float32
        # training = 3 x forward: Linear f->hr, ReLU, Linear hr->c, and the gate-weighted sum of its c outputs
        assert acct.flops_expert_per_sample == 3 * (2 * f * hr + hr + hr + 2 * hr * c + c + 2 * c)
    assert sn.acct[0.5].bytes_shared == sn.acct[1.0].bytes_shared  # backbone and gate stay whole
    assert sn.acct[0.5].memory_bytes(1) < sn.acct[1.0].memory_bytes(1)


def test_choose_width_takes_the_widest_that_fits() -> None:
    mem = {1.0: 100.0, 0.5: 40.0, 0.25: 20.0}.__getitem__
    assert choose_width([0.25, 1.0, 0.5], 100.0, mem) == 1.0
    assert choose_width([0.25, 1.0, 0.5], 99.0, mem) == 0.5
    assert choose_width([0.25, 1.0, 0.5], 10.0, mem) == 0.25  # none fits: the narrowest (budget 0 skips it)
    # compute: the widest that fits in memory and is on time; none on time: the narrowest that fits
    assert choose_width([0.25, 1.0, 0.5], 100.0, mem, on_time=lambda r: r <= 0.5) == 0.5
    assert choose_width([0.25, 1.0, 0.5], 100.0, mem, on_time=lambda r: False) == 0.25


def test_a_slow_client_gets_the_width_predicted_to_meet_the_deadline() -> None:
    # memory for every width, but at 1500 FLOP/s only a narrow expert's round ends within 600 s x 0.8
    from fedsim.alignment.capacity import CapacityEstimate

    sn = Subnetworks(_wide_trainer(), [1.0, 0.5, 0.25])
    est = CapacityEstimate(flops_per_s=1500.0, memory_bytes=1e9, up_bps=1e9, down_bps=1e9, latency_s=0.0)
    times = {r: sn.predicted_s(r, est, 40) for r in sn.ratios}
    assert times[1.0] > 480.0 and times[0.5] > 480.0 >= times[0.25]
    assert sn.assign_width("s", est, 40, 600.0, 0.2) == 0.25
    assert sn.assign_width("s", est) == 1.0  # memory only


def _wide_trainer() -> Trainer:
    """A trainer whose model is the run test's (digits, 4 experts of 2 x 64 hidden units)."""
    cfg = MoEConfig((64,), 10, widths=(8,), feature_dim=8, num_experts=4, top_k=2, expert_hidden=64, expert_layers=2)
    return Trainer(None, [], None, {}, cfg, TrainConfig(momentum=0.9, batch_size=16, local_epochs=2), lambda: None, None)  # type: ignore[arg-type]


def test_the_width_a_client_gets_fits_its_memory() -> None:
    # the fast sibling of the run test below: a sensor with 80 kB free cannot hold one
    # full-width expert (budget 0: skipped), but gets the widest sub-network that fits
    from fedsim.alignment.capacity import CapacityEstimate

    sn = Subnetworks(_wide_trainer(), [1.0, 0.5, 0.25])
    est = CapacityEstimate(flops_per_s=1e9, memory_bytes=80_000.0, up_bps=1e6, down_bps=1e6, latency_s=0.01)
    assert sn.acct[1.0].budget(est, 40, 600.0, 0.2) == 0
    w = sn.assign_width("sensor0", est)
    k = sn.accounting("sensor0").budget(est, 40, 600.0, 0.2)
    assert w == 0.5 and k >= 1
    k = sn.fit_budget("sensor0", est, k)
    assert k >= 1 and sn.accounting("sensor0").memory_bytes(k) <= est.memory_bytes


def test_the_budget_is_cut_to_the_exact_memory_of_the_width() -> None:
    # 2 quarter-width experts need 37 472 B to train (activations of 2 experts), 1 needs 25 704 B:
    # with 30 kB free a budget of 2 is cut to 1
    from fedsim.alignment.capacity import CapacityEstimate

    sn = Subnetworks(_wide_trainer(), [0.25])
    est = CapacityEstimate(flops_per_s=1e12, memory_bytes=30_000.0, up_bps=1e9, down_bps=1e9, latency_s=0.0)
    sn.assign_width("camera0", est)
    assert sn.accounting("camera0").memory_bytes(2) > 30_000.0 >= sn.accounting("camera0").memory_bytes(1)
    assert sn.fit_budget("camera0", est, 2) == 1
    assert sn.fit_budget("camera0", est, 1) == 1


@pytest.mark.slow
def test_sub_network_widths_fit_each_clients_memory(tmp_path: Path) -> None:
    # Prepare: sensors whose free memory (memory_gb x (1 - 0.2), reported without noise) holds a
    # quarter-width expert but not a full one; vehicles hold full ones
    base = ["run.rounds=1", "data.max_train_samples=80", "evaluation.max_test_samples=30", "output.figures=false",
            "topology.grid.clients={sensor: 2, vehicle: 2}", "devices.dropout=false", "devices.memory_pressure=false",
            "model.hidden=8", "model.feature_dim=8", "model.expert_hidden=64", "model.expert_layers=2",
            "protocol.fedmoe.clients_per_round=4", "protocol.fedmoe.over_selection=1.0",
            "protocol.fedmoe.alignment.capacity.report_noise_cv=0", "protocol.fedmoe.deadline_s=600",
            "devices.classes.sensor.flops_mean=1e9", "devices.classes.sensor.memory_gb=0.0001",
            "protocol.fedmoe.expert_widths=[1.0, 0.5, 0.25]", f"output.dir={tmp_path}"]
    loaded = load_scenario(REPO / "scenarios" / "smart-city-small.yaml", base)
    # Execute
    d = run(loaded).run_dir
    ev = pd.read_parquet(d / "events.parquet")
    cl = pd.read_parquet(d / "clients.parquet")
    # Assert: every sensor trained experts, none ran out of memory
    sensors = cl[cl.device_class == "sensor"]
    assert len(sensors) == 2 and (sensors.status == "completed").all() and (sensors.k >= 1).all()
    assert not (cl.status == "oom").any()
    # ... and the memory charged for its width fits its free memory; the full width would not

    sn = Subnetworks(_wide_trainer(), [1.0, 0.5, 0.25])
    free = 0.0001e9 * (1 - 0.2)
    assert sn.acct[1.0].memory_bytes(1) > free
    widths = ev[ev.kind == "subnetwork"].set_index(["round", "node"]).width
    for row in cl[cl.status == "completed"].itertuples():
        w = float(widths[(row.round, row.client)])
        if row.device_class == "sensor":
            assert w < 1.0 and sn.acct[w].memory_bytes(row.k) <= free
        # bytes and FLOPs charged are the width's
        assert row.bytes_down == pytest.approx(sn.acct[w].payload_bytes(list(range(row.k))))
        assert row.flops == pytest.approx(sn.acct[w].job_flops(row.k, row.num_samples))


@pytest.mark.parametrize(("override", "rule"), [
    ("protocol.fedmoe.aggregation=async", "sync mode only"),
    ("model.expert_hidden=0", "expert MLP heads"),
])
def test_expert_widths_outside_their_setting_is_a_one_line_error(override: str, rule: str) -> None:
    from fedsim.config import ScenarioError

    with pytest.raises(ScenarioError, match=f"protocol.fedmoe.expert_widths: .*{rule}"):
        load_scenario(REPO / "scenarios" / "subnetworks.yaml", [override])
