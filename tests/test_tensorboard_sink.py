"""output.tensorboard: event files that TensorBoard's own reader reads back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_sink_writes_rounds_against_round_and_sim_time(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard package (dev extra) reads the events")
    out = tmp_path / "run"
    rc = main(["run", str(REPO / "scenarios" / "smart-city-small.yaml"), "--out", str(out),
               "--quiet", "--no-figures", "--set", "run.rounds=3",
               "--set", "evaluation.every_rounds=2", "--set", "data.max_train_samples=300",
               "--set", "evaluation.max_test_samples=100", "--set", "output.tensorboard=true"])
    assert rc == 0
    files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    sc = _scalars(out / "tensorboard")
    r = pd.read_parquet(out / "rounds.parquet")
    assert len(r) == 3
    want = {"by_round/accuracy", "by_round/sim_time_s", "by_round/bytes_up", "by_round/bytes_down",
            "by_round/stragglers", "by_round/dropouts", "by_sim_time_ms/accuracy",
            "by_sim_time_ms/bytes_total", "by_sim_time_ms/stragglers", "by_sim_time_ms/round"}
    assert want <= set(sc)
    assert [s for s, _ in sc["by_round/sim_time_s"]] == [0, 1, 2]
    assert [v for _, v in sc["by_round/sim_time_s"]] == pytest.approx(r["t_end_s"].tolist(), rel=1e-6)
    assert [v for _, v in sc["by_round/stragglers"]] == r["stragglers"].astype(float).tolist()
    # evaluated rounds only (every 2nd and the last): rounds 1 and 2
    ev = r[r["accuracy"].notna()]
    assert [s for s, _ in sc["by_round/accuracy"]] == ev["round"].tolist() == [1, 2]
    assert [v for _, v in sc["by_round/accuracy"]] == pytest.approx(ev["accuracy"].tolist(), rel=1e-6)
    steps = [s for s, _ in sc["by_sim_time_ms/accuracy"]]
    assert steps == [round(t * 1000) for t in ev["t_end_s"]]
    tot = (r["bytes_up"] + r["bytes_down"]).tolist()
    assert [v for _, v in sc["by_sim_time_ms/bytes_total"]] == pytest.approx(tot, rel=1e-6)


def test_tensorboard_off_by_default_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["run", str(REPO / "scenarios" / "smart-city-small.yaml"), "--out", str(out),
               "--quiet", "--no-figures", "--set", "run.rounds=1",
               "--set", "data.max_train_samples=300", "--set", "evaluation.max_test_samples=100"])
    assert rc == 0
    assert not (out / "tensorboard").exists()
