"""Kill a real ``fedsim run`` with SIGKILL and resume it: the tables and the model
must be byte-identical to an uninterrupted run (issue 19).

Kill points: inside a checkpoint's log append (after part of the bytes reached
the file), between the log append and the header commit (the header's
temporary file half written), and from outside at random moments once some
checkpoints exist. A corrupted or mismatched checkpoint is refused with one
line naming the file, exit 2.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.cli import main

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "smart-city-small.yaml"
SMALL = [
    "run.rounds=6",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 3, vehicle: 3, sensor: 2, camera: 2}",
    "protocol.fedmoe.clients_per_round=4",
    "training.local_epochs=1",
    "output.checkpoint_every_rounds=1",
    "protocol.nmoe.extractor=fedce",
    "protocol.nmoe.inference_horizon_s=20.0",
    "protocol.nmoe.request_rate_per_s=1.0",
]

# Runs `fedsim run` in a child process that SIGKILLs itself at a chosen point of
# the N-th checkpoint write: "mid-log" (half of the first new record's payload is
# in the log file, flushed to disk; no commit),
# "mid-header" (the log is appended and fsynced; the header's temporary file is
# half written).
_CHILD = r"""
import builtins, os, signal, sys
from fedsim.engine import checkpoint as cp
mode, nth = sys.argv[1], int(sys.argv[2])
state = {"writes": 0}
orig_write = cp.Checkpointer.write

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class HalfWrites:  # the log file, dying half-way through the first payload of the nth checkpoint
    def __init__(self, fh):
        self.fh = fh
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def write(self, data):
        if len(data) > 256:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            die()
        return self.fh.write(data)

def log_open(path, mode_, *a, **k):
    fh = builtins.open(path, mode_, *a, **k)
    return HalfWrites(fh) if mode == "mid-log" and state["writes"] == nth and "a" in mode_ else fh

