"""A killed run loses nothing, async included (issue 29, items 1 and 2).

- Tables are flushed with every checkpoint: a run killed with SIGKILL leaves
  every table up to its last checkpoint, and ``fedsim info`` / ``plot`` /
  ``report`` / ``compare`` read it, marking it incomplete with the command
  that resumes it.
- ``async`` and ``semi_async`` checkpoint at published model versions; a
  killed run resumes to byte-identical tables and model, as sync does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main
from tests.test_checkpoint_resume import _CHILD, _args, _assert_identical, _env, _resume


def _kill(out: Path, protocol: str, mode: str, nth: int, extra: list[str]) -> subprocess.CompletedProcess:
    """``fedsim run`` in a child that SIGKILLs itself during its ``nth`` checkpoint write."""
    return subprocess.run([sys.executable, "-c", _CHILD, mode, str(nth), *_args(out, protocol, extra)],
                          env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["async", "semi_async"])
def test_async_run_checkpoints_and_resumes_identically(tmp_path: Path, mode: str) -> None:
    extra = [f"protocol.fedmoe.aggregation={mode}"]
    ref = tmp_path / "ref"
    assert main(_args(ref, "fedmoe", extra)) == 0
    m = json.loads((ref / "manifest.json").read_text())
    # one checkpoint per published version (output.checkpoint_every_rounds: 1)
    assert m["checkpoint"]["writes"] == len(pd.read_parquet(ref / "rounds.parquet")) == 6
    d = tmp_path / "run"
    p = _kill(d, "fedmoe", "mid-log", 4, extra)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert json.loads((d / "checkpoint.json").read_text())["rounds_done"] == 3
    # the killed async run holds its tables up to that checkpoint, and analysis reads it
    pd.testing.assert_frame_equal(pd.read_parquet(d / "rounds.parquet"), pd.read_parquet(ref / "rounds.parquet").iloc[:3])
    assert main(["info", str(d)]) == 0 and main(["plot", str(d)]) == 0
    assert main(["report", str(d)]) == 0 and main(["compare", str(ref), str(d), "--out", str(tmp_path / "cmp")]) == 0
    _resume(d)
    _assert_identical(ref, d)
    assert json.loads((d / "manifest.json").read_text())["resumed_from_round"] == 3


@pytest.fixture(scope="module")
def killed_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A completed sync run and the same run SIGKILLed after its third checkpoint (mid-header of the fourth)."""
    root = tmp_path_factory.mktemp("killed_pair")
    ref, d = root / "ref", root / "killed"
    assert main(_args(ref, "fedmoe")) == 0
    p = _kill(d, "fedmoe", "mid-header", 4, [])
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    return ref, d


def test_killed_run_holds_its_tables_up_to_the_last_checkpoint(killed_pair: tuple[Path, Path]) -> None:
    ref, d = killed_pair
    assert json.loads((d / "manifest.json").read_text())["status"] == "running"  # really killed
    got = pd.read_parquet(d / "rounds.parquet")
    want = pd.read_parquet(ref / "rounds.parquet")
    assert len(got) == 3  # the fourth checkpoint never committed
    pd.testing.assert_frame_equal(got, want.iloc[:3])
    for name in ("events", "clients", "assignments", "experts", "updates"):
        assert (d / f"{name}.parquet").is_file(), name
    ev = pd.read_parquet(d / "events.parquet")
    assert ev["t_s"].max() <= got["t_end_s"].max() + 1e-9


def test_analysis_commands_read_a_killed_run(killed_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, d = killed_pair
    import shutil

    k = tmp_path / "killed"
    shutil.copytree(d, k)
    hint = f"fedsim run --resume {k}"
    assert main(["info", str(k)]) == 0
    out = capsys.readouterr()
    assert "incomplete" in out.out and hint in out.out.replace("\n", "")
    assert main(["plot", str(k)]) == 0
    out = capsys.readouterr()
    assert "incomplete" in out.err and hint in out.err
    assert main(["report", str(k)]) == 0
    assert "incomplete" in capsys.readouterr().err
    assert "incomplete" in (k / "report.html").read_text()
    assert main(["compare", str(ref), str(k), "--out", str(tmp_path / "cmp")]) == 0
    assert "incomplete" in capsys.readouterr().err
    summary = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert len(summary) == 2
    # and the killed run still resumes to the uninterrupted run's bytes
    _resume(k)
    _assert_identical(ref, k)


def test_a_run_killed_before_its_first_checkpoint_gets_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "early"
    p = _kill(d, "fedmoe", "mid-log", 1, [])
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not (d / "rounds.parquet").exists()
    for cmd in (["info", str(d)], ["plot", str(d)], ["report", str(d)]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"fedsim run --resume {d}" in err, err
