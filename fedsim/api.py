"""The Python API: ``load_scenario`` and ``run``, mirroring the ``fedsim`` command."""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.config import LoadedScenario, ScenarioError
from fedsim.config import load_scenario as _load
from fedsim.engine.tables import TABLES as _TABLE_SCHEMAS
from fedsim.engine.tables import check_frame
from fedsim.rundir import atomic_write_text, base_manifest, make_run_dir, write_json, write_parquet

__all__ = ["RunResult", "load_scenario", "run", "ProgressFn", "TABLES"]

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
    from fedsim.build import build_world
    from fedsim.learning.threads import set_torch_threads
    from fedsim.protocols import make_protocol

    loaded = scenario if isinstance(scenario, LoadedScenario) else load_scenario(scenario)
    s = loaded.scenario
    if out_dir is not None:
        run_dir = Path(out_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ScenarioError(f"output directory {str(run_dir)!r} already holds files; choose another --out", file="--out")

    wall0 = time.perf_counter()  # host wall time is reported, never used in the simulation
    gc_threshold = gc.get_threshold()
    restore_threads = set_torch_threads(s.training.torch_threads)
    try:
        # build first: bad input found here (a dataset directory that does not
        # hold the expected files, ...) fails before anything is written
        world = build_world(loaded)
        sinks: list[Any] = []  # live sinks (output.tensorboard), opened once run_dir exists

        def _progress(**kw: Any) -> None:
            if progress is not None:
                progress(**kw)
            for sink in sinks:
                sink.update(world.sim.rec.rows("rounds"))

        proto = make_protocol(world, progress=_progress)
        # the world's long-lived objects need no cyclic GC passes: 25-40% less CPU, same results
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)

        if out_dir is None:
            run_dir = make_run_dir(Path(s.output.dir), f"{s.run.name}-seed{s.run.seed}")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "figures").mkdir(exist_ok=True)
        manifest = base_manifest(s.model_dump(mode="json"), s.run.seed)
        manifest["scenario_file"] = str(loaded.path) if loaded.path else None
        write_json(run_dir / "manifest.json", manifest)
        if s.output.tensorboard:
            from fedsim.engine.sinks import TensorBoardSink

            sinks.append(TensorBoardSink(run_dir / "tensorboard"))

        failed: BaseException | None = None
        try:
            proto.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised after saving what we have
            failed = exc
        for sink in sinks:  # rounds recorded after the last progress call, then close
            sink.update(world.sim.rec.rows("rounds"))
            sink.close()
    finally:
        restore_threads()
        gc.set_threshold(*gc_threshold)
        gc.unfreeze()
    frames = world.frames()
    _write_frames(run_dir, frames)
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["wall_s"] = round(time.perf_counter() - wall0, 3)
    manifest["sim_end_s"] = float(world.sim.now)
    if failed is not None:
        manifest["status"] = "failed"
        manifest["error"] = f"{type(failed).__name__}: {failed}"
        atomic_write_text(run_dir / "error.txt", "".join(traceback.format_exception(failed)))
        write_json(run_dir / "manifest.json", manifest)
        raise failed
    manifest["status"] = "completed"
    write_json(run_dir / "manifest.json", manifest)

    figs: list[Path] = []
    if s.output.figures if figures is None else figures:
        from analysis.plots import plot_run

        figs = list(plot_run(run_dir))
    return RunResult(run_dir=run_dir, manifest=manifest, frames=frames, figures=figs)
