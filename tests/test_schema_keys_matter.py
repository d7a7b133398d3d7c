"""Every scenario key changes the run or its output (issue 18, item 2).

The keys are enumerated from the schema (:mod:`tests.schema_keys`), so keys added
later are covered without editing this file. For each key the test runs a tiny
scenario twice, with the key's current value and with another valid value
(chosen generically from its type and bounds, or from :data:`VALUES` where a
key needs a particular value to show its effect), and compares a fingerprint
of the output: the run directory's path and file list and the bytes of every
table (the manifest, which records the scenario itself, is left out). A key
read only under another setting is tested under that setting (:data:`CONTEXT`).

:data:`EXCEPTIONS` lists the few keys whose effect is, by design, not in the run
directory, with the reason and where the effect is tested instead.
"""

from __future__ import annotations

import gc
import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest

from fedsim.api import load_scenario, run
from fedsim.config import ScenarioError
from tests.schema_keys import Leaf, get, inside, leaves

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"

TINY = [
    "run.rounds=2",
    "data.max_train_samples=60",
    "evaluation.max_test_samples=30",
    "topology.grid.clients={phone: 2, vehicle: 1, sensor: 1, camera: 2, drone: 1}",
    "model.hidden=8",
    "model.feature_dim=8",
    "model.expert_hidden=8",
    "output.figures=false",
    "protocol.fedmoe.clients_per_round=4",
    "devices.dropout=false",  # every client online: the keys' effects reach the tables
]

_EXPLICIT = ("topology.kind=explicit", "topology.nodes=[{id: cloud, kind: cloud, x: 0, y: 0, z: 0},"
             " {id: bs0, kind: bs_macro, x: 0, y: 0, z: 25},"
             " {id: c0, kind: client, device_class: phone, x: 60, y: 0, z: 1.5},"
             " {id: c1, kind: client, device_class: camera, x: 0, y: 90, z: 6}]",
             "topology.edges=[{src: bs0, dst: cloud, capacity_bps: 1e9, latency_s: 0.005}]")

_MEM = ("devices.classes.camera.memory_gb=4e-5", "devices.classes.camera.memory_pressure_mean_hold_s=[1, 1, 1]")

_MOVE = ("devices.classes.camera.speed_min_mps=10", "devices.classes.camera.speed_max_mps=20",
         "devices.mobility_interval_s=0.5")

