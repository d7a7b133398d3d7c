"""``bench/alignment_study.py``: the paired table by hand, and a 3-round ``--quick`` run
that prints one line per policy and writes the summary, CSV and figure (issue 13)."""

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
SCENARIO = ROOT / "scenarios" / "alignment-fig3.yaml"


def _study():  # noqa: ANN202
    """The bench script as module ``alignment_study`` (registered, so its worker function pickles)."""
    if "alignment_study" in sys.modules:
        return sys.modules["alignment_study"]
    spec = importlib.util.spec_from_file_location("alignment_study", ROOT / "bench" / "alignment_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["alignment_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_paired_table_is_the_mean_and_t_interval_of_per_seed_differences() -> None:
    s = _study()
    rows = []
    for seed, (base, other) in enumerate([(0.70, 0.72), (0.60, 0.63), (0.80, 0.81)]):
        for lab, acc in (("random", base), ("greedy", other)):
            rows.append({key: acc for key, _, _ in s.PAIRED} | {"policy": lab, "seed": seed})
    rows.append({key: 0.0 for key, _, _ in s.PAIRED} | {"policy": "greedy", "seed": 9})  # no random seed 9: left out
    lines = s.paired_table(pd.DataFrame(rows))
    d = np.array([0.02, 0.03, 0.01])
    from scipy.stats import t

    half = t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    row = next(line for line in lines if line.startswith("| greedy |"))
    assert f"+{d.mean():.3f} ± {half:.3f}" in row
    assert row.rstrip().endswith("| 3 |")
    assert not any(line.startswith("| random |") for line in lines)


@pytest.mark.skipif(missing_data_dir(SCENARIO) is not None, reason="no MNIST for alignment-fig3")
def test_quick_study_prints_one_line_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = _study()
    assert s.main(["--quick", "--rounds", "3", "--workers", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pat = re.compile(r"^policy=(\S+) acc=[0-9.]+ acc_client=[0-9.]+ nmi=[0-9.]+ t_target_s=(nan|[0-9.]+)$", re.M)
    assert [m.group(1) for m in pat.finditer(out)] == [lab for lab, _ in s.POLICIES]
    text = (tmp_path / "summary.md").read_text()
    assert "## Paired by seed: difference to random" in text and "| lb_wu1 |" in text
    df = pd.read_csv(tmp_path / "summary.csv")
    assert len(df) == len(s.POLICIES) and (df["rounds"] == 3).all()
    assert (tmp_path / "assignments.png").stat().st_size > 10_000
    # a second invocation reuses the complete runs and says so
    s.main(["--quick", "--rounds", "3", "--workers", "2", "--out", str(tmp_path)])
    n = len(s.POLICIES)
    assert f"{n} of {n} runs reused" in (tmp_path / "summary.md").read_text()
