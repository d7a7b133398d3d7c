"""The Python API: ``load_scenario`` and ``run``, mirroring the ``fedsim`` command."""

from __future__ import annotations

import gc
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.config import LoadedScenario, ScenarioError
from fedsim.config import load_scenario as _load
from fedsim.engine.checkpoint import (
    HEADER_FILE,
    LOG_FILE,
    Checkpointer,
    CheckpointError,
    Replay,
    read_checkpoint,
    scenario_sha256,
)
from fedsim.engine.tables import TABLES as _TABLE_SCHEMAS
from fedsim.engine.tables import check_frame
from fedsim.rundir import (
    atomic_write_bytes,
    atomic_write_text,
    base_manifest,
    make_run_dir,
    write_json,
    write_parquet,
)

__all__ = ["RunResult", "load_scenario", "run", "resume", "prepare_resume", "checkpoint_interval", "checkpoint_identity", "CheckpointError", "ProgressFn", "TABLES"]

#: Tables a run may write, as ``<name>.parquet`` in the run directory (declared in :mod:`fedsim.engine.tables`).
TABLES = tuple(_TABLE_SCHEMAS)

#: Progress callback: called with keyword fields (round, rounds, t_s, accuracy, bytes).
ProgressFn = Callable[..., None]


@dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        run_dir: the run directory.
        manifest: the manifest dict as written.
        frames: every table as a DataFrame (``events``, ``rounds``, ``clients``, ...).
        figures: paths of figures written.
    """

    run_dir: Path
    manifest: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    @property
    def rounds(self) -> pd.DataFrame:
        """Per-round metrics."""
        return self.frames.get("rounds", pd.DataFrame())

    @property
    def events(self) -> pd.DataFrame:
        """Flat event rows."""
        return self.frames.get("events", pd.DataFrame())

    @property
    def clients(self) -> pd.DataFrame:
        """Per (round, client) rows."""
        return self.frames.get("clients", pd.DataFrame())

    @property
    def links(self) -> pd.DataFrame:
        """Link utilisation samples."""
        return self.frames.get("links", pd.DataFrame())


def load_scenario(path: str | Path, overrides: list[str] | None = None, *, seed: int | None = None) -> LoadedScenario:
    """Load and validate a scenario file (see :func:`fedsim.config.load_scenario`).

    The rules that need the built world (reachability, a registered policy) are
    checked when :func:`run` builds it (:func:`fedsim.build.check_world_rules`),
    so the topology is built once per run.

    Raises:
        ScenarioError: ``FILE:LINE: key.path: rule`` on the first broken rule.
    """
    return _load(path, overrides, seed=seed)


def _arithmetic_error(loaded: LoadedScenario, e: BaseException) -> ScenarioError:
    """The one-line error for an arithmetic error that extreme configuration values caused."""
    return ScenarioError(f"the configuration's values give an arithmetic error ({type(e).__name__}: {e}); "
                         "check extreme values", file=str(loaded.path) if loaded.path else None)


def _client_summary(systems: Any) -> dict[str, Any]:
    """Clients per device class and those offline for the whole run (never selectable)."""
    from collections import Counter

    devs = systems.devices
    per_class = Counter(systems.device_class(c) for c in devs)
    pop = getattr(systems, "population", None)
    if pop is not None:  # devices as columns: no object per device
        never = pop.never_online(systems.sim.env.now)
    else:
        never = sorted(c for c, d in devs.items() if not getattr(d, "ever_online", True))
    return {"total": len(devs), "per_class": dict(sorted(per_class.items())),
            "offline_whole_run": len(never), "offline_whole_run_ids": never[:50]}


def _write_frames(run_dir: Path, frames: dict[str, pd.DataFrame]) -> None:
    """Check every frame against its declared table, then write each as ``<name>.parquet``.

    Raises:
        TableSchemaError: a frame does not match its declaration (nothing is written then).
    """
    for name, df in frames.items():
        check_frame(name, df)
    for name, df in frames.items():
        write_parquet(run_dir / f"{name}.parquet", df)


def run(
    scenario: LoadedScenario | str | Path,
    out_dir: str | Path | None = None,
    *,
    progress: ProgressFn | None = None,
    figures: bool | None = None,
) -> RunResult:
    """Run a scenario to completion and write its run directory.

    Every ``output.checkpoint_every_rounds`` rounds a checkpoint is written into
    the run directory (:mod:`fedsim.engine.checkpoint`), so a killed run
    continues with :func:`resume`.

    Args:
        scenario: a loaded scenario or a path to one.
        out_dir: the run directory to create. It must not already hold files.
            Default: ``<output.dir>/<run.name>-seed<seed>`` (suffixed ``-2``,
            ``-3``... rather than overwrite an earlier run).
        progress: optional callback receiving round progress.
        figures: write figures (default: ``output.figures``).

    Returns:
        The :class:`RunResult`. If the simulation raises, the manifest is
        rewritten with ``status: failed`` and the traceback goes to
        ``error.txt``; every table recorded so far is still written.

    Raises:
        ScenarioError: bad input (a broken rule, including the world rules
            checked when the world is built; ``out_dir`` already holds files),
            before anything is written.
        TableSchemaError: a recorded table does not match
            :mod:`fedsim.engine.tables` (a bug in the simulator).
        Exception: whatever the simulation raised, after the run directory is
            written with ``status: failed``.
    """
    loaded = scenario if isinstance(scenario, LoadedScenario) else load_scenario(scenario)
    run_dir = None
    if out_dir is not None:
        run_dir = Path(out_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ScenarioError(f"{str(run_dir)!r} is a file, not a run directory; choose another --out", file="--out")
        if (run_dir / "manifest.json").is_file() and (run_dir / HEADER_FILE).is_file():
            raise ScenarioError(f"output directory {str(run_dir)!r} holds an interrupted run; continue it with fedsim run --resume {run_dir}", file="--out")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ScenarioError(f"output directory {str(run_dir)!r} already holds files; choose another --out", file="--out")
    return _execute(loaded, run_dir, progress=progress, figures=figures)


def resume(
    run_dir: str | Path, *, progress: ProgressFn | None = None, figures: bool | None = None,
    paths: Any = None, prepared: Any = None,
) -> RunResult:
    """Continue an interrupted run from its last checkpoint (``fedsim run --resume DIR``).

    The world is rebuilt from the scenario recorded in ``manifest.json`` and the
    simulation re-runs from ``t = 0``, the stored training and evaluation
    results standing in for the real work until they run out
    (:mod:`fedsim.engine.checkpoint`); the tables and the model end
    byte-identical to an uninterrupted run. A run with no checkpoint yet starts
    over in the same directory. ``prepared``: what :func:`prepare_resume` returned
    for ``run_dir`` (else it is called here).

    ``paths`` (a :class:`fedsim.config.loader.ScenarioPaths`), if given, replaces
    where the recorded scenario's input files are read from (a sweep worker's
    local copies); the recorded scenario itself is unchanged.

    Raises:
        CheckpointError: ``FILE: reason`` when the directory is not a resumable
            run (no or unreadable manifest, already completed, another fedsim
            version) or its checkpoint is corrupt or belongs to another
            scenario, seed or version.
        Exception: as :func:`run`.
    """
    loaded, manifest, head, records = prepared if prepared is not None else prepare_resume(run_dir, paths=paths)
    return _execute(loaded, Path(run_dir), progress=progress, figures=figures, resume=(manifest, head, records))


def prepare_resume(
    run_dir: str | Path, *, paths: Any = None,
) -> tuple[LoadedScenario, dict[str, Any], dict[str, Any], list[tuple[str, int, int]]]:
    """Check that ``run_dir`` can be resumed, before anything runs or prints: its scenario,
    manifest, checkpoint header and committed replay records (hand them to :func:`resume`).
    ``paths``: as :func:`resume`.

    Raises:
        CheckpointError: as :func:`resume`.
    """
    loaded, manifest = _load_for_resume(Path(run_dir))
    if paths is not None:
        loaded.paths = paths
    head, records = read_checkpoint(Path(run_dir), checkpoint_identity(loaded))
    return loaded, manifest, head, records


def checkpoint_identity(loaded: LoadedScenario) -> dict[str, Any]:
    """The fields a checkpoint must match: fedsim version, scenario hash, seed."""
    from fedsim.version import __version__

    resolved = json.loads(json.dumps(loaded.scenario.model_dump(mode="json"), default=str))
    return {"fedsim_version": __version__, "scenario_sha256": scenario_sha256(resolved), "seed": int(loaded.scenario.run.seed)}


def _load_for_resume(run_dir: Path) -> tuple[LoadedScenario, dict[str, Any]]:
    """The scenario (from ``manifest.json``) and manifest of a run to resume.

    Raises:
        CheckpointError: no / unreadable manifest, a completed run, another fedsim version, an invalid scenario.
    """
    from fedsim.config.loader import scenario_from_dict
    from fedsim.version import __version__

    mp = run_dir / "manifest.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(run_dir, "not a run directory but a file (--resume takes the directory of an interrupted run)")
    try:
        manifest = json.loads(mp.read_text(encoding="utf-8"))
        resolved = manifest["scenario"]
        if not isinstance(resolved, dict):
            raise TypeError("scenario is not an object")
    except FileNotFoundError:
        raise CheckpointError(mp, "not a run directory (no manifest.json)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(mp, f"unreadable manifest ({type(e).__name__}: {e})") from None
    if manifest.get("status") == "completed":
        raise CheckpointError(mp, "the run already completed; nothing to resume")
    if manifest.get("fedsim_version") != __version__:
        raise CheckpointError(mp, f"run written by fedsim {manifest.get('fedsim_version')!r}, this is fedsim {__version__!r}")
    try:
        sc = scenario_from_dict(resolved, file=str(mp))
    except ScenarioError as e:
        raise CheckpointError(mp, f"recorded scenario is invalid: {e.rule}") from None
    sf = manifest.get("scenario_file")
    return LoadedScenario(sc, Path(sf) if sf else None, resolved), manifest


def checkpoint_interval(rounds: int, every: int | None) -> int:
    """Rounds between checkpoints: ``every`` if set (0 = never), else ``max(1, rounds // 10)``."""
    return int(every) if every is not None else max(1, rounds // 10)


def _execute(
    loaded: LoadedScenario,
    run_dir: Path | None,
    *,
    progress: ProgressFn | None,
    figures: bool | None,
    resume: tuple[dict[str, Any], dict[str, Any], list[tuple[str, int, int]]] | None = None,
) -> RunResult:
    """Build the parts, run the protocol with checkpoints (replaying ``resume``'s records), write the run directory."""
    from fedsim.learning.allocator import keep_freed_memory
    from fedsim.learning.threads import set_torch_threads

    s = loaded.scenario
    wall0 = time.perf_counter()  # host wall time is reported, never used in the simulation
    started = datetime.now(timezone.utc)
    gc_threshold = gc.get_threshold()
    restore_threads = set_torch_threads(s.training.torch_threads)
    restore_malloc = keep_freed_memory()  # large tensors reuse freed memory: no page faults at every step
    every = checkpoint_interval(s.run.rounds, s.output.checkpoint_every_rounds)
    records = resume[2] if resume else []
    try:
        sinks: list[Any] = []  # live sinks (output.tensorboard), opened once run_dir exists
        parts, proto = _build(loaded, run_dir, records, every, progress, sinks)
        run_dir, manifest, head, draw = _open_run_dir(loaded, run_dir, parts, figures, resume, started)
        parts.checkpoints.arm(Checkpointer(
            run_dir, checkpoint_identity(loaded), parts.trainer.replay, every,
            committed_bytes=int(head.get("log_bytes", 0)), committed_records=len(records),
        ))
        # a killed run keeps every table up to its last checkpoint (fedsim info / plot read it)
        parts.checkpoints.checkpointer.on_write = lambda: _write_frames(run_dir, parts.frames())
        if s.output.tensorboard:
            sinks.append(_tensorboard_sink(run_dir, fresh=resume is not None))
        failed = _play(proto, parts, sinks)
    finally:
        restore_threads()
        restore_malloc()
        gc.set_threshold(*gc_threshold)
        gc.unfreeze()
    frames = parts.frames()
    _write_frames(run_dir, frames)
    if "experts" in frames:  # fedmoe: the paper's alignment measures (fedsim.alignment.measures) and fairness (.fairness)
        from fedsim.alignment.fairness import fairness_measures, nominal_class_speeds
        from fedsim.alignment.measures import alignment_measures

        measures = alignment_measures(frames, s.evaluation.target_accuracy)
        measures.update(fairness_measures(frames, nominal_class_speeds(s.devices.classes)))
        write_json(run_dir / "alignment.json", measures)
    state = proto.final_state() if failed is None else None
    if state is not None:
        _write_model(run_dir / "model.pt", state)
    _close_manifest(manifest, parts, started, time.perf_counter() - wall0, every, len(records))
    if failed is not None:
        _fail(loaded, run_dir, manifest, failed)
    manifest["status"] = "completed"
    manifest.pop("error", None)
    write_json(run_dir / "manifest.json", manifest)
    (run_dir / "error.txt").unlink(missing_ok=True)
    for name in (HEADER_FILE, LOG_FILE):  # the run is complete: its checkpoint has served
        (run_dir / name).unlink(missing_ok=True)

    figs: list[Path] = []
    if draw:
        from analysis.plots import plot_run

        figs = list(plot_run(run_dir))
    return RunResult(run_dir=run_dir, manifest=manifest, frames=frames, figures=figs)


def _build(
    loaded: LoadedScenario, run_dir: Path | None, records: list[tuple[str, int, int]], every: int,
    progress: ProgressFn | None, sinks: list[Any],
) -> tuple[Any, Any]:
    """The run's parts and its protocol (bad input fails here, before anything is
    written); then the cyclic GC is frozen for the run (:func:`_execute` unfreezes it)."""
    from fedsim.build import build_parts
    from fedsim.protocols import make_protocol

    # build first: bad input found here (a dataset directory that does not
    # hold the expected files, ...) fails before anything is written
    replay = Replay(run_dir / LOG_FILE if run_dir is not None else None, records, record=every > 0)
    try:
        parts = build_parts(loaded, replay)
    except ArithmeticError as e:  # overflow, division by zero... from extreme values
        raise _arithmetic_error(loaded, e) from None

    def _progress(**kw: Any) -> None:
        if progress is not None:
            progress(**kw)
        for sink in sinks:
            sink.update(parts.sim.rec.rows("rounds"))

    try:
        proto = make_protocol(parts, progress=_progress)
    except ArithmeticError as e:
        raise _arithmetic_error(loaded, e) from None
    # the run's long-lived objects need no cyclic GC passes: 25-40% less CPU, same results
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    return parts, proto


def _open_run_dir(
    loaded: LoadedScenario, run_dir: Path | None, parts: Any, figures: bool | None,
    resume: tuple[dict[str, Any], dict[str, Any], list[tuple[str, int, int]]] | None, started: datetime,
) -> tuple[Path, dict[str, Any], dict[str, Any], bool]:
    """Create the run directory and write its manifest; returns (run_dir, manifest, checkpoint head, draw figures)."""
    s = loaded.scenario
    if run_dir is None:
        run_dir = make_run_dir(Path(s.output.dir), f"{s.run.name}-seed{s.run.seed}")
        parts.trainer.replay.log_path = run_dir / LOG_FILE
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    draw = s.output.figures if figures is None else figures
    if draw:  # no empty figures/ for runs that draw none (sweeps, --no-figures)
        (run_dir / "figures").mkdir(exist_ok=True)
    if resume:
        manifest, head = dict(resume[0]), resume[1]
        manifest["status"] = "running"
        manifest["resumed"] = int(manifest.get("resumed") or 0) + 1
        manifest["resumed_from_round"] = int(head.get("rounds_done", 0))
    else:
        manifest = base_manifest(s.model_dump(mode="json"), s.run.seed)
        manifest["scenario_file"] = str(loaded.path) if loaded.path else None
        head = {}
    manifest["started_at"] = started.isoformat(timespec="milliseconds")
    write_json(run_dir / "manifest.json", manifest)
    return run_dir, manifest, head, draw


def _tensorboard_sink(run_dir: Path, *, fresh: bool) -> Any:
    """The ``output.tensorboard`` sink; ``fresh``: a resumed run replays every round, so the
    killed run's event files (which would duplicate them) are removed first."""
    from fedsim.engine.sinks import TensorBoardSink

    if fresh:
        import shutil

        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    return TensorBoardSink(run_dir / "tensorboard")


def _play(proto: Any, parts: Any, sinks: list[Any]) -> BaseException | None:
    """Run the protocol; returns the exception that ended it (None: it completed). The sinks get the last rows, then close."""
    failed: BaseException | None = None
    try:
        proto.run()
    except BaseException as exc:  # noqa: BLE001 - re-raised after saving what we have
        failed = exc
    for sink in sinks:  # rounds recorded after the last progress call, then close
        sink.update(parts.sim.rec.rows("rounds"))
        sink.close()
    return failed


def _close_manifest(manifest: dict[str, Any], parts: Any, started: datetime, wall_s: float, every: int, replayed: int) -> None:
    """The end-of-run manifest fields: times, clients, checkpoint costs."""
    cp = parts.checkpoints.checkpointer
    # finished_at - started_at == wall_s (one clock reading each, same resolution)
    manifest["finished_at"] = (started + timedelta(seconds=wall_s)).isoformat(timespec="milliseconds")
    manifest["wall_s"] = round(wall_s, 3)
    manifest["sim_end_s"] = float(parts.sim.now)
    manifest["clients"] = _client_summary(parts.systems)
    manifest["checkpoint"] = {
        "every_rounds": every, "writes": cp.writes, "write_s": round(cp.seconds, 4),
        "pickle_s": round(parts.trainer.replay.cost_s, 4), "replayed_calls": replayed,
        "log_bytes": cp.committed_bytes,
    }


def _fail(loaded: LoadedScenario, run_dir: Path, manifest: dict[str, Any], failed: BaseException) -> None:
    """Record a failed / interrupted run in its manifest (and ``error.txt``), then raise.

    Raises:
        ScenarioError: an arithmetic error (extreme values); else ``failed`` itself.
    """
    interrupted = isinstance(failed, KeyboardInterrupt)
    manifest["status"] = "interrupted" if interrupted else "failed"
    manifest["error"] = f"{type(failed).__name__}: {failed}"
    if not interrupted:
        atomic_write_text(run_dir / "error.txt", "".join(traceback.format_exception(failed)))
    write_json(run_dir / "manifest.json", manifest)
    if isinstance(failed, ArithmeticError):
        err = _arithmetic_error(loaded, failed)
        err.rule += f" (the run directory {str(run_dir)!r} keeps the traceback in error.txt)"
        raise err from failed
    raise failed


def _write_model(path: Path, state: dict[str, Any]) -> None:
    """Write a state dict as ``model.pt`` (``torch.save``; byte-identical for equal tensors), atomically."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, buf)
    atomic_write_bytes(path, buf.getvalue())