#: settings under which a key is read (applied to both runs), by key prefix
CONTEXT: dict[str, tuple[str, ...]] = {
    "protocol.nmoe.": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4",
                       "protocol.nmoe.request_rate_per_s=1", "protocol.nmoe.extractor=fedsc"),
    "protocol.nmoe.gate": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4"),
    "protocol.nmoe.rollgate_p": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4",
                                 "protocol.nmoe.gate=rollgate"),
    "protocol.nmoe.fedgate_fraction": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1",
                                       "protocol.nmoe.inference_horizon_s=4", "protocol.nmoe.gate=fedgate"),
    "protocol.name": ("protocol.nmoe.inference_horizon_s=4", "run.rounds=1", "devices.dropout=true"),
    "protocol.fedmoe.alignment.min_load": ("protocol.fedmoe.alignment.policy=optimal",),
    "protocol.fedmoe.alignment.max_load": ("protocol.fedmoe.alignment.policy=optimal",),
    "protocol.fedmoe.alignment.on_infeasible": ("protocol.fedmoe.alignment.policy=optimal", "protocol.fedmoe.alignment.max_load=1"),
    "protocol.fedmoe.alignment.min_k": ("protocol.fedmoe.alignment.policy=deadline_aware",),
    "protocol.fedmoe.alignment.epsilon": ("protocol.fedmoe.alignment.policy=greedy",),
    # every online client dispatched (7 of 7), 4 needed: who trains is the policy's choice
    "protocol.fedmoe.alignment.w_p": ("protocol.fedmoe.alignment.policy=fair_participation", "protocol.fedmoe.over_selection=2.0"),
    "data.tau": ("data.partition=noniid_tau",),
    "protocol.fedmoe.fedbuff.": ("protocol.fedmoe.aggregation=async", "protocol.fedmoe.fedbuff.buffer_size=1"),
    "protocol.fedmoe.fedbuff.buffer_size": ("protocol.fedmoe.aggregation=async",),
    "protocol.fedmoe.fedbuff.hinge_threshold": ("protocol.fedmoe.aggregation=async", "protocol.fedmoe.fedbuff.buffer_size=1",
                                                "protocol.fedmoe.fedbuff.staleness=hinge"),
    "protocol.fedmoe.fedbuff.period_s": ("protocol.fedmoe.aggregation=semi_async",),
    # cameras with 16.8 kB free: a full-width expert (17.5 kB to train) does not fit, a quarter-width one (15.4 kB) does
    "protocol.fedmoe.expert_widths": ("devices.classes.camera.memory_gb=2.4e-5", "devices.memory_pressure=false",
                                      "protocol.fedmoe.alignment.capacity.report_noise_cv=0"),
    "data.tau_definition": ("data.partition=noniid_tau", "data.tau=1.0"),
    "data.group_shares": ("data.partition=domain_skew",),
    "data.domain_transform": ("data.partition=domain_skew",),
    "model.stem_projection": ("model.stem_layers=0",),
    "data.clusters": ("data.partition=label_clusters",),
    "channel.rician_k_db": ("channel.fading=rician",),
    "channel.log_distance_exponent": ("channel.model=log_distance",),
    "topology.nodes": _EXPLICIT,
    "topology.edges": _EXPLICIT,
    "training.momentum": ("training.optimizer=sgd",),
    "data.synthetic_samples": ("data.dataset=synthetic",),
    "training.fedprox_mu": ("training.batch_size=2",),  # one local step: the proximal gradient is 0
    "topology.grid.edge_": ("topology.server=edge0",),
    "protocol.nmoe.dp_": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4",
                          "protocol.nmoe.extractor=fedsc", "protocol.nmoe.dp_epsilon=1.0"),
    # stage semantics: retries happen only for clients offline / dropped (dropout on), and the retry interval only with a stage deadline
    "protocol.nmoe.stage_retry_s": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4",
                                    "protocol.nmoe.gate=rangate", "protocol.nmoe.stage_deadline_s=100000"),
    # the channel-aware gate (issue 33): a short timeout makes every predicted second weigh, so the choice moves
    "protocol.nmoe.channel_gate_weight": ("protocol.name=nmoe", "devices.dropout=true", "run.rounds=1", "protocol.nmoe.inference_horizon_s=4",
                                          "protocol.nmoe.request_rate_per_s=1", "protocol.nmoe.request_timeout_s=0.5"),
    "model.aux_loss_weight": ("model.top_k=1", "model.gate_weights=softmax"),  # with k_c <= top_k the Switch loss is constant
    "channel.handover_time_to_trigger_s": ("channel.handover_hysteresis_db=0", "devices.mobility_interval_s=0.2"),
    "channel.handover_hysteresis_db": ("channel.handover_time_to_trigger_s=0", "devices.mobility_interval_s=0.2"),
    "channel.shadowing_decorrelation_m": ("devices.mobility_interval_s=0.2",),
    "channel.nearest_bs": ("devices.mobility_interval_s=0.2",),
    "devices.classes.camera.mobility": _MOVE,
    "devices.classes.camera.speed_": ("devices.classes.camera.mobility=walk", *_MOVE),
    "devices.classes.camera.altitude_": ("devices.classes.camera.mobility=fly", *_MOVE),
    "devices.classes.camera.mean_o": ("devices.dropout=true", "devices.classes.camera.mean_on_s=1.0"),
    "devices.classes.camera.transfer_hazard_per_s": ("devices.dropout=true",),
    # jobs of 17-21 kB: 40 kB of memory OOMs under heavy pressure, states change every ~second
    "devices.classes.camera.memory_": _MEM,
    "devices.memory_pressure": _MEM,
    "devices.classes.camera.oom_mode": (*_MEM, "devices.classes.camera.flops_mean=1e4"),
    "devices.classes.camera.swap_slowdown": (*_MEM, "devices.classes.camera.flops_mean=1e4",
                                             "devices.classes.camera.oom_mode=swap"),
}

