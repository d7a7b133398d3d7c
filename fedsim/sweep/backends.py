"""Executing sweep runs: one run in any process (:func:`execute_run`) and the backends that run many.

``inprocess`` (sequential, the reference), ``process`` (a ``ProcessPoolExecutor``
with the ``spawn`` start method) and ``ray`` (each run one Ray task). Each
backend yields :class:`RunOutcome` s in completion order.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import LoadedScenario, ScenarioError
from fedsim.config import load_scenario as _load_scenario
from fedsim.learning.threads import torch_threads
from fedsim.sweep.index import _manifest_status
from fedsim.sweep.plan import RunTask

__all__ = [
    "BACKENDS",
    "Runner",
    "RunOutcome",
    "execute_run",
    "EXECUTORS",
]

#: Executors a sweep can run on.
BACKENDS: tuple[str, ...] = ("inprocess", "process", "ray")

#: A runner executes one loaded scenario into a run directory (default:
#: ``fedsim.api.run(loaded, out_dir, figures=False)``). It must be picklable
#: (a module-level function) for the ``process`` and ``ray`` backends.
Runner = Callable[[LoadedScenario, Path], Any]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class RunOutcome:
    """What a worker reports back: ``status`` is ``completed`` or ``failed`` (with a one-line ``error``)."""

    index: int
    status: str
    error: str | None = None
    wall_s: float = math.nan
    pid: int = 0



def _api_run(loaded: LoadedScenario, out_dir: Path) -> Any:
    from fedsim.api import run

    return run(loaded, out_dir, figures=False)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def execute_run(task: RunTask, runner: Runner | None = None) -> RunOutcome:
    """Run one task: load its scenario, set torch threads, call the runner.

    The same function runs in the sweep process (``inprocess``), a spawned
    worker (``process``) or a Ray worker, so a run is a pure function of
    ``(scenario, overrides, seed)``. torch's intra-op threads are set to the
    scenario's ``training.torch_threads`` for the run (and restored after).
    An ``Exception`` from the run is reported as ``failed`` with a one-line
    error; ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    t0 = time.perf_counter()
    pid = os.getpid()
    try:
        loaded = _load_scenario(task.scenario, list(task.overrides), seed=task.seed)
        with torch_threads(loaded.scenario.training.torch_threads):
            if task.resume and runner is None:
                from fedsim.api import resume

                resume(Path(task.out_dir), figures=False)
            else:
                (runner or _api_run)(loaded, Path(task.out_dir))
        status = _manifest_status(Path(task.out_dir))
        if status not in (None, "completed"):
            return RunOutcome(
                task.index,
                "failed",
                f"run ended with status {status!r}",
                time.perf_counter() - t0,
                pid,
            )
        return RunOutcome(task.index, "completed", None, time.perf_counter() - t0, pid)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        return RunOutcome(task.index, "failed", _one_line(exc), time.perf_counter() - t0, pid)


# ---------------------------------------------------------------------------
# executors: each yields RunOutcome in completion order


def _iter_inprocess(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    for t in tasks:
        yield execute_run(t, runner)


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C is handled by the sweep process, which terminates the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _iter_process(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(
        max_workers=workers,
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
                    yield RunOutcome(futs[f].index, "failed", _one_line(e) or "worker process died")
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable runner
                    yield RunOutcome(futs[f].index, "failed", _one_line(e))
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


def _iter_ray(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    try:
        import ray
    except ImportError:
        raise ScenarioError(
            "the ray backend needs Ray: pip install 'fedsim[ray]'", file="--backend"
        ) from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            ray.init(num_cpus=workers, **kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_run)
        refs = {remote.remote(t, runner): t for t in tasks}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker crash is one failed run
                        cause = getattr(e, "cause", None)
                        msg = _ANSI.sub(
                            "", _one_line(cause if isinstance(cause, BaseException) else e)
                        )
                        yield RunOutcome(refs[ref].index, "failed", msg[:500])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


EXECUTORS = {"inprocess": _iter_inprocess, "process": _iter_process, "ray": _iter_ray}
