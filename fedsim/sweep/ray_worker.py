"""The worker side of the ``ray`` backend: a warm actor that runs sweep runs on any node.

A :class:`SweepWorker` imports torch and fedsim once, works in a scratch
directory of its own on its node's disk (``$FEDSIM_SCRATCH``, default the
system temporary directory; its working directory too, so no relative path
can reach a disk shared with the driver by accident), keeps each shipped
input (data directory, traces) unpacked across runs, and runs one
:class:`RayJob` at a time. :meth:`SweepWorker.run` is a Ray streaming
generator: it yields a ``{"checkpoint": ...}`` message each time the run
commits a checkpoint (so the driver holds a resumable copy if this node dies)
and finally ``{"outcome": RunOutcome, "files": {path: bytes}}``, the whole run
directory, which the driver writes under the sweep's ``--out``. Nothing is
written outside the scratch directory.

This module imports Ray only inside the worker's methods.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import LoadedScenario
from fedsim.sweep.backends import Runner, RunOutcome, one_line, run_loaded
from fedsim.sweep.plan import RunTask
from fedsim.sweep.shipping import (
    CheckpointWatcher,
    check_local_paths,
    localise_paths,
    read_tree,
    unpack_path,
)

__all__ = ["RayJob", "SweepWorker", "SCRATCH_ENV"]

#: Environment variable naming the node-local directory workers write in (default: the system temp dir).
SCRATCH_ENV = "FEDSIM_SCRATCH"


@dataclass
class RayJob:
    """One run as shipped to a :class:`SweepWorker`.

    Attributes:
        task: the run (its ``out_dir`` is the driver's path: never written by the worker).
        loaded: the scenario the driver loaded and validated (the worker reads no scenario file).
        shipped: ``{ScenarioPaths field: (sha256, [object ref of the tar])}`` for inputs that
            travel (the ref wrapped in a list so Ray does not fetch it before the worker asks);
            empty when inputs are read on the node at their own paths.
        files: a run directory to resume (manifest, checkpoint header and log), or empty.
        runner: a custom runner, or None for :func:`fedsim.api.run`.
        needed: the input paths (``ScenarioPaths`` fields) the run reads, checked on the node.
    """

    task: RunTask
    loaded: LoadedScenario
    shipped: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    runner: Runner | None = None
    needed: tuple[str, ...] = ()


class SweepWorker:
    """A warm sweep worker (made a Ray actor by the driver: ``ray.remote(SweepWorker)``)."""

    def __init__(self) -> None:
        import ray

        if not ray.get_gpu_ids():  # a CPU worker: Ray leaves the GPUs visible; never use one given to another run
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import torch  # noqa: F401 - imported once here, not once per run

        import fedsim.api  # noqa: F401

        root = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="fedsim-worker-", dir=root))
        os.chdir(self.scratch)
        node_id = ray.get_runtime_context().get_node_id()
        self.node = f"{socket.gethostname()}/{node_id[:8]}"
        self.inputs: dict[str, Path] = {}  # sha256 -> unpacked copy, kept across runs

    def info(self) -> dict[str, str]:
        """Where this worker runs: ``node`` (host/node id), ``scratch``, ``cwd`` and the GPUs it may use
        (``CUDA_VISIBLE_DEVICES``)."""
        return {"node": self.node, "scratch": str(self.scratch), "cwd": os.getcwd(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")}

    def close(self) -> None:
        """Remove this worker's scratch directory (its unpacked inputs); the pool calls it before killing it."""
        os.chdir(self.scratch.parent)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _localise(self, job: RayJob) -> None:
        import ray

        local: dict[str, Path] = {}
        for key, (digest, holder) in job.shipped.items():
            if digest not in self.inputs:
                self.inputs[digest] = unpack_path(ray.get(holder[0]), digest, self.scratch / "inputs")
            local[key] = self.inputs[digest]
        localise_paths(job.loaded, local)
        check_local_paths(job.loaded, self.node, job.needed)

    def run(self, job: RayJob) -> Iterator[dict[str, Any]]:
        """Run ``job`` in this node's scratch directory, yielding checkpoints as they are committed,
        then the outcome and the run directory's files (see module docstring)."""
        t0 = time.perf_counter()
        run_dir = self.scratch / "runs" / f"{job.task.name}-{uuid.uuid4().hex[:8]}"
        try:
            self._localise(job)
            for name, data in job.files.items():
                p = run_dir / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        except Exception as exc:  # noqa: BLE001 - one failed run, reported in one line
            failed = RunOutcome(job.task.index, "failed", one_line(exc), time.perf_counter() - t0, os.getpid(), self.node)
            yield {"outcome": failed, "files": {}}
            return
        watcher = CheckpointWatcher(run_dir)
        q: queue.Queue[tuple[str, Any]] = queue.Queue()

        def progress(**_: Any) -> None:
            msg = watcher.poll()
            if msg is not None:
                q.put(("checkpoint", msg))

        def target() -> None:
            try:
                q.put(("done", run_loaded(job.task, job.loaded, run_dir, job.runner, progress=progress, t0=t0)))
            except BaseException as exc:  # noqa: BLE001 - SystemExit / KeyboardInterrupt inside the run
                q.put(("done", RunOutcome(job.task.index, "failed", one_line(exc), time.perf_counter() - t0, os.getpid())))

        threading.Thread(target=target, name=f"fedsim-run-{job.task.index}", daemon=True).start()
        while True:
            kind, payload = q.get()
            if kind == "done":
                break
            yield {"checkpoint": payload}
        payload.node = self.node
        files = read_tree(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        yield {"outcome": payload, "files": files}
