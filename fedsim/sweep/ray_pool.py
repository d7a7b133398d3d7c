"""The ``ray`` backend's driver side: a pool of warm actors on a cluster that shares no disk with the driver.

The driver (the ``fedsim sweep`` process) owns the sweep directory. Workers
(:class:`fedsim.sweep.ray_worker.SweepWorker` actors, one per CPU, or per GPU
for ``training.device: cuda`` runs) never see it:

- each run's scenario travels as the driver loaded it; its input files (data
  directory, traces, GraphML) are packed once per sweep into Ray's object
  store (``ray.put``) and unpacked once per worker, or, with
  ``ship_data=False``, read on the node at the same path (missing: a
  one-line error naming the node and the path);
- checkpoints stream back while a run goes on and the finished run directory
  comes back as bytes; the driver writes them under ``--out``, so the sweep
  index, resume and ``fedsim compare`` work as for the local backends;
- a run whose worker dies (its node lost, the actor killed) is retried on
  another worker from the last checkpoint the driver holds, at most
  :data:`MAX_RETRIES` times, then recorded ``failed``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import LoadedScenario, ScenarioError
from fedsim.sweep.backends import ExecOptions, Runner, RunOutcome, one_line
from fedsim.sweep.plan import RunTask, check_or_trash
from fedsim.sweep.shipping import (
    PATH_KEYS,
    apply_checkpoint,
    pack_path,
    resume_files,
    write_run_files,
)

__all__ = ["iter_ray", "resources_for", "MAX_RETRIES"]

#: Retries of a run whose worker died (so at most 1 + MAX_RETRIES attempts).
MAX_RETRIES = 2

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def resources_for(loaded: LoadedScenario) -> dict[str, float]:
    """Ray resources of one run's worker: ``{"num_cpus": 1, "num_gpus": 1}`` for
    ``training.device: cuda``, else ``{"num_cpus": 1, "num_gpus": 0}`` (``auto`` runs on the CPU:
    Ray hides the GPUs from an actor that did not request one)."""
    gpu = loaded.scenario.training.device == "cuda"
    return {"num_cpus": 1, "num_gpus": 1 if gpu else 0}


def _connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """``ray.init`` unless already initialised; True if this call started it."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, **kw)
    return True


def iter_ray(tasks: list[RunTask], runner: Runner | None, opts: ExecOptions) -> Iterator[RunOutcome]:
    """Run ``tasks`` on a pool of warm Ray actors; yield outcomes in completion order (files already
    written under each task's ``out_dir``).

    Raises:
        ScenarioError: Ray is not installed, or ``cuda`` runs on a cluster without GPUs.
    """
    try:
        import ray
    except ImportError:
        raise ScenarioError("the ray backend needs Ray: pip install 'fedsim[ray]'", file="--backend") from None
    started = _connect(ray, opts.ray_address, opts.workers)
    pool: _Pool | None = None
    try:
        pool = _Pool(ray, runner, opts, tasks)
        yield from pool.run(tasks)
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()


@dataclass
class _Running:
    actor: Any
    kind: str
    task: RunTask
    attempt: int


