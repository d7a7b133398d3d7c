"""End to end: determinism of whole runs, run-directory contents, failure handling."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import fedsim
from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
SMALL = [
    "run.rounds=3",
    "data.max_train_samples=400",
    "evaluation.max_test_samples=150",
    "topology.grid.clients={phone: 4, vehicle: 3, sensor: 2, camera: 2, drone: 1}",
    # with uplink attachment no client's uplink is dead, so 3 rounds last ~1.5 simulated s:
    # sample links within that
    "output.link_sample_s=0.25",
]


def _run(tmp: Path, name: str, seed: int = 0, extra: list[str] | None = None) -> Path:
    out = tmp / name
    code = main(["run", str(DEFAULT), "--out", str(out), "--quiet", "--no-figures", "--seed", str(seed), *(f"--set={s}" for s in SMALL + (extra or []))])
    assert code == 0
    return out


def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = _run(tmp_path, "a"), _run(tmp_path, "b"), _run(tmp_path, "c", seed=1)
    for f in ("rounds.parquet", "events.parquet", "clients.parquet", "links.parquet", "assignments.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ea, ec = pd.read_parquet(a / "events.parquet"), pd.read_parquet(c / "events.parquet")
    assert not ea.equals(ec)


def test_run_directory_contents(tmp_path: Path) -> None:
    d = _run(tmp_path, "r")
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "completed" and m["seed"] == 0
    assert m["scenario"]["run"]["rounds"] == 3
    for k in ("fedsim_version", "git_revision", "versions", "started_at", "finished_at", "wall_s"):
        assert k in m
    assert {"python", "torch", "simpy"} <= set(m["versions"])
    rounds = pd.read_parquet(d / "rounds.parquet")
    need = {"round", "t_start_s", "t_end_s", "accuracy", "f1", "auc", "selected", "completed", "stragglers", "dropouts",
            "ooms", "bytes_up", "bytes_down", "clients_per_expert_cv", "t_download_s", "t_compute_s", "t_upload_s", "t_wait_s"}
    assert need <= set(rounds.columns)
    assert len(rounds) == 3 and rounds["t_end_s"].is_monotonic_increasing
    assert (rounds["completed"] + rounds["stragglers"] + rounds["dropouts"] + rounds["ooms"] + rounds["skipped"] == rounds["selected"]).all()
    for f in ("events", "clients", "links", "nodes", "edges", "assignments", "experts"):
        assert (d / f"{f}.parquet").is_file(), f
    # bytes recorded per client add up to the round totals
    cl = pd.read_parquet(d / "clients.parquet")
    assert cl.groupby("round")["bytes_up"].sum().to_numpy() == pytest.approx(rounds["bytes_up"].to_numpy())
    assert not list(d.glob(".*.tmp")), "temporary files must not be left behind"


def test_internal_error_keeps_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsim.protocols import fedmoe

    real = fedmoe.FedMoE.record_round

    def boom(self, st, *a, **k):  # noqa: ANN001, ANN002, ANN003
        real(self, st, *a, **k)
        if st.round == 1:
            raise RuntimeError("simulated crash in round 1")

    monkeypatch.setattr(fedmoe.FedMoE, "record_round", boom)
    loaded = fedsim.load_scenario(DEFAULT, SMALL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fedsim.run(loaded, tmp_path / "crash", figures=False)
    d = tmp_path / "crash"
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "failed" and "simulated crash" in m["error"]
    assert "RuntimeError" in (d / "error.txt").read_text()
    assert len(pd.read_parquet(d / "rounds.parquet")) == 2  # rounds 0 and 1 were kept


def test_python_api_mirrors_cli(tmp_path: Path) -> None:
    loaded = fedsim.load_scenario(DEFAULT, SMALL, seed=2)
    res = fedsim.run(loaded, tmp_path / "api", figures=False)
    assert isinstance(res, fedsim.RunResult)
    assert len(res.rounds) == 3 and not res.events.empty and not res.clients.empty
    assert res.manifest["seed"] == 2


def test_empty_clients_are_never_selected_and_failures_logged_once(tmp_path: Path) -> None:
    # 30 clients, 200 samples and a very skewed Dirichlet split: 7 clients hold no training data
    extra = ["data.partition=dirichlet", "data.alpha=0.05", "data.max_train_samples=200",
             "topology.grid.clients={phone: 10, sensor: 10, camera: 10}"]
    d = _run(tmp_path, "skew", extra=extra)
    cl = pd.read_parquet(d / "clients.parquet")
    assert (cl["num_samples"] > 0).all()
    ev = pd.read_parquet(d / "events.parquet")
    lost = ev[ev.kind == "client_lost"]
    assert len(lost) == int((cl["status"] != "completed").sum() - (cl["status"] == "skipped").sum())
    # each OOM appears once, from the device
    assert (ev.kind == "oom").sum() == (cl["status"] == "oom").sum()
