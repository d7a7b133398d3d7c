"""``bench/alignment_study.py`` (issue 26): Holm, paired tests, effect sizes and Friedman by
hand, and a 3-round ``--quick`` run that prints the paper's measures per setting and policy
and writes the summary, CSV and figures."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.shared_data import missing_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "alignment-premise.yaml"  # digits: bundled, never missing


def _study():  # noqa: ANN202
    """The bench script as module ``alignment_study`` (registered, so its worker function pickles)."""
    if "alignment_study" in sys.modules:
        return sys.modules["alignment_study"]
    spec = importlib.util.spec_from_file_location("alignment_study", ROOT / "bench" / "alignment_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["alignment_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_holm_by_hand() -> None:
    s = _study()
    from alignment_stats import holm

    p = np.array([0.01, 0.04, 0.03, np.nan, 0.20])
    # sorted 0.01, 0.03, 0.04, 0.20 (m = 4): 0.04, 0.09, max(0.09, 0.08), max(.., 0.20)
    assert holm(p)[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert np.isnan(holm(p)[3])
    assert s is not None


def test_paired_tests_effects_and_friedman_by_hand() -> None:
    _study()
    from alignment_stats import effect_vs_headroom, friedman, paired_tests, tests_table
    from scipy.stats import friedmanchisquare, ttest_rel

    acc = {"random": [0.50, 0.55, 0.52, 0.60], "lb": [0.58, 0.60, 0.57, 0.66],
           "greedy": [0.49, 0.57, 0.50, 0.61], "group_oracle": [0.70, 0.72, 0.69, 0.78]}
    df = pd.DataFrame([{"policy": k, "seed": i, "acc": v} for k, vs in acc.items() for i, v in enumerate(vs)])
    t = paired_tests(df, "acc", ["random", "lb", "greedy", "group_oracle"], ["random", "group_oracle"])
    row = t[(t.policy == "lb") & (t.ref == "random")].iloc[0]
    assert row["mean_diff"] == pytest.approx(np.mean(np.subtract(acc["lb"], acc["random"])))
    assert row["p"] == pytest.approx(ttest_rel(acc["lb"], acc["random"]).pvalue)
    assert len(t) == 5 and (t["p_holm"] >= t["p"]).all()  # 3 vs random + 2 vs oracle (random counted once)
    head = np.mean(acc["group_oracle"]) - np.mean(acc["random"])
    assert effect_vs_headroom(df, "acc", "lb") == pytest.approx((np.mean(acc["lb"]) - np.mean(acc["random"])) / head)
    stat, p, n = friedman(df, "acc", ["random", "lb", "greedy"])
    ref = friedmanchisquare(acc["random"], acc["lb"], acc["greedy"])
    assert (stat, p, n) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 4)
    text = "\n".join(tests_table(df, "acc", ["random", "lb", "greedy", "group_oracle"]))
    assert "| lb |" in text and "Friedman test over the 3 policies" in text


@pytest.mark.skipif(missing_data_dir(SCENARIO) is not None, reason="no data for alignment-premise")
def test_quick_study_prints_the_papers_measures_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = _study()
    assert s.main(["--quick", "--rounds", "3", "--workers", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    num = r"(nan|[0-9.]+)"
    pat = re.compile(rf"^setting=(\S+) policy=(\S+) acc=[0-9.]+ acc_macro=[0-9.]+ entropy=[0-9.]+ max_share=[0-9.]+ "
                     rf"rounds_to_target={num} bytes_to_target={num} t_target_s={num}$", re.M)
    got = [(m.group(1), m.group(2)) for m in pat.finditer(out)]
    assert got == [(st, lab) for st in s.DEFAULT_SETTINGS for lab, _ in s.SETTINGS[st][1]]
    text = (tmp_path / "summary.md").read_text()
    assert "## Setting `premise`" in text and "## Setting `systems`" in text and "Friedman" in text
    df = pd.read_csv(tmp_path / "summary.csv")
    assert len(df) == len(got) and (df["rounds"] == 3).all()
    assert {"acc@3", "acc_macro@3", "routed_entropy@3", "bytes_to_target"} <= set(df.columns)
    assert (tmp_path / "accuracy_premise.png").stat().st_size > 10_000
    # a second invocation reuses the complete runs and says so
    s.main(["--quick", "--rounds", "3", "--workers", "2", "--out", str(tmp_path)])
    assert f"{len(got)} of {len(got)} runs reused" in (tmp_path / "summary.md").read_text()
