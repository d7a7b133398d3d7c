"""Training executors: run a batch of pure :class:`TrainJob` s, return their updates.

Every executor gives the same updates (within float tolerance) as
:class:`SequentialExecutor`, the reference, and returns them in job order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from fedsim.learning.training import TrainJob, Update, train_local

__all__ = ["Executor", "SequentialExecutor"]


class Executor(ABC):
    """Runs training jobs. ``run`` returns one update per job, in job order."""

    @abstractmethod
    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        """Execute ``jobs`` and return their updates in the same order."""


class SequentialExecutor(Executor):
    """The reference executor: ``train_local`` on each job, one after another,
    in the calling process."""

    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        return [train_local(job) for job in jobs]
