"""The trainer and evaluator parts: every result through the replay seam, the executor built once, lazily."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from fedsim.engine import Simulation
from fedsim.learning.training import TrainConfig
from fedsim.parts.learning import Evaluator, Trainer


class _Seam:
    """Replay stand-in: logs each call's key, then runs it."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def call(self, key: str, fn: Any) -> Any:
        self.keys.append(key)
        return fn()


class _Executor:
    built = 0

    def __init__(self) -> None:
        _Executor.built += 1
        self.closed = False

    def run(self, jobs: list[Any]) -> list[str]:
        return [f"u-{j.client_id}" for j in jobs]

    def close(self) -> None:
        self.closed = True


def _trainer() -> tuple[Trainer, _Seam]:
    seam = _Seam()
    _Executor.built = 0
    t = Trainer(Simulation(0), ["a", "b"], None, {}, None, TrainConfig(), _Executor, seam)  # type: ignore[arg-type]
    return t, seam


def test_trainer_runs_jobs_through_the_seam_and_builds_its_executor_once() -> None:
    t, seam = _trainer()
    assert t.train([]) == [] and _Executor.built == 0  # nothing to train: no executor
    jobs = [SimpleNamespace(round=3, client_id="a"), SimpleNamespace(round=3, client_id="b")]
    assert t.train(jobs) == ["u-a", "u-b"]
    assert t.train(jobs, reduce=lambda us: "+".join(us)) == "u-a+u-b"  # the fold runs inside the seam
    assert seam.keys == ["train/", "train/3:a,3:b", "train/3:a,3:b"] and _Executor.built == 1
    ex = t._executor
    t.close()
    assert ex is not None and ex.closed


def test_evaluator_goes_through_the_seam() -> None:
    t, seam = _trainer()
    m = torch.nn.Linear(2, 3)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    out = Evaluator(t, x, y, None, None).evaluate(m, m.state_dict())
    assert seam.keys == ["evaluate"] and 0.0 <= out["accuracy"] <= 1.0
