"""bench/nmoe_report.py: a partial table keeps the run's columns and its Fig. 4 setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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


def test_orderings_have_paired_differences_and_holm_adjusted_p() -> None:
    """Each ordering row carries the per-seed paired difference, its n, a paired t-test p
    and a Holm-adjusted p >= p; the centralised MoE 10 points above the best other method in
    every seed (with a little noise) is 'held' with the hand-computed difference and p."""
    spec = importlib.util.spec_from_file_location("nmoe_report", ROOT / "bench" / "nmoe_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rows = []
    for seed, eps in ((0, 0.0), (1, 0.5), (2, -0.3)):
        for i, m in enumerate(mod.METHODS):
            for test in ("same", "iid-test"):
                acc = 40.0 + 20.0 * i if m != "Centralised MoE" else 40.0 + 20.0 * (len(mod.METHODS) - 1) + 10.0 + eps
                rows.append({"setting": "τ=0.2", "seed": seed, "variant": "paper", "method": m, "test": test,
                             "acc": acc + (seed if m == "FedSC+FedGate" else 0.0), "f1": 5.0})
    md = mod.orderings(rows, ["τ=0.2"])
    table = [ln.split(" | ") for ln in md.splitlines() if ln.startswith("| (")]
    five = next(r for r in table if r[0].startswith("| (5)"))
    # per seed: centralised minus FedSC+FedGate (the best other, +seed): 10.0, 9.5, 7.7
    assert five[2] == "held" and five[4].startswith("+9.1 ± ") and five[5] == "3"
    from scipy.stats import ttest_1samp

    assert float(five[6]) == pytest.approx(ttest_1samp([10.0, 9.5, 7.7], 0.0).pvalue, abs=5e-4)
    for r in table:
        p, ph = r[6], r[7].rstrip(" |")
        if p != "-":
            assert float(ph) >= float(p)