#: values (YAML) for keys whose generic alternative would not show their effect
VALUES: dict[str, str] = {
    "protocol.nmoe.stage_deadline_s": "100000",  # generous: the offline clients are waited for
    "run.name": "other-name",
    "run.horizon_s": "1.0",
    "topology.server": "core",
    "topology.grid.base_stations": "[{ix: 1, iy: 1, kind: macro}]",
    "topology.grid.clients": "{phone: 3, camera: 2}",
    "topology.nodes": ("[{id: cloud, kind: cloud, x: 0, y: 0, z: 0}, {id: bs0, kind: bs_macro, x: 0, y: 0, z: 25},"
                       " {id: c0, kind: client, device_class: phone, x: 400, y: 0, z: 1.5},"
                       " {id: c1, kind: client, device_class: camera, x: 0, y: 90, z: 6}]"),
    "topology.edges": "[{src: bs0, dst: cloud, capacity_bps: 1e5, latency_s: 0.5}]",
    "protocol.fedmoe.alignment.policy": "greedy",
    "data.dataset": "synthetic",
    "data.clusters": "2",
    "data.group_shares": "[0.5, 0.5]",
    "protocol.fedmoe.fedbuff.hinge_threshold": "0",
    "protocol.nmoe.server": "bs0",  # the aggregator at a base station instead of the cloud
    "protocol.nmoe.deadline_s": "0.05",  # doubling 600 s binds nothing in the tiny run: cut the exchanges
    "protocol.nmoe.request_timeout_s": "0.001",  # likewise: requests time out
    "protocol.nmoe.channel_gate_weight": "1000",  # the largest: the predicted latency dominates the routing probability
    "training.batch_size": "2",
    "channel.max_spectral_efficiency_bps_hz": "1.0",
    "protocol.fedmoe.clients_per_round": "2",
    "protocol.fedmoe.alignment.max_load": "1",
    "protocol.fedmoe.alignment.min_load": "1",
    "protocol.fedmoe.alignment.min_k": "2",
    "protocol.fedmoe.alignment.epsilon": "1.0",
    "protocol.fedmoe.alignment.w_p": "0.0",  # systems_aware's choice: the fastest again, not the clients behind
    "protocol.fedmoe.expert_widths": "[1.0, 0.25]",
    "protocol.fedmoe.deadline_s": "0.5",
    "protocol.fedmoe.over_selection": "1.0",
    "data.max_train_samples": "100",
    "devices.classes.camera.memory_pressure_levels": "[0.0, 0.1, 0.2]",
    "devices.classes.camera.memory_pressure_mean_hold_s": "[100, 100, 100]",
    "devices.classes.camera.memory_gb": "1.0",
    "devices.classes.camera.mean_on_s": "1000000.0",
    "devices.classes.camera.mean_off_s": "0.01",
    "devices.classes.camera.transfer_hazard_per_s": "10.0",
    "devices.classes.camera.flops_mean": "1e6",
    "devices.classes.camera.swap_slowdown": "100.0",
    "devices.classes.camera.oom_mode": "swap",
    "devices.classes.camera.background_load_change_mean_s": "0.01",
    "devices.classes.camera.mobility": "walk",
    "devices.classes.camera.speed_min_mps": "15.0",
    "devices.classes.camera.speed_max_mps": "40.0",
    "devices.classes.camera.altitude_min_m": "2.0",
    "devices.classes.camera.altitude_max_m": "100.0",
    "devices.classes.camera.tx_power_dbm": "-20.0",
    "devices.mobility_interval_s": "0.1",
    "channel.coherence_s": "0.01",
    "channel.handover_time_to_trigger_s": "0.0",
    "channel.handover_hysteresis_db": "0.0",
    "channel.shadowing_decorrelation_m": "1.0",
    "channel.nearest_bs": "1",
    "channel.max_ue_height_m": "1.0",
    "evaluation.every_rounds": "2",
    "evaluation.max_test_samples": "20",
    "output.link_sample_s": "0.5",
}

