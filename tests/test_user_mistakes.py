"""Mistakes a new user makes get one line on stderr and exit code 2, never a
traceback (issue 29, item 6): a cell without backhaul, ``--out`` naming a file,
``--resume`` given a scenario file, an unreadable scenario file, a closed
output pipe, a key given twice in one YAML mapping, and no progress bar
printed before a resume error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"

# bs1 is in range of c1 (and nearer than bs0) but has no wired link: c1 is "reachable" through
# bs0's large range, yet it attaches to bs1 by received power and the run cannot route it
NO_BACKHAUL = """
topology:
  kind: explicit
  server: cloud
  nodes:
    - {id: cloud, kind: cloud, x: 0, y: 0}
    - {id: bs0, kind: macro, x: 0, y: 0, range_m: 100000}
    - {id: bs1, kind: macro, x: 3000, y: 0, range_m: 500}
    - {id: c0, kind: client, device_class: phone, x: 10, y: 0}
    - {id: c1, kind: client, device_class: sensor, x: 3010, y: 0}
  edges:
    - {src: bs0, dst: cloud, capacity_bps: 1e9, latency_s: 0.001}
"""


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cell_without_backhaul_is_caught_by_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(NO_BACKHAUL)
    assert main(["validate", str(f)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(f) in line and "bs1" in line and "backhaul" in line
    out = tmp_path / "out"
    assert main(["run", str(f), "--out", str(out), "--quiet", "--no-figures"]) == 2
    assert "bs1" in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_out_naming_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    assert main(["run", str(DEFAULT), "--out", str(f), "--quiet", "--no-figures"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(f) in line and "file" in line
    assert f.read_text() == "keep me"


def test_resume_given_a_scenario_file_and_no_bar_before_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", str(DEFAULT)]) == 2  # without --quiet: a progress bar would show
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert str(DEFAULT) in line and "run directory" in line
    assert "round" not in out.out and "0/0" not in out.out + out.err


def test_resume_of_a_non_run_directory_prints_no_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    out = capsys.readouterr()
    _one_line(out.err)
    assert "round" not in out.out and "0/0" not in out.out + out.err


def test_unreadable_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # a path through a regular file (NotADirectoryError): unreadable even for root
    f = tmp_path / "s.yaml"
    f.write_text("run: {name: x}\n")
    for cmd in ("validate", "run"):
        assert main([cmd, str(f / "inner.yaml")]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "inner.yaml" in line and "cannot read" in line
    # no read permission (chmod 000 does not stop root, so the error is simulated)
    real = Path.read_text

    def denied(self: Path, *a: object, **k: object) -> str:
        if self.name == "s.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    assert main(["validate", str(f)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(f) in line and "Permission denied" in line


def test_closed_output_pipe(tmp_path: Path) -> None:
    """``fedsim validate --resolved S | head -1``: the reader is gone before the writes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "validate", "--resolved", str(DEFAULT)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # nobody reads: the first write gets EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 2, err
    assert "broken pipe" in _one_line(err).lower()


def test_duplicate_key_in_one_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("run:\n  name: first\n  seed: 3\n  name: second\nmodel:\n  num_experts: 4\n")
    assert main(["validate", str(f)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{f}:4" in line and "run.name" in line and "lines 2 and 4" in line
    # the same key in different mappings, and a top-level section given twice
    g = tmp_path / "g.yaml"
    g.write_text("run:\n  name: a\nevaluation:\n  every_rounds: 1\nrun:\n  seed: 2\n")
    assert main(["validate", str(g)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{g}:5" in line and "run" in line and "lines 1 and 5" in line
    ok = tmp_path / "ok.yaml"
    ok.write_text("run:\n  name: a\n  seed: 1\nevaluation:\n  every_rounds: 1\n")
    assert main(["validate", str(ok)]) == 0
