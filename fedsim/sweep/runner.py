"""Running (or resuming) a whole sweep: :func:`run_sweep` and its progress bar."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import ScenarioError
from fedsim.sweep.backends import BACKENDS, LOCAL_BACKENDS, ExecOptions, Runner
from fedsim.sweep.index import (
    INDEX_FILE,
    META_FILE,
    METRICS,
    build_index,
    read_manifest,
    run_dir_headline,
)
from fedsim.sweep.plan import RunTask, check_or_trash, plan_runs
from fedsim.sweep.spec import SweepSpec, value_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SweepResult",
    "run_sweep",
]

@dataclass
class SweepResult:
    """A finished (or partly failed) sweep: its directory, index and how many runs were executed now."""

    out: Path
    index: pd.DataFrame
    executed: int
    skipped: int
    failed: int
    wall_s: float
    nodes: dict[str, str] = dataclasses.field(default_factory=dict)  # ray: run name -> node that ran it



def executor(backend: str) -> Any:
    """The executor of sweep ``backend`` (one of :data:`BACKENDS`): a function
    ``(tasks, runner, opts) -> iterator of RunOutcome``."""
    if backend == "ray":
        from fedsim.sweep.ray_pool import iter_ray

        return iter_ray
    return LOCAL_BACKENDS[backend]


def run_sweep(
    spec: SweepSpec,
    *,
    backend: str = "inprocess",
    workers: int | None = None,
    ray_address: str | None = None,
    runner: Runner | None = None,
    progress: bool = False,
    ship_data: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep and write its index.

    Every run is validated first (see :func:`plan_runs`). Runs already
    completed in ``spec.out`` are skipped; interrupted runs with a sound
    checkpoint of the same scenario continue from it (``fedsim run --resume``;
    default runner only); other existing run directories are moved to
    ``out/.trash``. ``sweep.parquet`` is rewritten atomically after
    every finished run, so a crash or Ctrl-C leaves a consistent index
    (unfinished runs ``pending``) and re-running the same call resumes.

    Args:
        backend: ``inprocess``, ``process`` or ``ray``.
        workers: parallel runs (``process`` / ``ray``); default
            ``os.cpu_count()`` (``ray``: the cluster's CPUs). Ignored by ``inprocess``.
        ray_address: connect to this Ray cluster instead of starting one.
        runner: executes one loaded scenario into a run directory; default
            ``fedsim.api.run(loaded, out_dir, figures=False)``. Must be a
            module-level function for ``process`` / ``ray``.
        progress: show a rich progress bar counting runs.
        ship_data: ``ray``: send the scenario's input files (data directory,
            traces) to the workers through the object store; False: every node
            must hold them at the same path.

    Returns:
        The :class:`SweepResult`; ``failed > 0`` if any run failed (the
        others still ran).

    Raises:
        ScenarioError: bad grid, seeds, backend or any invalid run scenario;
            ``cuda`` runs on a Ray cluster without GPUs.
        KeyboardInterrupt: after writing the index of what finished.
    """
    if backend not in BACKENDS:
        raise ScenarioError(
            f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", file="--backend"
        )
    if workers is not None and workers < 1:
        raise ScenarioError(f"must be >= 1, got {workers}", file="--workers")
    t0 = time.perf_counter()
    tasks, loaded = plan_runs(spec)
    out = Path(spec.out)
    _write_meta(out, spec)
    sw = _Sweep(tasks, loaded, out, list(spec.grid))
    todo = sw.skip_or_resume(resumable=runner is None)
    skipped = len(tasks) - len(todo)
    sw.write_index()
    opts = ExecOptions(workers, ray_address, {t.index: loaded[t.index] for t in todo}, ship_data)
    bar = _Bar(len(tasks), skipped) if progress else None
    try:
        failed = sw.execute(executor(backend), todo, runner, opts, bar)
    finally:
        if bar is not None:
            bar.stop()
        sw.write_index()
    return SweepResult(
        out,
        sw.index(),
        executed=len(todo),
        skipped=skipped,
        failed=failed,
        wall_s=time.perf_counter() - t0,
        nodes=sw.nodes,
    )


def _write_meta(out: Path, spec: SweepSpec) -> None:
    """Create the sweep directory and write ``sweep.json``."""
    from fedsim.rundir import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / META_FILE,
        {
            "scenario": str(spec.scenario),
            "overrides": list(spec.overrides),
            "grid": {k: [value_json(v) for v in vals] for k, vals in spec.grid.items()},
            "grid_keys": list(spec.grid),
            "seeds": list(spec.seeds),
            "metrics": list(METRICS),
        },
    )


class _Sweep:
    """The rows of a sweep's index as its runs are skipped, resumed or finished."""

    def __init__(self, tasks: list[RunTask], loaded: list[Any], out: Path, grid_keys: list[str]) -> None:
        self.tasks, self.loaded, self.out, self.grid_keys = tasks, loaded, out, grid_keys
        self.targets = [ls.scenario.evaluation.target_accuracy for ls in loaded]
        self.rows: dict[int, dict[str, Any]] = {}
        self.nodes: dict[str, str] = {}

    def index(self) -> pd.DataFrame:
        return build_index(self.tasks, self.rows, self.grid_keys)

    def write_index(self) -> None:
        from fedsim.rundir import write_parquet

        write_parquet(self.out / INDEX_FILE, self.index())

    def skip_or_resume(self, *, resumable: bool) -> list[RunTask]:
        """The tasks to run: completed runs are indexed and skipped, interrupted real runs
        resume from their checkpoint (a custom runner starts them over)."""
        todo: list[RunTask] = []
        for t, ls in zip(self.tasks, self.loaded):
            state = check_or_trash(t, ls, self.out, resumable=resumable)
            if state == "resume":
                todo.append(dataclasses.replace(t, resume=True))
            elif state:
                m = read_manifest(Path(t.out_dir)) or {}
                self.rows[t.index] = {
                    "status": "completed",
                    "wall_s": float(m.get("wall_s") or math.nan),
                    **run_dir_headline(t.out_dir, self.targets[t.index]),
                }
            else:
                todo.append(t)
        return todo

    def execute(
        self, executor: Any, todo: list[RunTask], runner: Runner | None, opts: ExecOptions, bar: _Bar | None
    ) -> int:
        """Run ``todo`` on ``executor``, indexing each outcome as it comes; returns the number failed."""
        failed = 0
        if not todo:
            return failed
        with contextlib.closing(executor(todo, runner, opts)) as it:  # stop the executor now, not at GC
            for res in it:
                t = self.tasks[res.index]
                row: dict[str, Any] = {"status": res.status, "error": res.error, "wall_s": res.wall_s}
                row.update(run_dir_headline(t.out_dir, self.targets[t.index]))
                self.rows[res.index] = row
                failed += res.status != "completed"
                if res.node:
                    self.nodes[t.name] = res.node
                self.write_index()
                if bar is not None:
                    bar.advance(t.name, res.status)
        return failed


class _Bar:
    """A rich progress bar counting runs (completed + failed)."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.prog = Progress(
            TextColumn("[bold]sweep"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = self.prog.add_task("sweep", total=total, completed=done, last="")
        self.prog.start()

    def advance(self, name: str, status: str) -> None:
        mark = "" if status == "completed" else f" [red]{status}[/red]"
        self.prog.update(self.task, advance=1, last=f"{name}{mark}")

    def stop(self) -> None:
        self.prog.stop()
