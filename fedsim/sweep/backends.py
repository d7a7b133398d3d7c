"""Executing sweep runs: one run in any process (:func:`execute_run`) and the backends that run many.

``inprocess`` (sequential, the reference), ``process`` (a ``ProcessPoolExecutor``
with the ``spawn`` start method) and ``ray`` (a pool of warm actors on a
cluster that need not share a disk with the driver: :mod:`fedsim.sweep.ray_pool`).
Each backend yields :class:`RunOutcome` s in completion order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import LoadedScenario
from fedsim.config import load_scenario as _load_scenario
from fedsim.learning.threads import torch_threads
from fedsim.sweep.index import manifest_status
from fedsim.sweep.plan import RunTask

__all__ = [
    "BACKENDS",
    "ExecOptions",
    "run_loaded",
    "Runner",
    "RunOutcome",
    "execute_run",
    "LOCAL_BACKENDS",
    "one_line",
]

#: Executors a sweep can run on.
BACKENDS: tuple[str, ...] = ("inprocess", "process", "ray")

#: A runner executes one loaded scenario into a run directory (default:
#: ``fedsim.api.run(loaded, out_dir, figures=False)``). It must be picklable
#: (a module-level function) for the ``process`` and ``ray`` backends.
Runner = Callable[[LoadedScenario, Path], Any]



@dataclass
class RunOutcome:
    """What a worker reports back: ``status`` is ``completed`` or ``failed`` (with a one-line ``error``)."""

    index: int
    status: str
    error: str | None = None
    wall_s: float = math.nan
    pid: int = 0
    node: str = ""  # ray backend: host/node id of the worker that finished it
    attempts: int = 1  # ray backend: 2 or 3 when the run was retried after losing its worker



@dataclass
class ExecOptions:
    """What an executor needs beyond the tasks.

    Attributes:
        workers: parallel runs (``None``: the CPU count; for ``ray``, the cluster's).
        ray_address: the Ray cluster to connect to.
        loaded: each task's scenario as the sweep loaded it, by task index
            (``ray`` ships these instead of re-reading the scenario file).
        ship_data: ``ray``: pack the scenario's input files into the object store
            (else every node reads them at the same path).
    """

    workers: int | None = None
    ray_address: str | None = None
    loaded: dict[int, LoadedScenario] = field(default_factory=dict)
    ship_data: bool = True


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its type name and its message with whitespace collapsed."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def execute_run(task: RunTask, runner: Runner | None = None) -> RunOutcome:
    """Run one task: load its scenario, set torch threads, call the runner.

    The same function runs in the sweep process (``inprocess``) or a spawned
    worker (``process``); Ray workers call :func:`run_loaded` with the
    scenario the driver loaded. A run is a pure function of
    ``(scenario, overrides, seed)``. torch's intra-op threads are set to the
    scenario's ``training.torch_threads`` for the run (and restored after).
    An ``Exception`` from the run is reported as ``failed`` with a one-line
    error; ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    t0 = time.perf_counter()
    try:
        loaded = _load_scenario(task.scenario, list(task.overrides), seed=task.seed)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        return RunOutcome(task.index, "failed", one_line(exc), time.perf_counter() - t0, os.getpid())
    return run_loaded(task, loaded, Path(task.out_dir), runner, t0=t0)


def run_loaded(
    task: RunTask,
    loaded: LoadedScenario,
    out_dir: Path,
    runner: Runner | None = None,
    *,
    progress: Callable[..., None] | None = None,
    t0: float | None = None,
) -> RunOutcome:
    """Run ``task`` (already loaded) into ``out_dir``: a fresh run, or ``fedsim run --resume`` when
    ``task.resume`` (default runner only). ``progress`` goes to :func:`fedsim.api.run` /
    :func:`fedsim.api.resume`; input files are read from ``loaded.paths``. Errors as :func:`execute_run`."""
    t0 = time.perf_counter() if t0 is None else t0
    pid = os.getpid()
    try:
        with torch_threads(loaded.scenario.training.torch_threads):
            if runner is not None:
                runner(loaded, out_dir)
            elif task.resume:
                from fedsim.api import resume

                resume(out_dir, figures=False, progress=progress, paths=loaded.paths)
            else:
                from fedsim.api import run

                run(loaded, out_dir, figures=False, progress=progress)
        status = manifest_status(out_dir)
        if status not in (None, "completed"):
            return RunOutcome(
                task.index, "failed", f"run ended with status {status!r}", time.perf_counter() - t0, pid
            )
        return RunOutcome(task.index, "completed", None, time.perf_counter() - t0, pid)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        return RunOutcome(task.index, "failed", one_line(exc), time.perf_counter() - t0, pid)


# ---------------------------------------------------------------------------
# executors: each yields RunOutcome in completion order


def _iter_inprocess(tasks: list[RunTask], runner: Runner | None, opts: ExecOptions) -> Iterator[RunOutcome]:
    for t in tasks:
        yield execute_run(t, runner)


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C is handled by the sweep process, which terminates the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _iter_process(tasks: list[RunTask], runner: Runner | None, opts: ExecOptions) -> Iterator[RunOutcome]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(
        max_workers=min(opts.workers or os.cpu_count() or 1, len(tasks)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigint,
    )
    try:
        futs = {ex.submit(execute_run, t, runner): t for t in tasks}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: futs[f].index):
                try:
                    yield f.result()
                except BrokenProcessPool as e:
                    yield RunOutcome(futs[f].index, "failed", one_line(e) or "worker process died")
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable runner
                    yield RunOutcome(futs[f].index, "failed", one_line(e))
    except BaseException:
        # Ctrl-C, or the consumer stopped: kill the runs in flight (their run
        # directories keep a "running" manifest and are redone on resume)
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)
        raise
    ex.shutdown(wait=True)


# the local sweep backends (not the training executors of fedsim.learning.executor_registry); ``ray`` lives in :mod:`fedsim.sweep.ray_pool` (which imports this module)
# and is added by :func:`fedsim.sweep.runner.executor`, so no import cycle
LOCAL_BACKENDS = {"inprocess": _iter_inprocess, "process": _iter_process}
