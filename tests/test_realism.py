"""Systems realism items of issue 16, each against a hand-computed or published value."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
SMALL = [
    "run.rounds=3",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 4, vehicle: 3, sensor: 2, camera: 2, drone: 1}",
]


def _run(tmp: Path, name: str, extra: list[str]) -> Path:
    out = tmp / name
    code = main(["run", str(DEFAULT), "--out", str(out), "--quiet", "--no-figures",
                 *(f"--set={s}" for s in SMALL + extra)])
    assert code == 0
    return out


def test_round_interval_idles_between_rounds(tmp_path: Path) -> None:
    """Round r+1 starts exactly round_interval_s after round r ended (not after server compute)."""
    d = _run(tmp_path, "gap", ["protocol.fedmoe.round_interval_s=45.0",
                               "protocol.fedmoe.server_compute_s=0.0"])
    r = pd.read_parquet(d / "rounds.parquet").sort_values("round")
    gaps = r["t_start_s"].to_numpy()[1:] - r["t_end_s"].to_numpy()[:-1]
    assert gaps == pytest.approx([45.0, 45.0], rel=1e-12)
    d0 = _run(tmp_path, "nogap", ["protocol.fedmoe.server_compute_s=0.0"])
    r0 = pd.read_parquet(d0 / "rounds.parquet").sort_values("round")
    assert r0["t_start_s"].to_numpy()[1:] - r0["t_end_s"].to_numpy()[:-1] == pytest.approx([0.0, 0.0])


def test_lazy_population_runs_deterministically(tmp_path: Path) -> None:
    """A whole run with channel.population=lazy: same seed, byte-identical tables."""
    a = _run(tmp_path, "a", ["channel.population=lazy"])
    b = _run(tmp_path, "b", ["channel.population=lazy"])
    for f in ("rounds.parquet", "events.parquet", "clients.parquet"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
