"""The async and semi_async modes run on every fedmoe scenario (sync is covered by
tests/test_scenarios.py): two aggregations each, on the same shrunk scenarios."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main
from fedsim.config import load_scenario
from tests.shared_data import missing_data_dir, scenario_param
from tests.test_scenarios import SCENARIOS, SMALL, smoke_overrides


def _fedmoe_scenarios() -> list[Path]:
    out = []
    for path in SCENARIOS:
        try:
            if load_scenario(path).scenario.protocol.name == "fedmoe":
                out.append(path)
        except Exception:  # noqa: BLE001 - test_scenario_validates reports it
            continue
    return out


FEDMOE = _fedmoe_scenarios()


def test_every_fedmoe_scenario_is_listed() -> None:
    assert {"smart-city-small", "downtown-grid", "stadium-event"} <= {p.stem for p in FEDMOE}


@pytest.mark.parametrize("mode", ["async", "semi_async"])
@pytest.mark.parametrize("path", [scenario_param(p) for p in FEDMOE])
def test_mode_smoke_run(path: Path, mode: str, tmp_path: Path) -> None:
    if (gone := missing_data_dir(path)) is not None:
        pytest.skip(f"{path.name}: data directory {gone} is missing")
    s = load_scenario(path).scenario
    overrides = [*smoke_overrides(s), f"protocol.fedmoe.aggregation={mode}"]
    out = tmp_path / path.stem
    code = main(["run", str(path), "--out", str(out), "--quiet", "--no-figures", *(f"--set={o}" for o in overrides)])
    if s.protocol.fedmoe.expert_widths:  # sub-networks are sync only: a config rule says so in one line
        assert code == 2, f"{path.name} ({mode}): expected the one-line config error, got exit {code}"
        return
    assert code == 0, f"{path.name} ({mode}): fedsim run exited with {code}"
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert rounds["version"].tolist() == [1, 2]
    assert rounds["updates"].sum() > 0, "no update was aggregated"
    upd = pd.read_parquet(out / "updates.parquet")
    assert len(upd) and (upd["staleness"] >= 0).all()
    assert upd["version"].isin(rounds["version"]).all()


def test_compare_draws_sync_and_async_side_by_side(tmp_path: Path) -> None:
    """``fedsim compare`` of a sync and an async run: accuracy vs simulated time and the staleness histogram."""
    path = next(p for p in FEDMOE if p.stem == "smart-city-small")
    dirs = []
    for mode in ("sync", "async"):
        d = tmp_path / mode
        assert main(["run", str(path), "--out", str(d), "--quiet", "--no-figures",
                     *(f"--set={o}" for o in [*SMALL, f"protocol.fedmoe.aggregation={mode}"])]) == 0
        dirs.append(str(d))
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out)]) == 0
    assert (out / "accuracy_vs_time.png").is_file() and (out / "staleness_hist.png").is_file()
    assert main(["plot", dirs[1]]) == 0
    assert (Path(dirs[1]) / "figures" / "staleness_hist.png").is_file()