def write(self, rounds_done, t_s):
    state["writes"] += 1
    if mode == "mid-header" and state["writes"] == nth:
        import fedsim.rundir as rd
        def half(path, text):
            with open(str(path) + ".partial.tmp", "w") as fh:
                fh.write(text[: len(text) // 2]); fh.flush(); os.fsync(fh.fileno())
            die()
        rd.atomic_write_text = half
    return orig_write(self, rounds_done, t_s)

cp.open = log_open
cp.Checkpointer.write = write
from fedsim.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _args(out: Path, protocol: str, extra: list[str] | None = None) -> list[str]:
    sets = [*SMALL, f"protocol.name={protocol}", *(extra or [])]
    return ["run", str(SCENARIO), "--out", str(out), "--quiet", "--no-figures", *(f"--set={s}" for s in sets)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _kill_at(out: Path, protocol: str, mode: str, nth: int) -> int:
    p = subprocess.run([sys.executable, "-c", _CHILD, mode, str(nth), *_args(out, protocol)], env=_env(), capture_output=True, text=True, timeout=300)
    return p.returncode


def _kill_after_checkpoints(out: Path, protocol: str, rounds_done: int, delay_s: float) -> int:
    """Start ``fedsim run`` and SIGKILL it ``delay_s`` after its checkpoint covers ``rounds_done`` rounds."""
    p = subprocess.Popen([sys.executable, "-m", "fedsim.cli", *_args(out, protocol)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    head = out / "checkpoint.json"
    t_end = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < t_end:
        try:
            if json.loads(head.read_text())["rounds_done"] >= rounds_done:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    time.sleep(delay_s)
    p.send_signal(signal.SIGKILL)
    return p.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run per protocol."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for proto in ("fedmoe", "nmoe"):
        assert main(_args(root / proto, proto)) == 0
        out[proto] = root / proto
    return out


def _assert_identical(ref: Path, got: Path) -> None:
    """Every table (rounds, events, clients, requests, ...) and model.pt, byte for byte."""
    names = sorted(p.name for p in ref.glob("*.parquet")) + ["model.pt"]
    assert sorted(p.name for p in got.glob("*.parquet")) + ["model.pt"] == names
    assert "rounds.parquet" in names and "events.parquet" in names
    for name in names:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs after resume"
    m = json.loads((got / "manifest.json").read_text())
    assert m["status"] == "completed" and m["resumed"] >= 1
    assert not (got / "checkpoint.log").exists() and not (got / "checkpoint.json").exists()


def _resume(d: Path) -> None:
    assert main(["run", "--resume", str(d), "--quiet", "--no-figures"]) == 0


@pytest.mark.parametrize(
    ("protocol", "mode", "nth"),
    [("fedmoe", "mid-log", 3), ("fedmoe", "mid-header", 2), ("nmoe", "mid-log", 1),
     pytest.param("nmoe", "mid-header", 1, marks=pytest.mark.slow)],
)
def test_killed_during_a_checkpoint_write_resumes_identically(reference: dict[str, Path], tmp_path: Path, protocol: str, mode: str, nth: int) -> None:
    d = tmp_path / "run"
    assert _kill_at(d, protocol, mode, nth) == -signal.SIGKILL
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "running"  # really killed mid-run
    if mode == "mid-log":
        # the killed append left bytes past the commit point (or none at all before a first commit)
        committed = json.loads((d / "checkpoint.json").read_text())["log_bytes"] if (d / "checkpoint.json").exists() else 0
        assert (d / "checkpoint.log").stat().st_size > committed
    _resume(d)
    _assert_identical(reference[protocol], d)


@pytest.mark.parametrize(
    ("protocol", "rounds_done"),
    [pytest.param("fedmoe", 1, marks=pytest.mark.slow), ("fedmoe", 2), ("nmoe", 2)],
)
def test_killed_at_a_random_moment_resumes_identically(reference: dict[str, Path], tmp_path: Path, protocol: str, rounds_done: int) -> None:
    d = tmp_path / "run"
    delay = random.Random(f"{protocol}{rounds_done}").uniform(0.0, 0.1)
    rc = _kill_after_checkpoints(d, protocol, rounds_done, delay)
    if rc == 0:
        pytest.skip("the run finished before the kill")  # a very fast machine: nothing to resume
    assert rc == -signal.SIGKILL
    if json.loads((d / "manifest.json").read_text())["status"] == "completed":
        # killed after the run completed (while the CLI wrote report.html): nothing to resume, nothing lost
        names = sorted(p.name for p in reference[protocol].glob("*.parquet")) + ["model.pt"]
        assert all((d / n).read_bytes() == (reference[protocol] / n).read_bytes() for n in names)
        pytest.skip("killed after the run completed")
    _resume(d)
    _assert_identical(reference[protocol], d)
    assert json.loads((d / "manifest.json").read_text())["resumed_from_round"] >= rounds_done


@pytest.mark.slow
def test_resume_twice_after_two_kills(reference: dict[str, Path], tmp_path: Path) -> None:
    """A resumed run that is killed again resumes again (its log is appended, not rewritten)."""
    d = tmp_path / "run"
    assert _kill_at(d, "fedmoe", "mid-log", 2) == -signal.SIGKILL
    p = subprocess.run([sys.executable, "-c", _CHILD, "mid-header", "2", "run", "--resume", str(d), "--quiet", "--no-figures"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    _resume(d)
    _assert_identical(reference["fedmoe"], d)
    assert json.loads((d / "manifest.json").read_text())["resumed"] == 2


# ------------------------------------------------------------------ refusals
class _Stop(BaseException):
    pass


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fedmoe run stopped at its fourth checkpoint write, after three (tests copy it)."""
    from fedsim.engine import checkpoint as cp

    d = tmp_path_factory.mktemp("killed") / "run"
    orig, n = cp.Checkpointer.write, {"writes": 0}

    def write(self: cp.Checkpointer, rounds_done: int, t_s: float) -> None:
        n["writes"] += 1
        if n["writes"] == 4:
            raise _Stop
        orig(self, rounds_done, t_s)

    cp.Checkpointer.write = write  # type: ignore[method-assign]
    try:
        with pytest.raises(_Stop):
            main(_args(d, "fedmoe"))
    finally:
        cp.Checkpointer.write = orig  # type: ignore[method-assign]
    assert json.loads((d / "checkpoint.json").read_text())["rounds_done"] == 3
    return d


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _refused(d: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["run", "--resume", str(d), "--quiet", "--no-figures"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_corrupt_log_is_refused(killed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(killed, tmp_path / "run")
    log = d / "checkpoint.log"
    data = bytearray(log.read_bytes())
    data[len(data) // 3] ^= 0xFF
    log.write_bytes(bytes(data))
    err = _refused(d, capsys)
    assert str(log) in err and "CRC mismatch" in err


def test_truncated_log_and_corrupt_header_are_refused(killed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(killed, tmp_path / "run")
    log = d / "checkpoint.log"
    log.write_bytes(log.read_bytes()[:100])
    err = _refused(d, capsys)
    assert str(log) in err and "truncated" in err
    head = d / "checkpoint.json"
    head.write_text('{"format": 1, "rec')
    err = _refused(d, capsys)
    assert str(head) in err and "corrupt checkpoint header" in err


def test_checkpoint_of_another_scenario_or_version_is_refused(killed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(killed, tmp_path / "run")
    m = json.loads((d / "manifest.json").read_text())
    m["scenario"]["protocol"]["fedmoe"]["alignment"]["policy"] = "greedy"  # the checkpoint was written for load_balanced
    (d / "manifest.json").write_text(json.dumps(m))
    err = _refused(d, capsys)
    assert str(d / "checkpoint.json") in err and "another scenario" in err

    d2 = _copy(killed, tmp_path / "run2")
    head = json.loads((d2 / "checkpoint.json").read_text())
    head["fedsim_version"] = "0.0.1"
    (d2 / "checkpoint.json").write_text(json.dumps(head))
    err = _refused(d2, capsys)
    assert "another fedsim version" in err and str(d2 / "checkpoint.json") in err

    d3 = _copy(killed, tmp_path / "run3")
    m = json.loads((d3 / "manifest.json").read_text())
    m["fedsim_version"] = "9.9"
    (d3 / "manifest.json").write_text(json.dumps(m))
    err = _refused(d3, capsys)
    assert str(d3 / "manifest.json") in err and "9.9" in err


def test_completed_run_and_non_run_dir_are_refused(reference: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(reference["fedmoe"], capsys)
    assert "already completed" in err
    err = _refused(tmp_path, capsys)
    assert "manifest.json" in err and "not a run directory" in err


# ------------------------------------------------------------------ sweeps
def test_sweep_resumes_an_interrupted_run_from_its_checkpoint(tmp_path: Path) -> None:
    """Ctrl-C during a sweep's run, then the same sweep again: the run continues
    from its checkpoint (not from scratch) and ends identical to a plain run."""
    import pandas as pd

    from fedsim.api import run
    from fedsim.build import load_checked
    from fedsim.engine import checkpoint as cp
    from fedsim.sweep import INDEX_FILE, SweepSpec, run_sweep

    sets = [*SMALL, "protocol.name=fedmoe"]
    spec = SweepSpec(scenario=SCENARIO, grid={"protocol.fedmoe.alignment.policy": ["greedy"]}, seeds=[0, 1], out=tmp_path / "sw", overrides=sets)
    orig, n = cp.Checkpointer.write, {"writes": 0}

    def write(self: cp.Checkpointer, rounds_done: int, t_s: float) -> None:
        n["writes"] += 1
        if n["writes"] == 6 + 4:  # the second run (seed 1), after its third checkpoint
            raise KeyboardInterrupt
        orig(self, rounds_done, t_s)

    cp.Checkpointer.write = write  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, backend="inprocess", workers=1)
    finally:
        cp.Checkpointer.write = orig  # type: ignore[method-assign]
    run_dir = sorted(p for p in (tmp_path / "sw").iterdir() if p.is_dir() and p.name.endswith("seed=1"))[0]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"  # a KeyboardInterrupt is recorded as interrupted (issue 18)

    res = run_sweep(spec, backend="inprocess", workers=1)
    assert res.skipped == 1 and res.executed == 1 and res.failed == 0
    assert (pd.read_parquet(tmp_path / "sw" / INDEX_FILE)["status"] == "completed").all()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["resumed"] == 1 and m["resumed_from_round"] == 3 and m["checkpoint"]["replayed_calls"] > 0
    assert not (tmp_path / "sw" / ".trash").exists()
    ref = run(load_checked(SCENARIO, [*sets, "protocol.fedmoe.alignment.policy=greedy"], seed=1), tmp_path / "ref", figures=False)
    _assert_identical(ref.run_dir, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(("gate", "extractor", "nth"), [("rollgate", "fedsc", 3), ("rangate", "fedce", 2)])
def test_nmoe_other_stages_resume_identically(tmp_path: Path, gate: str, extractor: str, nth: int) -> None:
    """nmoe with RollGate hops / FedSC (or RanGate) killed inside a checkpoint write."""
    extra = [f"protocol.nmoe.gate={gate}", f"protocol.nmoe.extractor={extractor}"]
    ref = tmp_path / "ref"
    assert main(_args(ref, "nmoe", extra)) == 0
    d = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", _CHILD, "mid-log", str(nth), *_args(d, "nmoe", extra)], env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    _resume(d)
    _assert_identical(ref, d)
