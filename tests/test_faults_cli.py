"""Faults found by trying fedsim as a new user would (issue 18, item 5)."""

from __future__ import annotations

import json
import os
import pickle
import stat
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

import fedsim
from fedsim.cli import main
from fedsim.config import load_scenario
from fedsim.rundir import write_json
from tests.rundir_factory import make_run_dir

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
TINY = ["run.rounds=2", "data.max_train_samples=60", "evaluation.max_test_samples=30",
        "topology.grid.clients={phone: 3, camera: 2, sensor: 1}", "model.hidden=8", "model.feature_dim=8",
        "model.expert_hidden=8"]


def _run(tmp: Path, *extra: str, args: tuple[str, ...] = ("--quiet", "--no-figures")) -> tuple[int, Path]:
    out = tmp / "run"
    code = main(["run", str(DEFAULT), "--out", str(out), *args, *(f"--set={s}" for s in (*TINY, *extra))])
    return code, out


def _with_target(path: Path, target: float) -> Path:
    m = json.loads((path / "manifest.json").read_text())
    m["scenario"]["evaluation"] = {"target_accuracy": target}
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def test_compare_uses_each_runs_target_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _with_target(make_run_dir(tmp_path / "a", rounds=8, seed=0), 0.5)
    b = _with_target(make_run_dir(tmp_path / "b", rounds=8, seed=1), 0.5)
    from analysis.compare import compare_runs

    df = compare_runs([a, b], tmp_path / "cmp", formats=("png",))
    assert df["rounds_to_target"].notna().all() and df["sim_s_to_target"].notna().all()
    assert "each run's evaluation.target_accuracy (0.5)" in (tmp_path / "cmp" / "summary.md").read_text()
    # the terminal table: compact, units, no NaN or exponent dumps
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp2")]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "e+0" not in out and "final acc." in out and "rounds to target" in out
    assert max(len(line) for line in out.splitlines()) < 200


