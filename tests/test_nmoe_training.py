"""nmoe training on the simulated clock: stages as SimPy processes, the rounds
table, results identical to the pure stage functions, the DP accountant, the
trained centralised gate, FedGate's loss variants, non-IID(tau) readings, and
inference that always ends."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.api import load_scenario
from fedsim.build import build_parts
from fedsim.cli import main
from fedsim.learning.nmoe import NMoETrainConfig, client_data
from fedsim.learning.nmoe_model import train_centralised_moe, train_nmoe
from fedsim.learning.nmoe_steps import PrivacyAccountant
from fedsim.learning.partition import partition
from fedsim.protocols.nmoe import NMoE
from fedsim.rng import RngStreams

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
# a small nmoe world on digits: 6 clients, no dropout and no memory pressure
SMALL_NMOE = [
    "protocol.name=nmoe",
    "run.rounds=2",
    "data.max_train_samples=360",
    "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 2, vehicle: 2, camera: 2}",
    "devices.dropout=false",
    "devices.memory_pressure=false",
    "protocol.nmoe.inference_horizon_s=5",
]


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202 - fixture
    from fedsim.learning.threads import torch_threads

    with torch_threads(1):  # tiny tensors: threads only add overhead
        yield


def _world(extra: list[str]) -> object:
    return build_parts(load_scenario(DEFAULT, SMALL_NMOE + extra))


@pytest.mark.parametrize(
    ("extractor", "gate", "extra"),
    [("fedce", "fedgate", []), ("fedsc", "rollgate", []), ("fedce", "fedgate", ["protocol.nmoe.fedgate_loss=dense"])],
)
def test_clocked_training_equals_pure_stage_functions(extractor: str, gate: str, extra: list[str]) -> None:
    """No client drops out -> the protocol's model is the all-clients functions' model,
    and every stage took simulated time; stage 1 and fedgate moved bytes (the
    sequential executor: the pure functions' reference)."""
    w = _world([f"protocol.nmoe.extractor={extractor}", f"protocol.nmoe.gate={gate}", "training.executor=sequential", *extra])
    p = NMoE(w)
    if gate == "rollgate":  # a short roll keeps the test fast
        p.train_config = (lambda f: (lambda: replace(f(), gate_rounds=3)))(p.train_config)  # type: ignore[method-assign]
    p.train()
    tc = p.train_config()
    pure, _, _ = train_nmoe(p.clients_data, p.model_config, tc, w.sim.rng.seed_int("nmoe/train"), dataset=w.trainer.dataset.name)
    a, b = p.model.state_dict(), pure.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = pd.DataFrame(w.sim.rec.rows("rounds"))
    assert (rows["completed"] == rows["selected"]).all()
    assert (rows["completed"] + rows["stragglers"] + rows["dropouts"] + rows["ooms"] + rows["skipped"] == rows["selected"]).all()
    assert (rows[["stragglers", "dropouts", "ooms"]].to_numpy() == 0).all()
    assert list(rows["round"]) == list(range(len(rows)))
    assert (np.diff(rows["t_end_s"]) >= 0).all() and rows["t_end_s"].iloc[-1] > 0
    s1 = rows[rows["stage"] == "extractor"]
    assert len(s1) == tc.rounds and (s1["bytes_up"] > 0).all() and (s1["bytes_down"] > 0).all() and (s1["duration_s"] > 0).all()
    assert rows[rows["stage"] == "experts"]["duration_s"].iloc[0] > 0
    s3 = rows[rows["stage"] == "gate"]
    assert (s3["bytes_up"] + s3["bytes_down"]).sum() > 0
    assert math.isfinite(rows["accuracy"].iloc[-1]) and rows["accuracy"].iloc[:-1].isna().all()
    ev = pd.DataFrame(w.sim.rec.rows("events"))
    tr = ev[(ev["kind"] == "transfer") & ev["tag"].astype(str).str.startswith("nmoe_s")]
    per_round = tr.groupby("round")["bytes"].sum()
    moved = (rows["bytes_up"] + rows["bytes_down"]).set_axis(rows["round"])
    assert per_round.to_numpy() == pytest.approx(moved[moved > 0].to_numpy())
    assert list(per_round.index) == list(moved[moved > 0].index)


def test_fedce_rounds_honour_the_training_executor() -> None:
    """Stage 1 (fedce) runs through ``training.executor``: the batched executor
    (vmap over the clients of this mlp model) gives the sequential result
    within float tolerance, and the same simulated rounds."""
    out = {}
    for ex in ("sequential", "batched"):
        w = _world(["protocol.nmoe.extractor=fedce", "protocol.nmoe.gate=rangate", f"training.executor={ex}"])
        p = NMoE(w)
        p.train()
        out[ex] = (p.training.ext.full_state, [r["t_end_s"] for r in w.sim.rec.rows("rounds")])
    (a, ta), (b, tb) = out["sequential"], out["batched"]
    assert ta == tb
    assert any(not torch.equal(a[k], b[k]) for k in a)  # really another code path
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k


def test_dropouts_are_recorded_and_shrink_the_round() -> None:
    """Clients in outage during stage 1 straggle: recorded, and the round closes at the deadline."""
    w = _world(["channel.fading=none", "channel.outage_sinr_db=30", "protocol.nmoe.deadline_s=5", "protocol.nmoe.gate=rangate"])
    NMoE(w).train()
    rows = pd.DataFrame(w.sim.rec.rows("rounds"))
    s1 = rows[rows["stage"] == "extractor"]
    assert (s1["stragglers"] > 0).all()
    assert np.allclose(s1["duration_s"], 5.0, atol=0.2)
    assert (s1["completed"] + s1["stragglers"] + s1["dropouts"] + s1["ooms"] + s1["skipped"] == s1["selected"]).all()


THREE_STATIC = """
run: {name: outage, seed: 0, rounds: 1}
topology:
  kind: explicit
  server: cloud
  nodes:
    - {id: cloud, kind: cloud, x: 0, y: 0}
    - {id: bs0, kind: bs_macro, x: 0, y: 0, range_m: 2000}
    - {id: c0, kind: client, device_class: sensor, x: 600, y: 0}
    - {id: c1, kind: client, device_class: sensor, x: 0, y: 600}
    - {id: c2, kind: client, device_class: sensor, x: -600, y: 0}
  edges:
    - {src: bs0, dst: cloud, capacity_bps: 1e9, latency_s: 0.001}
channel: {fading: none, outage_sinr_db: 30}
devices: {dropout: false, memory_pressure: false}
data: {dataset: digits, partition: iid, max_train_samples: 150}
evaluation: {max_test_samples: 60}
model: {top_k: 2}
protocol:
  name: nmoe
  nmoe: {gate: rangate, extractor: fedce, deadline_s: 5, inference_horizon_s: 10, request_rate_per_s: 1.0, request_timeout_s: 3}
"""


def test_permanent_outage_inference_ends_with_failed_requests(tmp_path: Path) -> None:
    """Three static clients whose links are in permanent outage: the run ends, the
    manifest says completed, remote requests fail with reason ``timeout``."""
    scen = tmp_path / "outage.yaml"
    scen.write_text(THREE_STATIC)
    out = tmp_path / "run"
    assert main(["run", str(scen), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    req = pd.read_parquet(out / "requests.parquet")
    remote = req[req["remote"] > 0]
    assert len(remote) > 0
    assert (remote["fail_reason"] == "timeout").all() and not remote["completed"].any()
    assert np.allclose(remote["latency_s"], 3.0)
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert rounds[rounds["stage"] == "extractor"]["stragglers"].sum() == 3


def test_cli_closing_line_reports_nmoe_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    args = ["run", str(DEFAULT), "--out", str(out), "--quiet", "--no-figures", *(f"--set={o}" for o in SMALL_NMOE), "--set=protocol.nmoe.gate=rangate"]
    assert main(args) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("final accuracy")][0]
    acc = float(line.split()[2].rstrip(","))
    ev = pd.read_parquet(out / "nmoe_eval.parquet")
    assert acc == pytest.approx(float(ev[ev["test"] == "global"]["accuracy"].iloc[0]), abs=1e-4)
    assert main(["info", str(out)]) == 0


def test_unknown_aggregator_is_a_scenario_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(DEFAULT), "--out", str(tmp_path / "x"), "--quiet", *(f"--set={o}" for o in SMALL_NMOE), "--set=protocol.nmoe.server=nowhere"])
    err = capsys.readouterr().err
    assert code == 2 and "protocol.nmoe.server" in err and "not in the topology" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    scen = tmp_path / "bad.yaml"
    scen.write_text("protocol:\n  name: nmoe\n  nmoe:\n    server: nowhere\n")
    assert main(["validate", str(scen)]) == 2
    assert f"{scen}:4: protocol.nmoe.server" in capsys.readouterr().err


