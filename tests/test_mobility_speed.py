"""Random-waypoint speed decay (issue 29, item 7): a moving class whose leg speeds are
drawn down to 0 slows down over a run (mean speed 3.3 m/s at 400 s, 1.75 m/s at
40,000 s, against 7.5 m/s expected for speed_max 15). Such a class is refused with
one line (exit 2), whether ``speed_min_mps: 0`` is given or taken from the class defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.cli import main

DEFAULT = Path(__file__).resolve().parents[1] / "scenarios" / "smart-city-small.yaml"


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_explicit_zero_min_speed_is_refused_by_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f"extends: {DEFAULT}\ndevices:\n  classes:\n    drone:\n      mobility: fly\n      speed_min_mps: 0\n      speed_max_mps: 15\n")
    assert main(["validate", str(f)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{f}:6" in line and "devices.classes.drone.speed_min_mps" in line and "decay" in line


def test_zero_min_speed_from_the_class_defaults_is_refused_by_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a camera (default: static, speed 0) made to fly at up to 15 m/s keeps its default minimum, 0
    f = tmp_path / "s.yaml"
    f.write_text(f"extends: {DEFAULT}\ndevices:\n  classes:\n    camera:\n      mobility: fly\n      speed_max_mps: 15\n")
    out = tmp_path / "out"
    assert main(["run", str(f), "--out", str(out), "--quiet", "--no-figures"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "devices.classes.camera.speed_min_mps" in line and "decay" in line and str(f) in line
    assert not out.exists()


def test_positive_min_speed_keeps_the_mean_speed() -> None:
    """With speed_min 5, speed_max 15 the time-average speed stays at 1 / E[1/v] = 10 / ln 3 = 9.10 m/s."""
    from fedsim.net.mobility import Mobility

    n = 200
    pos = np.zeros((n, 3))
    m = Mobility(pos, ["fly"] * n, [(5.0, 15.0)] * n, [(30.0, 120.0)] * n, None, (0.0, 0.0, 1000.0, 1000.0), np.random.default_rng(0))
    dt, steps = 1.0, 4000
    late = []
    for k in range(steps):
        _, moved = m.step(dt)
        if k >= steps // 2:
            late.append(moved.mean() / dt)
    assert np.mean(late) == pytest.approx(10 / np.log(3), rel=0.05)
