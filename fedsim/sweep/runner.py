"""Running (or resuming) a whole sweep: :func:`run_sweep` and its progress bar."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import ScenarioError
from fedsim.sweep.backends import BACKENDS, EXECUTORS, Runner
from fedsim.sweep.index import (
    INDEX_FILE,
    META_FILE,
    METRICS,
    _build_index,
    _manifest,
    headline_metrics,
)
from fedsim.sweep.plan import RunTask, _check_or_trash, plan_runs
from fedsim.sweep.spec import SweepSpec, _value_json

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



def run_sweep(
    spec: SweepSpec,
    *,
    backend: str = "inprocess",
    workers: int | None = None,
    ray_address: str | None = None,
    runner: Runner | None = None,
    progress: bool = False,
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
        workers: parallel runs (``process`` / local ``ray``); default
            ``os.cpu_count()``. Ignored by ``inprocess``.
        ray_address: connect to this Ray cluster instead of starting one.
        runner: executes one loaded scenario into a run directory; default
            ``fedsim.api.run(loaded, out_dir, figures=False)``. Must be a
            module-level function for ``process`` / ``ray``.
        progress: show a rich progress bar counting runs.

    Returns:
        The :class:`SweepResult`; ``failed > 0`` if any run failed (the
        others still ran).

    Raises:
        ScenarioError: bad grid, seeds, backend or any invalid run scenario.
        KeyboardInterrupt: after writing the index of what finished.
    """
    if backend not in BACKENDS:
        raise ScenarioError(
            f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", file="--backend"
        )
    if workers is not None and workers < 1:
        raise ScenarioError(f"must be >= 1, got {workers}", file="--workers")
    from fedsim.rundir import write_json, write_parquet

    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    tasks, loaded = plan_runs(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    grid_keys = list(spec.grid)
    write_json(
        out / META_FILE,
        {
            "scenario": str(spec.scenario),
            "overrides": list(spec.overrides),
            "grid": {k: [_value_json(v) for v in vals] for k, vals in spec.grid.items()},
            "grid_keys": grid_keys,
            "seeds": list(spec.seeds),
            "metrics": list(METRICS),
        },
    )
    targets = [ls.scenario.evaluation.target_accuracy for ls in loaded]

    rows: dict[int, dict[str, Any]] = {}
    todo: list[RunTask] = []
    for t, ls in zip(tasks, loaded):
        # interrupted real runs resume from their checkpoint (a custom runner starts them over)
        state = _check_or_trash(t, ls, out, resumable=runner is None)
        if state == "resume":
            todo.append(dataclasses.replace(t, resume=True))
        elif state:
            m = _manifest(Path(t.out_dir)) or {}
            rows[t.index] = {
                "status": "completed",
                "wall_s": float(m.get("wall_s") or math.nan),
                **headline_metrics(t.out_dir, targets[t.index]),
            }
        else:
            todo.append(t)
    skipped = len(tasks) - len(todo)
    write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))

    failed = 0
    bar = _Bar(len(tasks), skipped) if progress else None
    stack = contextlib.ExitStack()
    try:
        if todo:
            it = EXECUTORS[backend](todo, runner, min(workers, len(todo)), ray_address)
            stack.callback(it.close)  # stop the executor now, not at garbage collection
            for res in it:
                t = tasks[res.index]
                row: dict[str, Any] = {
                    "status": res.status,
                    "error": res.error,
                    "wall_s": res.wall_s,
                }
                row.update(headline_metrics(t.out_dir, targets[t.index]))
                rows[res.index] = row
                failed += res.status != "completed"
                write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))
                if bar is not None:
                    bar.advance(t.name, res.status)
    finally:
        stack.close()
        if bar is not None:
            bar.stop()
        write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))
    index = _build_index(tasks, rows, grid_keys)
    return SweepResult(
        out,
        index,
        executed=len(todo),
        skipped=skipped,
        failed=failed,
        wall_s=time.perf_counter() - t0,
    )


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