def test_volunteer_client_aggregator_moves_fewer_bytes() -> None:
    """A client as the stage-1 server needs no transfer for its own leg."""
    w = _world(["protocol.nmoe.gate=rangate"])
    NMoE(w).train()
    via_cloud = sum(r["bytes_up"] for r in w.sim.rec.rows("rounds") if r["stage"] == "extractor")
    w2 = _world(["protocol.nmoe.gate=rangate", f"protocol.nmoe.server={w.clients[0]}"])
    NMoE(w2).train()
    rows = [r for r in w2.sim.rec.rows("rounds") if r["stage"] == "extractor"]
    n = len(w.clients)
    assert sum(r["bytes_up"] for r in rows) == pytest.approx(via_cloud * (n - 1) / n)


# ----------------------------------------------------------------------- privacy


def test_accountant_composes_below_linear_and_above_one_release() -> None:
    from fedsim.learning.nmoe import dp_sigma

    z = dp_sigma(8.0, 1e-5, 1.0)  # noise multiplier of one (8, 1e-5) release
    acc = PrivacyAccountant()
    assert acc.epsilon(1e-5) == 0.0
    eps = []
    for _ in range(10):
        acc.step(z)
        eps.append(acc.epsilon(1e-5))
    assert all(b > a for a, b in zip(eps, eps[1:]))
    assert eps[-1] < 10 * 8.0
    # the classic RDP -> (eps, delta) conversion is an upper bound of what the accountant reports
    alphas = np.linspace(1.01, 200, 20000)
    classic = float(np.min(10 * alphas / (2 * z * z) + np.log(1 / 1e-5) / (alphas - 1)))
    assert eps[-1] <= classic + 1e-6
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.step(0.0)