_ALIGN = ("moves assignments only after several rounds or near a budget threshold, beyond a CI-sized run; "
          "unit-tested in tests/test_alignment_state.py and tests/test_alignment_capacity.py")

_MEMX = ("acts only on a job running when memory pressure rises; in a CI-sized run the server skips a "
         "client whose reported memory is that tight; tested in tests/test_devices_device.py::test_pressure_rise_kills_or_swaps")

#: keys whose effect is, by design, not in the run directory (reason; where it is tested)
EXCEPTIONS: dict[str, str] = {
    "output.checkpoint_every_rounds": "checkpoint files are removed when a run completes and results are identical by design; tested in tests/test_checkpoint_resume.py",
    "protocol.fedmoe.alignment.w_u": _ALIGN,
    "protocol.fedmoe.alignment.w_t": _ALIGN,
    "training.torch_threads": "host threads only: results are identical by design (wall time changes)",
    "training.executor": "how jobs run (sequential / batched / parallel): identical results by design, tested in the learning tests",
    "training.workers": "parallel executor's worker count: identical results by design",
    "training.device": "cpu vs auto on a machine without CUDA: identical by design",
    "protocol.fedmoe.alignment.min_k": _ALIGN,
    "evaluation.target_accuracy": "read from the manifest by fedsim compare "
                                  "(tests/test_faults_cli.py::test_compare_uses_each_runs_target_by_default)",
    "topology.kind": "selects which of grid / nodes+edges / graphml is read; each source's keys are tested under it",
    "topology.graphml": "the GraphML path: tested by tests/test_net_topology.py (a file's graph is loaded)",
    "devices.classes.camera.memory_pressure_mean_hold_s": _MEMX,
    "devices.classes.camera.oom_mode": _MEMX,
    "devices.classes.camera.swap_slowdown": _MEMX,
    "protocol.fedmoe.alignment.w_f": _ALIGN,
    "protocol.fedmoe.alignment.capacity.mode": _ALIGN,
    "protocol.fedmoe.alignment.fitness_ema": _ALIGN,
    "protocol.fedmoe.alignment.fitness_decay": _ALIGN,
    "protocol.fedmoe.alignment.capacity.report_noise_cv": _ALIGN,
    "protocol.fedmoe.alignment.capacity.safety_margin": _ALIGN,
    "protocol.fedmoe.alignment.capacity.ewma": _ALIGN,
    "data.dir": "dataset directory of file-based datasets: tested by tests/test_learning_datasets.py",
}

#: keys whose alternative value stops the run by design (the run must then fail, not pass silently)
EXPECT_FAIL = ("protocol.fedmoe.alignment.on_infeasible=raise",)

_cache: dict[tuple[str, ...], Any] = {}


def _fingerprint(parent: Path, overrides: list[str]) -> Any:
    """Run the tiny scenario with ``overrides`` into a fresh parent directory; return
    what a user could see: the run dir's relative path, its files, every table's bytes."""
    try:
        loaded = load_scenario(DEFAULT, [*TINY, f"output.dir={parent / 'runs'}", *overrides])
    except ScenarioError as e:
        pytest.fail(f"scenario invalid with {overrides}: {e}")
    try:
        res = run(loaded)
    except Exception as e:  # only where a key's documented effect is to stop the run
        if not any(o.startswith(k) for o in overrides for k in EXPECT_FAIL):
            raise
        return ("failed", type(e).__name__)
    d = res.run_dir
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    tables = {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in files if f.endswith(".parquet")}
    return str(d.relative_to(parent)), files, tables


