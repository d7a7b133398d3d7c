"""Every scenario file in scenarios/ validates, and smoke-runs for two rounds.

The smoke run shrinks each scenario (two rounds, a small data pool, a small
test set, no figures, and at most ~24 clients on grid topologies) so that the
whole file stays well under two minutes on two cores; it checks the exit
code and that the run wrote one row per round. Scenarios that read a
dataset directory are skipped when that directory is missing (CI has
``shared/data``); an ``nmoe`` scenario is run only when
:mod:`fedsim.protocols.nmoe` imports, and is marked ``slow`` (about a
minute even when shrunk).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsim.cli import main
from fedsim.config import load_scenario
from tests.shared_data import missing_data_dir, scenario_param

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))
ROUNDS = 2
MAX_CLIENTS = 24
SMALL = [
    f"run.rounds={ROUNDS}",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
]


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_scenarios_found() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"smart-city-small", "downtown-grid", "highway-corridor", "stadium-event",
            "industrial-campus"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids(SCENARIOS))
def test_scenario_validates(path: Path) -> None:
    if (gone := missing_data_dir(path)) is not None:
        pytest.skip(f"{path.name}: data directory {gone} is missing")
    loaded = load_scenario(path)
    s = loaded.scenario
    assert s.run.name == path.stem, "run.name should match the file name"
    if s.topology.kind == "manhattan_grid":
        assert sum(s.topology.grid.clients.values()) >= 1


def _fewer_clients(clients: dict[str, int], cap: int = MAX_CLIENTS) -> dict[str, int] | None:
    """Scale the per-class counts down to about ``cap`` in all, keeping every class (None: already small)."""
    total = sum(clients.values())
    if total <= cap:
        return None
    return {c: max(1, round(n * cap / total)) for c, n in clients.items() if n > 0}


def smoke_overrides(s: Any) -> list[str]:
    """The overrides that shrink scenario ``s`` for a smoke run: ``SMALL`` plus, on a
    Manhattan grid, fewer clients per class (also used by tests/test_fedbuff_scenarios.py)."""
    overrides = list(SMALL)
    if s.topology.kind == "manhattan_grid":
        fewer = _fewer_clients(dict(s.topology.grid.clients))
        if fewer is not None:
            overrides.append("topology.grid.clients={" + ", ".join(f"{c}: {n}" for c, n in fewer.items()) + "}")
    if s.data.dataset == "synthetic" and s.data.synthetic_samples > 20_000:  # a city's pool (metro-1m: 5M)
        overrides.append("data.synthetic_samples=20000")
    return overrides


def _smoke_params() -> list:
    params = []
    for path in SCENARIOS:
        marks = []
        try:
            proto = load_scenario(path).scenario.protocol.name
        except Exception:  # noqa: BLE001 - test_scenario_validates reports it
            proto = "fedmoe"
        if proto != "fedmoe":
            marks.append(pytest.mark.slow)
        params.append(scenario_param(path, *marks))
    return params


@pytest.mark.parametrize("path", _smoke_params())
def test_scenario_smoke_run(path: Path, tmp_path: Path) -> None:
    if (gone := missing_data_dir(path)) is not None:
        pytest.skip(f"{path.name}: data directory {gone} is missing")
    loaded = load_scenario(path)
    s = loaded.scenario
    if s.data.dir is not None:
        data_dir = (loaded.base_dir / s.data.dir).resolve()
        if not data_dir.is_dir():
            pytest.skip(f"{path.name}: data directory {data_dir} is missing (data.dir = {s.data.dir!r})")
    if s.protocol.name != "fedmoe":
        module = f"fedsim.protocols.{s.protocol.name}"
        try:
            importlib.import_module(module)
        except (ImportError, NotImplementedError) as e:
            pytest.skip(f"{path.name}: protocol {s.protocol.name!r} is not available ({module}: {e})")

    overrides = smoke_overrides(s)

    out = tmp_path / path.stem
    code = main(["run", str(path), "--out", str(out), "--quiet", "--no-figures", *(f"--set={o}" for o in overrides)])
    assert code == 0, f"{path.name}: fedsim run exited with {code}"

    if s.protocol.name == "fedmoe":
        rounds = pd.read_parquet(out / "rounds.parquet")
        assert len(rounds) == ROUNDS
        assert rounds["completed"].sum() > 0, "no client completed a round"
    else:  # nmoe: one rounds row per stage-1 round, then stages 2 and 3; the model's accuracy on the last row
        rounds = pd.read_parquet(out / "rounds.parquet")
        assert (rounds["stage"] == "extractor").sum() == ROUNDS
        assert set(rounds["stage"]) == {"extractor", "experts", "gate"}
        assert (rounds[rounds["stage"] == "extractor"]["bytes_up"] > 0).any()
        assert np.isfinite(rounds["accuracy"].iloc[-1])
