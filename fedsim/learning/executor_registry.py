"""Training executors by name: the one place they are listed (``training.executor``).

Adding an executor: a subclass of :class:`fedsim.learning.executors.Executor` in
its own module, and one line in :data:`EXECUTORS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsim.learning.executors import Executor

__all__ = ["EXECUTORS", "make_executor"]

#: Executor name -> ``"module:Class"`` (imported only when built).
EXECUTORS: dict[str, str] = {
    "sequential": "fedsim.learning.executors:SequentialExecutor",
    "batched": "fedsim.learning.batched:BatchedExecutor",
    "parallel": "fedsim.learning.parallel:ParallelExecutor",
}

#: Executors that run worker processes (they take ``workers`` and ``torch_threads``).
_PROCESS_POOLS = ("parallel",)


def make_executor(name: str, *, workers: int = 2, torch_threads: int = 1, **options: Any) -> Executor:
    """The executor called ``name`` (a key of :data:`EXECUTORS`).

    ``workers`` / ``torch_threads`` are used by ``parallel`` (processes, and torch
    threads in each); ``options`` go to the executor's constructor.

    Raises:
        ValueError: an unknown executor name.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    module, cls_name = EXECUTORS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if name in _PROCESS_POOLS:
        return cls(workers=workers, torch_threads=torch_threads, **options)
    return cls(**options)
