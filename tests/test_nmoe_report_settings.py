"""bench/nmoe_report.py: a partial table keeps the run's columns and its Fig. 4 setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_partial_csv_keeps_the_runs_setting_order_and_fig4_setting() -> None:
    """Units finish in any order (here tau 0.2 first, tau 0.3 last); the columns stay IID, 0.5,
    0.3, 0.2 and Fig. 4 stays at tau 0.2, where its K rows ran (it was labelled tau 0.3)."""
    spec = importlib.util.spec_from_file_location("nmoe_report", ROOT / "bench" / "nmoe_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rows = [{"setting": s, "variant": v} for s, v in
            [("τ=0.2", "paper"), ("IID", "paper"), ("τ=0.2", "K=5"), ("τ=0.5", "paper"), ("τ=0.3", "paper")]]
    order, fig4 = mod.settings_of(rows)
    assert order == ["IID", "τ=0.5", "τ=0.3", "τ=0.2"]
    assert fig4 == "τ=0.2"
    assert mod.settings_of(rows[:2] + rows[3:])[1] == "τ=0.2"  # no Fig. 4 row: the last column
