"""A corpus of malformed scenarios: each must give exit code 2 and one line naming
the file, the key path (and line where known) and the rule, with no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main
from tests.shared_data import missing_data_dir, scenario_param

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"

EXPLICIT_ISLAND = """
topology:
  kind: explicit
  server: cloud
  nodes:
    - {id: cloud, kind: cloud, x: 0, y: 0}
    - {id: bs0, kind: macro, x: 0, y: 0, range_m: 500}
    - {id: bs1, kind: macro, x: 5000, y: 0, range_m: 500}
    - {id: c0, kind: client, device_class: phone, x: 10, y: 0}
    - {id: c1, kind: client, device_class: sensor, x: 5010, y: 0}
  edges:
    - {src: bs0, dst: cloud, capacity_bps: 1e9, latency_s: 0.001}
"""

# (name, files {relative name: text}, entry file, extra argv, substrings expected in the message)
CASES = [
    ("yaml_syntax", {"s.yaml": "run:\n  name: x\n  seed: [1, 2\n"}, "s.yaml", [], ["invalid YAML", "s.yaml:"]),
    ("empty_file", {"s.yaml": ""}, "s.yaml", [], ["empty scenario file"]),
    ("top_level_list", {"s.yaml": "- a\n- b\n"}, "s.yaml", [], ["top level must be a mapping"]),
    ("unknown_top_key", {"s.yaml": "run: {name: x}\nnetwork: {}\n"}, "s.yaml", [], ["s.yaml:2", "network", "unknown key", "allowed:"]),
    ("unknown_nested_key", {"s.yaml": "devices:\n  classes:\n    vehicle:\n      memroy_gb: 2\n"}, "s.yaml", [], ["s.yaml:4", "devices.classes.vehicle.memroy_gb", "unknown key"]),
    ("wrong_type", {"s.yaml": "run:\n  seed: abc\n"}, "s.yaml", [], ["s.yaml:2", "run.seed", "valid integer"]),
    ("string_number", {"s.yaml": "model:\n  num_experts: '4'\n"}, "s.yaml", [], ["model.num_experts", "valid integer"]),
    ("out_of_range", {"s.yaml": "data:\n  tau: 1.5\n"}, "s.yaml", [], ["s.yaml:2", "data.tau", "less than or equal to 1"]),
    ("negative_bandwidth", {"s.yaml": "channel:\n  bandwidth_up_hz: -5e6\n"}, "s.yaml", [], ["channel.bandwidth_up_hz", "greater than or equal to 1000"]),
    ("negative_memory", {"s.yaml": "devices:\n  classes:\n    vehicle:\n      memory_gb: -1\n"}, "s.yaml", [], ["s.yaml:4", "devices.classes.vehicle.memory_gb", "greater than 0"]),
    ("top_k_gt_experts", {"s.yaml": "model:\n  num_experts: 2\n  top_k: 3\n"}, "s.yaml", [], ["s.yaml:3", "model.top_k", "<= model.num_experts"]),
    ("bad_literal", {"s.yaml": "channel:\n  model: moon\n"}, "s.yaml", [], ["channel.model", "'umi'", "moon"]),
    ("unreachable_client", {"s.yaml": EXPLICIT_ISLAND}, "s.yaml", [], ["topology", "c1", "cannot reach server 'cloud'"]),
    ("server_missing", {"s.yaml": "topology:\n  server: nowhere\n"}, "s.yaml", [], ["s.yaml:2", "topology.server", "not in the topology"]),
    ("missing_dataset_dir", {"s.yaml": "data:\n  dataset: mnist\n  dir: no/such/dir\n"}, "s.yaml", [], ["s.yaml:3", "data.dir", "does not exist"]),
    ("dataset_dir_required", {"s.yaml": "data:\n  dataset: cifar10\n"}, "s.yaml", [], ["data.dir", "needs a data directory"]),
    ("extends_cycle", {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "a.yaml", [], ["extends", "cycle", "a.yaml -> b.yaml -> a.yaml"]),
    ("extends_missing", {"a.yaml": "extends: nothere.yaml\nrun: {seed: 1}\n"}, "a.yaml", [], ["a.yaml:1", "extends", "does not exist"]),
    ("extends_child_error_line", {"base.yaml": "run: {seed: 1}\n", "c.yaml": "extends: base.yaml\n\nmodel:\n  top_k: 0\n"}, "c.yaml", [], ["c.yaml:4", "model.top_k", "greater than or equal to 1"]),
    ("unknown_device_class", {"s.yaml": "topology:\n  grid:\n    clients: {tank: 3}\n"}, "s.yaml", [], ["topology.grid.clients.tank", "unknown device class"]),
    ("unknown_policy", {"s.yaml": "protocol:\n  fedmoe:\n    alignment:\n      policy: clever\n"}, "s.yaml", [], ["s.yaml:4", "protocol.fedmoe.alignment.policy", "unknown policy", "load_balanced"]),
    ("alignment_moved", {"s.yaml": "run: {seed: 1}\nalignment:\n  policy: greedy\n"}, "s.yaml", [], ["s.yaml:2", "alignment", "moved to protocol.fedmoe.alignment"]),
    ("alignment_moved_set", {"s.yaml": "run: {seed: 1}\n"}, "s.yaml", ["--set", "alignment.policy=greedy"], ["alignment", "moved to protocol.fedmoe.alignment"]),
    ("bs_outside_grid", {"s.yaml": "topology:\n  grid:\n    blocks_x: 2\n    base_stations: [{ix: 9, iy: 0}]\n"}, "s.yaml", [], ["topology.grid.base_stations.0", "outside"]),
    ("min_completions", {"s.yaml": "protocol:\n  fedmoe: {clients_per_round: 4, min_completions: 9}\n"}, "s.yaml", [], ["protocol.fedmoe.min_completions", "<= clients_per_round"]),
    ("set_unknown_key", {"s.yaml": "run: {seed: 1}\n"}, "s.yaml", ["--set", "model.experts=4"], ["--set", "model.experts", "unknown key"]),
    ("set_bad_value", {"s.yaml": "run: {seed: 1}\n"}, "s.yaml", ["--set", "channel.fc_ghz=-3"], ["--set", "channel.fc_ghz", "greater than 0.5"]),
    ("missing_file", {}, "nothere.yaml", [], ["nothere.yaml", "file not found"]),
]


@pytest.mark.parametrize("name,files,entry,argv,expect", CASES, ids=[c[0] for c in CASES])
def test_malformed_scenario(tmp_path: Path, capsys: pytest.CaptureFixture, name, files, entry, argv, expect) -> None:
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    code = main(["validate", str(tmp_path / entry), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for s in expect:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 15


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_experts: 2\n  top_k: 5\n")
    out = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", str(bad), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "model.top_k" in out.stderr
    assert not (tmp_path / "runs").exists(), "a rejected scenario must not create a run directory"


def test_run_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = main(["run", str(DEFAULT), "--out", str(out), "--quiet"])
    assert code == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("path", [scenario_param(p) for p in sorted((REPO / "scenarios").glob("*.yaml"))])
def test_shipped_scenarios_validate(path: Path, capsys: pytest.CaptureFixture) -> None:
    # data-bound scenarios name ../../shared/data relative to themselves: CI has it beside the repo
    if (gone := missing_data_dir(path)) is not None:
        pytest.skip(f"{path.name}: data directory {gone} is missing")
    code = main(["validate", str(path)])
    assert code == 0, capsys.readouterr().err


# rules that need the built world (fedsim.build.check_world_rules) are checked where the world is
# built: `fedsim run` gives the same one-line error, exit 2, and writes nothing
WORLD_CASES = [c for c in CASES if c[0] in ("unreachable_client", "server_missing", "unknown_policy")]


@pytest.mark.parametrize("name,files,entry,argv,expect", WORLD_CASES, ids=[c[0] for c in WORLD_CASES])
def test_world_rules_on_run(tmp_path: Path, capsys: pytest.CaptureFixture, name, files, entry, argv, expect) -> None:
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    out = tmp_path / "out"
    code = main(["run", str(tmp_path / entry), "--out", str(out), "--quiet", "--no-figures", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for s in expect:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"
    assert not out.exists(), "a rejected scenario must not create its run directory"


def test_topology_is_built_once_per_run_and_not_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsim.net.topology as topo
    from fedsim.build import build_parts
    from fedsim.config import load_scenario

    calls = []
    real = topo.manhattan_grid
    monkeypatch.setattr(topo, "manhattan_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    loaded = load_scenario(DEFAULT)
    assert calls == [], "loading a scenario must not build the topology"
    parts = build_parts(loaded)
    assert len(calls) == 1
    assert parts.systems.graph.number_of_nodes() > 0


def test_paths_are_resolved_once_at_load(tmp_path: Path) -> None:
    from fedsim.config import load_scenario

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "topo.graphml").write_text("<graphml/>")
    f = tmp_path / "sub" / "s.yaml"
    f.write_text(f"extends: {DEFAULT}\ntopology:\n  kind: graphml\n  graphml: topo.graphml\n")
    loaded = load_scenario(f)
    assert loaded.paths.graphml == tmp_path / "sub" / "topo.graphml"
    assert loaded.paths.data_dir is None and loaded.paths.capacity_trace is None
