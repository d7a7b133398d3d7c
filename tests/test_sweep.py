"""Sweeps (fedsim.sweep): parsing, naming, validation, resuming, backends agree."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import add_sweep_parser, cmd_sweep
from fedsim.config import LoadedScenario, ScenarioError
from fedsim.sweep import (
    INDEX_FILE,
    METRICS,
    SweepSpec,
    parse_grid,
    parse_seeds,
    run_names,
    run_sweep,
)

try:
    from tests.rundir_factory import make_run_dir
except ImportError:  # pragma: no cover - when tests/ is the rootdir
    sys.path.insert(0, str(Path(__file__).parent))
    from rundir_factory import make_run_dir

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "smart-city-small.yaml"

#: A tiny real run: 2 rounds, 5 clients, 300 training samples (~0.5 s once imports are warm).
TINY = [
    "run.rounds=2",
    "topology.grid.clients={phone: 3, sensor: 2}",
    "protocol.fedmoe.clients_per_round=3",
    "training.local_epochs=1",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "output.figures=false",
]
#: random / greedy take no parameters, so the w_u sweep uses the two policies that do.
GRID = {"protocol.fedmoe.alignment.policy": ["load_balanced", "deadline_aware"], "protocol.fedmoe.alignment.w_u": [0.1, 1.0]}
SEEDS = [0, 1]


# --------------------------------------------------------------------------- runners


def fake_runner(loaded: LoadedScenario, out_dir: Path) -> None:
    """A deterministic stand-in for fedsim.api.run: a synthetic run directory from (policy, w_u, seed)."""
    s = loaded.scenario
    w_u = float(s.protocol.fedmoe.alignment.w_u)
    acc = [min(0.99, 0.3 + 0.1 * r + 0.05 * w_u + 0.01 * s.run.seed) for r in range(s.run.rounds)]
    make_run_dir(
        out_dir, policy=s.protocol.fedmoe.alignment.policy, seed=s.run.seed, rounds=s.run.rounds, accuracy=acc
    )
    man = json.loads((out_dir / "manifest.json").read_text())
    man["scenario"] = s.model_dump(mode="json")
    (out_dir / "manifest.json").write_text(json.dumps(man))


def _real_run_works() -> bool:
    """True once fedsim.api.run can build a world (the scenario -> world builder has landed)."""
    try:
        from fedsim.build import build_parts  # noqa: F401
        from fedsim.protocols import make_protocol  # noqa: F401
    except ImportError:
        return False
    return True


#: The real fedsim.api.run once the scenario -> world builder exists; until then the stand-in.
RUNNER = None if _real_run_works() else fake_runner


class Counting:
    """In-process runner that counts calls and can raise KeyboardInterrupt on the n-th call."""

    def __init__(self, interrupt_at: int | None = None, fail_policy: str | None = None) -> None:
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at
        self.fail_policy = fail_policy

    def __call__(self, loaded: LoadedScenario, out_dir: Path) -> None:
        self.calls.append(out_dir.name)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            out_dir.mkdir(parents=True)
            (out_dir / "manifest.json").write_text(json.dumps({"status": "running"}))
            raise KeyboardInterrupt
        if loaded.scenario.protocol.fedmoe.alignment.policy == self.fail_policy:
            raise RuntimeError("boom\nsecond line")
        fake_runner(loaded, out_dir)


def _spec(out: Path, grid: dict | None = None, seeds: list[int] | None = None) -> SweepSpec:
    return SweepSpec(
        scenario=SCENARIO,
        grid=dict(grid or GRID),
        seeds=list(seeds or SEEDS),
        out=out,
        overrides=list(TINY),
    )


def _frames(out: Path, index: pd.DataFrame) -> dict[str, bytes]:
    return {d: (out / d / "rounds.parquet").read_bytes() for d in index["run_dir"]}


def _rounds(out: Path, index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {d: pd.read_parquet(out / d / "rounds.parquet") for d in index["run_dir"]}


# --------------------------------------------------------------------------- parsing and naming


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("7", [7]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("1,3,5", [1, 3, 5]),
        ("0-2,9", [0, 1, 2, 9]),
        (" 3 - 4 ", [3, 4]),
        (5, [5]),
        ([2, 1], [2, 1]),
    ],
)
def test_parse_seeds(text: object, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text", ["", "4-0", "a", "1,,2", "1-", "-1", "1.5", "0-2,2", True, [1, "x"]]
)
def test_parse_seeds_rejects(text: object) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_seeds(text)
    assert "--seeds" in str(e.value) and "\n" not in str(e.value)


def test_parse_grid_values_are_yaml_scalars() -> None:
    g = parse_grid(
        [
            "protocol.fedmoe.alignment.policy=random,greedy",
            "protocol.fedmoe.alignment.w_u=0.1,1e9,2",
            "topology.grid.clients={phone: 3, sensor: 2},{phone: 4}",
            "x.flag=true,'a,b',[1,2]",
        ]
    )
    assert list(g) == [
        "protocol.fedmoe.alignment.policy",
        "protocol.fedmoe.alignment.w_u",
        "topology.grid.clients",
        "x.flag",
    ]
    assert g["protocol.fedmoe.alignment.policy"] == ["random", "greedy"]
    assert g["protocol.fedmoe.alignment.w_u"] == [0.1, 1e9, 2] and isinstance(
        g["protocol.fedmoe.alignment.w_u"][1], float
    )
    assert g["topology.grid.clients"] == [{"phone": 3, "sensor": 2}, {"phone": 4}]
    assert g["x.flag"] == [True, "a,b", [1, 2]]


@pytest.mark.parametrize(
    "item", ["nokey", "=1,2", "a..b=1", "a=1,,2", "a=", "a=[1,2", "a=1]", "a=1,1"]
)
def test_parse_grid_rejects(item: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_grid([item])
    assert "--grid" in str(e.value) and "\n" not in str(e.value)


def test_parse_grid_rejects_repeated_key() -> None:
    with pytest.raises(ScenarioError, match="twice"):
        parse_grid(["a.b=1", "a.b=2"])


def test_run_names_short_ordered_deterministic() -> None:
    names = run_names(GRID, [3, 4])
    assert names == [
        "policy=load_balanced__w_u=0.1__seed=3",
        "policy=load_balanced__w_u=0.1__seed=4",
        "policy=load_balanced__w_u=1.0__seed=3",
        "policy=load_balanced__w_u=1.0__seed=4",
        "policy=deadline_aware__w_u=0.1__seed=3",
        "policy=deadline_aware__w_u=0.1__seed=4",
        "policy=deadline_aware__w_u=1.0__seed=3",
        "policy=deadline_aware__w_u=1.0__seed=4",
    ]
    assert names == run_names(dict(GRID), [3, 4])
    assert run_names({}, [0, 1]) == ["seed=0", "seed=1"]


def test_run_names_disambiguate_and_sanitise() -> None:
    g = {
        "a.x": [1],
        "b.x": [2],
        "c.seed": [True],
        "topology.grid.clients": [{"phone": 3}, {"phone": 3, "sensor": 2}],
        "run.name": ["a/b", "a b"],
    }
    names = run_names(g, [0])
    assert names[0].startswith("a.x=1__b.x=2__c.seed=true__clients=phone_3-")
    assert len(set(names)) == len(names) == 4
    for n in names:
        assert "/" not in n and " " not in n and "{" not in n
        assert all(part.count("=") == 1 for part in n.split("__"))
    assert names == run_names(g, [0])


# --------------------------------------------------------------------------- validation up front


@pytest.mark.parametrize(
    "grid",
    [
        {"alignment.no_such_key": [1, 2]},
        {"run.rounds": [2, 0]},
        {"protocol.fedmoe.alignment.policy": ["random", [1]]},
    ],
)
def test_invalid_cell_rejected_before_anything_runs(tmp_path: Path, grid: dict) -> None:
    runner = Counting()
    with pytest.raises(ScenarioError) as e:
        run_sweep(_spec(tmp_path / "sw", grid=grid), runner=runner)
    assert "\n" not in str(e.value)
    assert runner.calls == []
    assert not (tmp_path / "sw").exists()


def test_cli_bad_grid_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsim.cli import _Parser

    p = _Parser(prog="fedsim")
    add_sweep_parser(p.add_subparsers(dest="cmd", parser_class=_Parser))
    a = p.parse_args(
        ["sweep", str(SCENARIO), "--grid", "protocol.fedmoe.alignment.policy", "--out", str(tmp_path / "o")]
    )
    with pytest.raises(ScenarioError, match="--grid"):
        cmd_sweep(a)
    a = p.parse_args(
        [
            "sweep",
            str(SCENARIO),
            "--grid",
            "protocol.fedmoe.alignment.policy=random",
            "--seeds",
            "3-1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    with pytest.raises(ScenarioError, match="--seeds"):
        cmd_sweep(a)


# --------------------------------------------------------------------------- the index, failures, resuming


def test_index_rows_ordered_by_cell_then_seed(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    res = run_sweep(_spec(out), runner=fake_runner)
    idx = pd.read_parquet(out / INDEX_FILE)
    assert res.executed == 8 and res.failed == 0
    assert list(idx.columns[:4]) == ["run_dir", "seed", "protocol.fedmoe.alignment.policy", "protocol.fedmoe.alignment.w_u"]
    assert set(METRICS) <= set(idx.columns)
    assert idx["run_dir"].tolist() == run_names(GRID, SEEDS)
    assert (idx["status"] == "completed").all()
    assert idx["protocol.fedmoe.alignment.w_u"].dtype == float and idx["seed"].dtype == "int64"
    r = pd.read_parquet(out / idx["run_dir"][0] / "rounds.parquet")
    assert idx["final_accuracy"][0] == pytest.approx(r["accuracy"].iloc[-1])
    assert idx["bytes_total"][0] == pytest.approx((r["bytes_up"] + r["bytes_down"]).sum())
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["grid_keys"] == list(GRID)


def test_failed_runs_are_recorded_and_others_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sw"
    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="cmd"))
    a = p.parse_args(
        [
            "sweep",
            str(SCENARIO),
            "--grid",
            "protocol.fedmoe.alignment.policy=random,greedy",
            "--seeds",
            "0-1",
            "--out",
            str(out),
            "--workers",
            "1",
            "--quiet",
            *sum((["--set", s] for s in TINY), []),
        ]
    )
    runner = Counting(fail_policy="greedy")
    assert cmd_sweep(a, runner=runner) == 1
    idx = pd.read_parquet(out / INDEX_FILE)
    assert idx["status"].tolist() == ["completed", "completed", "failed", "failed"]
    assert idx["error"][2] == "RuntimeError: boom second line"
    assert "failed: policy=greedy__seed=0" in capsys.readouterr().err
    # a rerun retries only the failed ones
    runner2 = Counting()
    assert cmd_sweep(a, runner=runner2) == 0
    assert runner2.calls == ["policy=greedy__seed=0", "policy=greedy__seed=1"]


def test_interrupted_sweep_resumes_missing_runs_only(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    names = run_names(GRID, SEEDS)
    first = Counting(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_spec(out), runner=first)
    idx = pd.read_parquet(out / INDEX_FILE)
    assert idx["status"].tolist() == ["completed"] * 3 + ["pending"] * 5
    # the interrupted run left a "running" manifest; also forge a half run further on
    assert json.loads((out / names[3] / "manifest.json").read_text())["status"] == "running"
    (out / names[6]).mkdir()
    (out / names[6] / "manifest.json").write_text(json.dumps({"status": "running"}))
    # and lose the manifest of a completed one
    (out / names[1] / "manifest.json").unlink()

    second = Counting()
    res = run_sweep(_spec(out), runner=second)
    assert sorted(second.calls) == sorted([names[1], *names[3:]])
    assert res.skipped == 2 and res.executed == 6
    trash = sorted(p.name for p in (out / ".trash").iterdir())
    assert trash == sorted([f"{names[1]}-1", f"{names[3]}-1", f"{names[6]}-1"])
    assert (pd.read_parquet(out / INDEX_FILE)["status"] == "completed").all()

    third = Counting()
    assert run_sweep(_spec(out), runner=third).executed == 0 and third.calls == []


def test_completed_run_with_other_scenario_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    run_sweep(_spec(out, seeds=[0]), runner=fake_runner)
    spec = _spec(out, seeds=[0])
    spec.overrides.append("training.lr=0.01")
    with pytest.raises(ScenarioError, match="different scenario"):
        run_sweep(spec, runner=fake_runner)


def test_sweep_file(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"scenario: {SCENARIO}\n"
        "grid:\n  protocol.fedmoe.alignment.policy: [random, greedy]\n  protocol.fedmoe.alignment.w_u: 0.5\n"
        "seeds: 0-1\n"
        "set:\n"
        + "".join(f"  - '{s}'\n" for s in TINY)
        + f"out: {tmp_path / 'fromfile'}\nworkers: 1\nbackend: inprocess\n"
    )
    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="cmd"))
    runner = Counting()
    assert cmd_sweep(p.parse_args(["sweep", str(sweep)]), runner=runner) == 0  # with progress bar
    assert runner.calls == run_names(
        {"protocol.fedmoe.alignment.policy": ["random", "greedy"], "protocol.fedmoe.alignment.w_u": [0.5]}, [0, 1]
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"scenario: {SCENARIO}\ngrid: {{protocol.fedmoe.alignment.policy: [random]}}\nsedes: 3\n")
    with pytest.raises(ScenarioError, match="sedes"):
        cmd_sweep(p.parse_args(["sweep", str(bad), "--out", str(tmp_path / "x")]), runner=runner)


def test_compare_sweep(tmp_path: Path) -> None:
    from analysis.sweep import compare_sweep

    out = tmp_path / "sw"
    run_sweep(_spec(out, seeds=[0, 1, 2]), runner=fake_runner)
    cells = compare_sweep(out, tmp_path / "rep")
    assert len(cells) == 4 and (cells["runs"] == 3).all()
    assert {"final_accuracy_mean", "final_accuracy_ci95", "bytes_total_mean"} <= set(cells.columns)
    g = pd.read_parquet(out / INDEX_FILE)
    first = g[(g["protocol.fedmoe.alignment.policy"] == "deadline_aware") & (g["protocol.fedmoe.alignment.w_u"] == 0.1)][
        "final_accuracy"
    ]
    row = cells[
        (cells["protocol.fedmoe.alignment.policy"] == "deadline_aware") & (cells["protocol.fedmoe.alignment.w_u"] == 0.1)
    ].iloc[0]
    assert row["final_accuracy_mean"] == pytest.approx(first.mean())
    for f in ("cells.csv", "cells.md", "final_accuracy_vs_w_u.png"):
        assert (tmp_path / "rep" / f).is_file(), f


# --------------------------------------------------------------------------- backends agree


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, float]:
    """The tiny 2 x 2 x 2 sweep, in process, one worker: the reference every backend must match."""
    out = tmp_path_factory.mktemp("ref") / "sw"
    t0 = time.perf_counter()
    res = run_sweep(_spec(out), backend="inprocess", workers=1, runner=RUNNER)
    wall = time.perf_counter() - t0
    assert res.failed == 0, res.index["error"].tolist()
    return out, res.index, wall


def _assert_same(ref: tuple[Path, pd.DataFrame, float], out: Path, index: pd.DataFrame) -> None:
    ref_out, ref_idx, _ = ref
    cols = ["run_dir", "seed", *GRID, "status", *METRICS]
    pd.testing.assert_frame_equal(index[cols], ref_idx[cols])
    a, b = _rounds(ref_out, ref_idx), _rounds(out, index)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
    assert _frames(ref_out, ref_idx) == _frames(out, index)


def test_process_pool_matches_inprocess(
    reference: tuple[Path, pd.DataFrame, float], tmp_path: Path
) -> None:
    out = tmp_path / "sw"
    t0 = time.perf_counter()
    res = run_sweep(_spec(out), backend="process", workers=2, runner=RUNNER)
    print(
        f"\ntiny sweep: inprocess x1 {reference[2]:.1f} s, process x2 {time.perf_counter() - t0:.1f} s"
    )
    assert res.failed == 0, res.index["error"].tolist()
    _assert_same(reference, out, res.index)


def test_cli_interrupt_exits_130_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="cmd"))
    argv = ["sweep", str(SCENARIO), "--grid", "protocol.fedmoe.alignment.policy=random,greedy", "--seeds", "0"]
    argv += ["--out", str(tmp_path / "sw"), "--workers", "1", "--quiet"]
    assert cmd_sweep(p.parse_args(argv), runner=Counting(interrupt_at=2)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    again = Counting()
    assert cmd_sweep(p.parse_args(argv), runner=again) == 0
    assert again.calls == ["policy=greedy__seed=0"]