class _Pool:
    """Actors by resource kind (``cpu`` / ``gpu``), created on demand up to a cap and reused across runs."""

    def __init__(self, ray: Any, runner: Runner | None, opts: ExecOptions, tasks: list[RunTask]) -> None:
        from fedsim.sweep.ray_worker import SweepWorker

        self.ray, self.runner, self.opts = ray, runner, opts
        res = ray.cluster_resources()
        kinds = [self._kind(t) for t in tasks]
        cpus = opts.workers or max(1, int(res.get("CPU", 1)))
        gpus = int(res.get("GPU", 0))
        if "gpu" in kinds and gpus < 1:
            raise ScenarioError(
                "training.device cuda needs a GPU, and the Ray cluster has none (num_gpus=1 could never be scheduled)",
                file="--backend",
            )
        self.cap = {"cpu": min(cpus, kinds.count("cpu")), "gpu": min(opts.workers or gpus, gpus, kinds.count("gpu"))}
        self.cls = ray.remote(SweepWorker)
        self.idle: dict[str, list[Any]] = {"cpu": [], "gpu": []}
        self.alive: list[Any] = []
        self.count = {"cpu": 0, "gpu": 0}
        self.running: dict[Any, _Running] = {}
        self.shipped: dict[Path, tuple[str, list[Any]]] = {}
        self.serial = itertools.count()
        self.tag = uuid.uuid4().hex[:8]  # actor names are unique per pool (a killed actor's name lingers)

    def _kind(self, task: RunTask) -> str:
        return self._kind_of(self.opts.loaded[task.index])

    def _actor(self, kind: str) -> Any | None:
        if self.idle[kind]:
            return self.idle[kind].pop()
        if self.count[kind] >= self.cap[kind]:
            return None
        actor = self.cls.options(
            name=f"fedsim-sweep-{self.tag}-{next(self.serial)}",
            max_restarts=0,
            num_cpus=1,
            num_gpus=1 if kind == "gpu" else 0,
        ).remote()
        self.count[kind] += 1
        self.alive.append(actor)
        return actor

    @staticmethod
    def _kind_of(loaded: LoadedScenario) -> str:
        return "gpu" if resources_for(loaded)["num_gpus"] else "cpu"

    def _inputs(self, loaded: LoadedScenario) -> tuple[dict[str, tuple[str, list[Any]]], tuple[str, ...]]:
        """The shipped inputs of a run (packed and put once per path) and the fields it reads."""
        needed = tuple(f for f in PATH_KEYS if (p := getattr(loaded.paths, f)) is not None and Path(p).exists())
        if not self.opts.ship_data:
            return {}, needed
        shipped = {}
        for f in needed:
            p = Path(getattr(loaded.paths, f)).resolve()
            if p not in self.shipped:
                digest, blob = pack_path(p)
                self.shipped[p] = (digest, [self.ray.put(blob)])
            shipped[f] = self.shipped[p]
        return shipped, needed

    def _submit(self, task: RunTask, attempt: int) -> bool:
        from fedsim.sweep.ray_worker import RayJob

        kind = self._kind(task)
        actor = self._actor(kind)
        if actor is None:
            return False
        loaded = self.opts.loaded[task.index]
        shipped, needed = self._inputs(loaded)
        files = resume_files(Path(task.out_dir)) if task.resume else {}
        job = RayJob(task, loaded, shipped, files, self.runner, needed)
        self.running[actor.run.remote(job)] = _Running(actor, kind, task, attempt)
        return True

    def _dispatch(self, todo: deque[tuple[RunTask, int]]) -> None:
        for _ in range(len(todo)):
            task, attempt = todo.popleft()
            if not self._submit(task, attempt):
                todo.append((task, attempt))

    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        """Dispatch ``tasks``, stream their checkpoints to the driver's disk, retry runs whose worker died."""
        todo: deque[tuple[RunTask, int]] = deque((t, 0) for t in tasks)
        while todo or self.running:
            self._dispatch(todo)
            if not self.running:  # unreachable while every kind has a cap >= 1
                raise RuntimeError(f"no Ray worker can take the {len(todo)} remaining runs")
            ready, _ = self.ray.wait(list(self.running), num_returns=1)
            gen = ready[0]
            r = self.running[gen]
            try:
                msg = self.ray.get(next(gen))
            except StopIteration:
                msg = {"lost": "the worker's stream ended without a result"}
            except self.ray.exceptions.RayActorError as e:
                msg = {"lost": _ANSI.sub("", one_line(e))[:300]}
            except Exception as e:  # noqa: BLE001 - a bug in the worker is one failed run
                cause = getattr(e, "cause", None)
                msg = {"error": _ANSI.sub("", one_line(cause if isinstance(cause, BaseException) else e))[:500]}
            if "checkpoint" in msg:
                apply_checkpoint(Path(r.task.out_dir), msg["checkpoint"])
                continue
            del self.running[gen]
            if "lost" in msg:
                out = self._lost(r, msg["lost"], todo)
                if out is not None:
                    yield out
                continue
            self.idle[r.kind].append(r.actor)
            yield self._finish(r, msg)

    def _finish(self, r: _Running, msg: dict[str, Any]) -> RunOutcome:
        if "error" in msg:
            return RunOutcome(r.task.index, "failed", msg["error"], attempts=r.attempt + 1)
        out: RunOutcome = msg["outcome"]
        if msg["files"]:
            write_run_files(Path(r.task.out_dir), msg["files"])
        return dataclasses.replace(out, attempts=r.attempt + 1)

    def _lost(self, r: _Running, why: str, todo: deque[tuple[RunTask, int]]) -> RunOutcome | None:
        """A worker died mid-run: drop it, and retry the run from the driver's copy of its checkpoint."""
        self.count[r.kind] -= 1
        self.alive.remove(r.actor)
        self.ray.kill(r.actor, no_restart=True)
        if r.attempt >= MAX_RETRIES:
            return RunOutcome(
                r.task.index, "failed", f"worker lost {r.attempt + 1} times (node died?): {why}", attempts=r.attempt + 1
            )
        loaded = self.opts.loaded[r.task.index]
        state = check_or_trash(r.task, loaded, Path(r.task.out_dir).parent, resumable=self.runner is None)
        task = dataclasses.replace(r.task, resume=state == "resume")
        todo.appendleft((task, r.attempt + 1))
        return None

    def close(self) -> None:
        """Let idle actors remove their scratch directories, then kill every actor of the pool
        (runs in flight leave their driver-side checkpoint for a resume)."""
        idle = [a for kind in self.idle.values() for a in kind]
        if idle:
            refs = [a.close.remote() for a in idle]
            self.ray.wait(refs, num_returns=len(refs), timeout=30)
        for actor in self.alive:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.alive.clear()
        self.running.clear()
