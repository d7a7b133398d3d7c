"""The process-parallel training executor, for models too large to batch.

``ParallelExecutor(workers=N)`` starts N worker processes (``spawn``: no fork of
a process whose torch runtime is already initialised) on its first call and
keeps them until :meth:`close`. Each worker holds a
:class:`~fedsim.learning.executors.SequentialExecutor` (one reused model per
configuration) and the training data of every client it has been sent, so a
round ships only the round's global weights (once per worker) and each job's
few scalars; a client's data travels once, the first time a worker trains it
(and again only if the job's data tensor is a different object).

Jobs are placed on the least loaded worker (load = training samples of the call),
keeping a client on the worker that already holds its data unless that would
unbalance the call by more than the job's own size. Each job is a pure function
of its inputs, so the updates equal the sequential executor's whatever the
placement. Messages are pickled with the standard pickler (tensors by value),
not through shared-memory file descriptors.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fedsim.learning.executors import Executor, SequentialExecutor
from fedsim.learning.training import TrainJob, Update, job_experts

__all__ = ["ParallelExecutor"]


def _worker_main(conn: Any, torch_threads: int) -> None:
    """Worker loop: receive ``(states, specs)``, train, send the updates back."""
    import torch

    from fedsim.learning.threads import set_torch_threads

    set_torch_threads(torch_threads)  # for the worker's lifetime
    executor = SequentialExecutor()
    data: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
    while True:
        try:
            raw = conn.recv_bytes()
        except EOFError:
            return
        msg = pickle.loads(raw)
        if msg is None:
            return
        states, specs = msg
        try:
            jobs = []
            for job, key, xy in specs:
                if xy is not None:
                    data[key] = xy
                x, y = data[key]
                jobs.append(replace(job, global_state=states[job.global_state], x=x, y=y))
            reply: tuple[str, Any] = ("ok", executor.run(jobs))
        except Exception:  # noqa: BLE001 - sent to the parent, which raises it
            reply = ("error", traceback.format_exc())
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def _shutdown(procs: list[Any], conns: list[Any]) -> None:
    for c in conns:
        try:
            c.send_bytes(pickle.dumps(None))
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for c in conns:
        c.close()


class ParallelExecutor(Executor):
    """Jobs spread over ``workers`` long-lived processes (see module docstring).

    ``torch_threads``: torch intra-op threads in each worker.

    Raises:
        ValueError: ``workers`` or ``torch_threads`` < 1.
        RuntimeError (from ``run``): a job failed in a worker (the worker's traceback
            is the message) or a worker died.
    """

    def __init__(self, workers: int = 2, torch_threads: int = 1) -> None:
        if workers < 1 or torch_threads < 1:
            raise ValueError('"workers" and "torch_threads" must be >= 1')
        self.workers = int(workers)
        self.torch_threads = int(torch_threads)
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._sent: list[dict[Any, tuple[Any, Any]]] = []  # per worker: data key -> (x, y) it holds
        self._home: dict[Any, int] = {}
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        for _ in range(self.workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, self.torch_threads), daemon=True)
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
            self._sent.append({})
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)

    def _place(self, jobs: Sequence[TrainJob]) -> list[int]:
        """Worker of each job: least loaded, unless the client's home is close enough."""
        load = [0] * self.workers
        where = [0] * len(jobs)
        for i in sorted(range(len(jobs)), key=lambda i: -int(jobs[i].y.shape[0])):
            size = int(jobs[i].y.shape[0])
            best = min(range(self.workers), key=lambda w: (load[w], w))
            home = self._home.get(jobs[i].client_id)
            w = home if home is not None and load[home] - load[best] <= size else best
            self._home.setdefault(jobs[i].client_id, w)
            where[i] = w
            load[w] += size
        return where

    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        if not jobs:
            return []
        for job in jobs:
            job_experts(job)  # bad jobs fail here with the sequential executor's ValueError
        if not self._procs:
            self._start()
        where = self._place(jobs)
        tokens: dict[int, int] = {}
        for job in jobs:
            tokens.setdefault(id(job.global_state), len(tokens))
        per_worker: list[list[int]] = [[] for _ in range(self.workers)]
        for i, w in enumerate(where):
            per_worker[w].append(i)
        for w, idx in enumerate(per_worker):
            if not idx:
                continue
            states: dict[int, Any] = {}
            specs = []
            for i in idx:
                job = jobs[i]
                tok = tokens[id(job.global_state)]
                states.setdefault(tok, job.global_state)
                key = job.client_id
                held = self._sent[w].get(key)
                fresh = held is None or held[0] is not job.x or held[1] is not job.y
                if fresh:
                    self._sent[w][key] = (job.x, job.y)
                light = replace(job, global_state=tok, x=None, y=None)
                specs.append((light, key, (job.x, job.y) if fresh else None))
            self._conns[w].send_bytes(pickle.dumps((states, specs), protocol=pickle.HIGHEST_PROTOCOL))
        out: list[Update | None] = [None] * len(jobs)
        errors = []
        for w, idx in enumerate(per_worker):
            if not idx:
                continue
            try:
                status, payload = pickle.loads(self._conns[w].recv_bytes())
            except EOFError:
                status, payload = "error", f"worker {w} died"
            if status != "ok":
                errors.append(payload)
                self._sent[w].clear()
                continue
            for i, u in zip(idx, payload):
                out[i] = u
        if errors:
            raise RuntimeError("training failed in a worker:\n" + errors[0])
        return [u for u in out if u is not None]

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._procs, self._conns, self._sent, self._finalizer = [], [], [], None