def test_fedsc_reports_epsilon_per_round_and_none_without_dp() -> None:
    w = _world(["protocol.nmoe.extractor=fedsc", "protocol.nmoe.gate=rangate"])
    NMoE(w).train()
    rows = [r for r in w.sim.rec.rows("rounds") if r["stage"] == "extractor"]
    eps = [r["dp_epsilon"] for r in rows]
    assert 0 < eps[0] < eps[1]
    (ev, _) = w.sim.rec.rows("nmoe_eval")
    assert ev["dp_epsilon"] == pytest.approx(eps[-1])
    w2 = _world(["protocol.nmoe.extractor=fedsc", "protocol.nmoe.gate=rangate", "protocol.nmoe.dp_epsilon=null"])
    NMoE(w2).train()
    assert all(math.isnan(r["dp_epsilon"]) for r in w2.sim.rec.rows("rounds"))


# ---------------------------------------------------------------- faithfulness


def _digits_clients(k: int = 4) -> tuple[list, object]:
    from fedsim.learning.datasets import load_dataset
    from fedsim.learning.models import MoEConfig
    from fedsim.rng import RngStreams

    rng = RngStreams(0)
    ds = load_dataset("digits", rng=rng.fresh_numpy("data"))
    splits = partition("noniid_tau", ds.y_train.numpy(), k, rng.fresh_numpy("split"), tau=0.3)
    cfg = MoEConfig(ds.input_shape, 10, backbone="mlp", widths=(32,), feature_dim=16, num_experts=k, top_k=1, expert_hidden=16)
    return client_data(ds, splits), cfg