def _yaml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _alternative(leaf: Leaf, cur: Any) -> str:
    if leaf.path in VALUES:
        return VALUES[leaf.path]
    if leaf.kind == "bool":
        return _yaml(not cur)
    if leaf.kind == "literal":
        return str(next(c for c in leaf.choices if c != cur))
    if leaf.numeric:
        base = 1.0 if cur is None else float(cur)
        cands = [base * 2, base / 2, base + 1, base - 1, (leaf.lo or 0) + 1, 1.0]
        if leaf.hi is not None and leaf.lo is not None:
            cands.append((leaf.lo + leaf.hi) / 2)
        for v in cands:
            if leaf.kind == "int":
                v = float(int(v))
            if (cur is None or v != float(cur)) and inside(leaf, v):
                return str(int(v)) if leaf.kind == "int" else repr(v)
    raise AssertionError(f"{leaf.path}: no generic alternative value; add one to VALUES")


def _context(path: str) -> tuple[str, ...]:
    best = ""
    for k in CONTEXT:
        if path.startswith(k) and len(k) > len(best):
            best = k
    return CONTEXT.get(best, ())


def _trace_values(tmp: Path) -> dict[str, str]:
    av = {0: {"active": [0.0], "inactive": [0.5], "finish_time": 1e9}}
    cap = {0: {"computation": 5.0, "communication": 50.0}}  # 50 kbit/s
    (tmp / "av.pkl").write_bytes(pickle.dumps(av))
    (tmp / "cap.pkl").write_bytes(pickle.dumps(cap))
    return {"devices.availability_trace": str(tmp / "av.pkl"), "devices.capacity_trace": str(tmp / "cap.pkl"),
            "output.dir": str(tmp / "elsewhere")}


LEAVES = leaves()


@pytest.fixture(autouse=True)
def _no_full_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    # fedsim.run collects once before freezing the heap: with a test process's heap
    # that costs ~1 s per run and changes nothing in the results
    monkeypatch.setattr(gc, "collect", lambda *a, **k: 0)


def _param(lf: Leaf) -> object:
    # an nmoe run of the tiny scenario takes ~16 s (6,800 simulated s of stages): those keys
    # run with the slow tests; every other key runs in CI
    slow = lf.path == "protocol.name" or lf.path.startswith("protocol.nmoe.")
    return pytest.param(lf, id=lf.path, marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("leaf", [_param(lf) for lf in LEAVES])
def test_every_key_changes_the_run_or_its_output(leaf: Leaf, tmp_path_factory: pytest.TempPathFactory) -> None:
    if leaf.path in EXCEPTIONS:
        pytest.skip(f"documented exception: {EXCEPTIONS[leaf.path]}")
    tmp = tmp_path_factory.mktemp("key")
    special = _trace_values(tmp)
    ctx = _context(leaf.path)
    base_loaded = load_scenario(DEFAULT, [*TINY, *ctx])
    cur = get(base_loaded.scenario, leaf.path)
    alt = special.get(leaf.path) or _alternative(leaf, cur)
    if leaf.path == "output.dir":  # the run directory moves
        a = _fingerprint(tmp / "a", list(ctx))
        loaded = load_scenario(DEFAULT, [*TINY, *ctx, f"output.dir={alt}"])
        d = run(loaded).run_dir
        assert d.parent == Path(alt) and d.parent != tmp / "a" / "runs"
        return
    if ctx not in _cache:
        _cache[ctx] = _fingerprint(tmp / "base", list(ctx))
    a = _cache[ctx]
    b = _fingerprint(tmp / "alt", [*ctx, f"{leaf.path}={alt}"])
    assert a != b, f"{leaf.path}: {cur!r} -> {alt} changed neither the run nor its output"


def test_the_walk_covers_the_whole_schema() -> None:
    paths = {lf.path for lf in LEAVES}
    assert {"channel.fc_ghz", "devices.classes.camera.flops_mean", "protocol.nmoe.dp_delta",
            "output.link_sample_s"} <= paths
    assert len(paths) == len(LEAVES) > 100
    stale = set(EXCEPTIONS) - paths
    assert not stale, f"exceptions for keys that no longer exist: {stale}"
