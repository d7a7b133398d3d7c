"""Smoke test of bench/systems_scale.py at a tiny scale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_systems_scale_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "bench" / "systems_scale.py"
    spec = importlib.util.spec_from_file_location("systems_scale", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--clients", "40", "--rounds", "2", "--deadline-s", "30"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("wall_s=") and "events=" in last and "events_per_s=" in last