def test_centralised_top1_gate_is_trained() -> None:
    """Without the auxiliary loss, the task loss alone must move a top-1 gate (before
    the fix a renormalised top-1 weight is 1 and the gate's gradient is exactly 0)."""
    from fedsim.learning.training import init_state
    from fedsim.rng import RngStreams

    cds, cfg = _digits_clients()
    cfg = replace(cfg, aux_loss_weight=0.0)
    tc = NMoETrainConfig(top_k=1, rounds=2, local_epochs=1)
    model = train_centralised_moe(cds, cfg, tc, 0)
    mcfg = replace(cfg, num_experts=len(cds), top_k=1, top1_gate_prob=True)
    init = init_state(mcfg, RngStreams(0).seed_int("nmoe/central/init"))
    moved = max(float((model.state_dict()[k] - init[k]).abs().max()) for k in init if k.startswith("gate."))
    assert moved > 1e-3


def test_fedgate_topk_noisy_differs_from_dense_and_lowers_the_loss() -> None:
    from fedsim.learning.nmoe import extract_features, train_experts
    from fedsim.learning.nmoe_steps import FedGateSteps, train_extractor

    cds, cfg = _digits_clients()
    tc = NMoETrainConfig(top_k=2, rounds=1, gate_rounds=5, expert_epochs=3)
    ext = train_extractor(cds, cfg, tc, 0)
    feats = [extract_features(cfg, ext.backbone, c.x) for c in cds]
    ys = [c.y for c in cds]
    experts = train_experts(feats, ys, cfg, tc, 0, init=ext.head)
    states = {}
    for loss in ("topk_noisy", "dense"):
        steps = FedGateSteps(feats, ys, experts, cfg, replace(tc, fedgate_loss=loss), 0)
        first = steps.loss()
        for r in range(tc.gate_rounds):
            last = steps.round(r, steps.select(r))
        assert last < first
        states[loss] = steps.gate_state
    assert not torch.equal(states["topk_noisy"]["1.weight"], states["dense"]["1.weight"])


@pytest.mark.parametrize(("definition", "share"), [("outside_share", 0.5), ("paper_table", 2.0 / 3.0)])
def test_noniid_tau_definitions(definition: str, share: float) -> None:
    labels = np.repeat(np.arange(10), 1000)
    splits = partition("noniid_tau", labels, 10, RngStreams(0).fresh_numpy("split"), tau=0.5, test_fraction=0.0, tau_definition=definition, samples_per_client=300)
    for i, s in enumerate(splits):
        y = labels[s.train_idx]
        assert np.mean(y == i) == pytest.approx(share, abs=0.01)


def test_gates_sharing_a_cache_learn_stages_1_and_2_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench runs three gates on one world and seed with one ``cache``: the
    second and third reuse stage 1's extractor *and* stage 2's experts (a
    cache hit on stage 1 used to leave the stage-2 key unset, so stage 2 was
    learned again for every gate), and reuse gives the model a fresh run gives."""
    import fedsim.learning.nmoe as nmoe_learning

    calls = {"n": 0}
    real = nmoe_learning.train_experts

    def counted(*a: object, **k: object) -> object:
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(nmoe_learning, "train_experts", counted)
    cache: dict = {}
    models = []
    for gate in ("rangate", "fedgate", "fedgate"):
        p = NMoE(_world(["protocol.nmoe.extractor=fedce", f"protocol.nmoe.gate={gate}", "protocol.nmoe.inference_horizon_s=1"]))
        p.cache = cache
        p.train()
        models.append(p.model.state_dict())
    assert calls["n"] == 1
    fresh = NMoE(_world(["protocol.nmoe.extractor=fedce", "protocol.nmoe.gate=fedgate", "protocol.nmoe.inference_horizon_s=1"]))
    fresh.train()
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(models[1][k], v) and torch.equal(models[2][k], v), k
