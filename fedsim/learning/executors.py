"""Training executors: run a batch of pure :class:`TrainJob` s, return their updates.

Every executor gives the same updates (within float tolerance) as
:class:`SequentialExecutor`, the reference, and returns them in job order:

- ``sequential``: :func:`train_local` on each job in turn, in this process,
  reusing one model per (architecture, device) instead of building one per job;
- ``batched``: :class:`fedsim.learning.batched.BatchedExecutor`, the jobs of a
  round that share a model shape trained together with ``torch.func`` (``vmap``
  over clients);
- ``parallel``: :class:`fedsim.learning.parallel.ParallelExecutor`, jobs spread
  over worker processes that keep their model and the clients' data between rounds.

Executors that hold resources (worker processes) release them in ``close``;
every executor is a context manager. They are built by name with
:func:`fedsim.learning.executor_registry.make_executor` (the registry imports
them; they never import it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.learning.models import MoEClassifier, MoEConfig
    from fedsim.learning.training import TrainJob, Update

__all__ = ["Executor", "SequentialExecutor", "resolve_device"]


class Executor(ABC):
    """Runs training jobs. ``run`` returns one update per job, in job order."""

    @abstractmethod
    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        """Execute ``jobs`` and return their updates in the same order."""

    def close(self) -> None:  # noqa: B027 - optional hook, most executors hold nothing
        """Release what the executor holds (worker processes); idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SequentialExecutor(Executor):
    """The reference executor: :func:`train_local` on each job, one after another,
    in the calling process, with one reused model per (configuration, device)."""

    def __init__(self) -> None:
        self._models: dict[tuple[MoEConfig, str], MoEClassifier] = {}

    def model_for(self, cfg: MoEConfig, device: str) -> MoEClassifier:
        """The reused model of ``cfg`` on ``device`` (weights are whatever the last job left)."""
        from fedsim.learning.training import empty_model

        key = (cfg, str(device))
        model = self._models.get(key)
        if model is None:
            model = empty_model(cfg).to(device)
            self._models[key] = model
        return model

    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        from fedsim.learning.training import train_local

        return [train_local(job, self.model_for(job.model_config, job.train.device)) for job in jobs]


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA device is present, else ``"cpu"``;
    ``"cpu"`` / ``"cuda"`` unchanged.

    Raises:
        ValueError: ``"cuda"`` asked for where torch sees no CUDA device, or an unknown name.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError('"cuda" asked for, but torch sees no CUDA device (use "auto" or "cpu")')
    if device not in ("cpu", "cuda"):
        raise ValueError(f'device must be "auto", "cpu" or "cuda", got {device!r}')
    return device