def test_data_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_json(tmp_path / "n.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "n.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_sweep_plot_clips_intervals_to_the_metric_range_and_shows_n(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.compare as cmp

    df = pd.DataFrame({"policy": ["a", "a", "a", "a"], "w": [0.1, 0.1, 0.5, 0.5],
                       "final_accuracy": [0.2, 0.95, 0.1, 0.9]})  # 2 seeds: t-intervals beyond [0, 1]
    seen = {}

    def grab(fig, out_dir, stem, formats):  # noqa: ANN001
        ax = fig.axes[0]
        seen["ylim"] = ax.get_ylim()
        seen["title"] = ax.get_title()
        return []

    monkeypatch.setattr(cmp, "save", grab)
    cmp.plot_metric_vs_param(df, "w", "final_accuracy", hue="policy", out=tmp_path)
    lo, hi = seen["ylim"]
    assert lo >= -0.1 and hi <= 1.1, seen["ylim"]
    assert "n = 2 runs per point" in seen["title"]


def test_version_and_scenario_error_export(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and fedsim.__version__ in capsys.readouterr().out
    from fedsim import ScenarioError

    assert ScenarioError is fedsim.config.ScenarioError


def test_typo_suggests_the_closest_key_and_set_errors_blame_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DEFAULT), "--set", "channel.bandwith_up_hz=1e6"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'bandwidth_up_hz'?" in err
    assert main(["validate", str(DEFAULT), "--set", "nosuch.key=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsim: --set: nosuch") and "smart-city-small" not in err


def test_defaults_have_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["defaults"]) == 0
    out = capsys.readouterr().out
    assert ":class:" not in out and ":func:" not in out and "``" not in out


def test_interrupt_is_recorded_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsim.protocols.fedmoe import FedMoE

    def boom(self) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(FedMoE, "run", boom)
    code, out = _run(tmp_path)
    assert code == 130
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted"


def test_arithmetic_error_from_configuration_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import fedsim.build

    def overflow(loaded, replay=None):  # noqa: ANN001
        raise OverflowError("high - low range exceeds valid bounds")

    monkeypatch.setattr(fedsim.build, "build_parts", overflow)
    code, out = _run(tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "OverflowError" in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_manifest_times_no_figures_message_and_offline_clients(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # everyone offline from 0.5 s on: online at selection (t = 0) is everyone, at the end nobody
    av = {0: {"active": [0.0], "inactive": [0.5], "finish_time": 1e6}}
    (tmp_path / "av.pkl").write_bytes(pickle.dumps(av))
    code, out = _run(tmp_path, f"devices.availability_trace={tmp_path / 'av.pkl'}")
    assert code == 0
    text = capsys.readouterr().out
    assert "device classes: 6 clients (camera 2, phone 3, sensor 1)" in text
    assert "(0 figures" not in text and "--no-figures" in text
    assert not (out / "figures").exists()
    m = json.loads((out / "manifest.json").read_text())
    t0, t1 = (datetime.fromisoformat(m[k]) for k in ("started_at", "finished_at"))
    assert (t1 - t0).total_seconds() == pytest.approx(m["wall_s"], abs=2e-3)
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert rounds["online"].iloc[0] == 6  # counted at selection, not at the end of the round
    # a run where clients never come online says so
    av = {0: {"active": [1e5], "inactive": [1e5 + 1], "finish_time": 1e6}}
    (tmp_path / "off.pkl").write_bytes(pickle.dumps(av))
    out2 = tmp_path / "run2"
    assert main(["run", str(DEFAULT), "--out", str(out2), "--quiet", "--no-figures",
                 *(f"--set={s}" for s in TINY), f"--set=devices.availability_trace={tmp_path / 'off.pkl'}"]) == 0
    assert "6 of 6 were offline for the whole run" in capsys.readouterr().out
    assert json.loads((out2 / "manifest.json").read_text())["clients"]["offline_whole_run"] == 6


def test_extends_can_replace_a_mapping_and_validate_resolved_names_sources(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text(f"extends: {DEFAULT}\ntopology:\n  grid:\n    clients: {{camera: 5}}\n")
    replaced = tmp_path / "replaced.yaml"
    replaced.write_text(f"extends: {DEFAULT}\ntopology:\n  grid:\n    clients: !replace {{camera: 5}}\n")
    assert sum(load_scenario(merged).scenario.topology.grid.clients.values()) == 21  # deep merge: 4 -> 5 cameras + 16
    assert load_scenario(replaced).scenario.topology.grid.clients == {"camera": 5}
    assert main(["validate", "--resolved", str(replaced), "--set", "run.rounds=3"]) == 0
    out = capsys.readouterr().out
    assert f'clients: {{"camera": 5}}  # {replaced.resolve()}:4' in out
    assert "rounds: 3  # --set" in out
    assert f"block_m: 200.0  # {DEFAULT}:" in out
    assert "horizon_s: null  # default" in out


def test_readme_first_steps_are_honest() -> None:
    text = (REPO / "README.md").read_text()
    assert "-rs" in text  # skipped tests show their reason
    assert "data.dataset=digits" in text  # data scenarios without ../shared


def test_defaults_list_every_per_class_key_with_each_class_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`fedsim defaults` shows devices.classes.<class> keys (mobility, speed_min_mps, ...) per class (issue 30)."""
    from fedsim.config.schema import DeviceClassConfig
    from fedsim.devices.params import default_device_classes

    assert main(["defaults"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split(":", 1)[0].strip(" #"): ln for ln in out.splitlines() if ln.startswith("    #   ")}
    assert set(lines) == set(DeviceClassConfig.model_fields)
    classes = default_device_classes()
    assert 'vehicle "street"' in lines["mobility"] and 'phone "walk"' in lines["mobility"]
    for cls, p in classes.items():
        assert f"{cls} {p.speed_max_mps}" in lines["speed_max_mps"]
        assert f"{cls} {p.mean_on_s}" in lines["mean_on_s"]


def test_explicit_topology_spells_cells_like_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Explicit nodes take kind macro / small (the grid's spelling); bs_macro is accepted with a one-line hint."""
    body = ("topology:\n  kind: explicit\n  server: cloud\n  nodes:\n"
            "    - {id: cloud, kind: cloud, x: 0, y: 0}\n"
            "    - {id: bs0, kind: %s, x: 0, y: 0, z: 25}\n"
            "    - {id: c0, kind: client, device_class: phone, x: 10, y: 0}\n"
            "  edges:\n    - {src: bs0, dst: cloud, capacity_bps: 1e9, latency_s: 0.001}\n")
    good, old = tmp_path / "good.yaml", tmp_path / "old.yaml"
    good.write_text(body % "macro")
    old.write_text(body % "bs_macro")
    assert main(["validate", str(good)]) == 0
    assert "hint" not in capsys.readouterr().err
    assert main(["validate", str(old)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedsim: hint: {old}:6: topology.nodes.1.kind")
    assert "'macro'" in err[0]
    from fedsim.build import build_graph

    assert build_graph(load_scenario(good)).nodes["bs0"]["kind"] == "bs_macro"
