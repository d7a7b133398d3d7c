"""The learning parts: the trainer (data, model, executor, device, replay seam) and the evaluator.

Real training and evaluation run at zero simulated time; every result goes through
the run's replay seam (:class:`fedsim.engine.checkpoint.Replay`), so a resumed run
answers from the log what the killed run computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fedsim.engine import Simulation
    from fedsim.engine.checkpoint import Replay
    from fedsim.learning.models import MoEConfig
    from fedsim.learning.training import TrainConfig

__all__ = ["Trainer", "Evaluator"]


class Trainer:
    """The clients' training data, the model, the executor and the replay seam.

    Args:
        sim: the run's Simulation (stream ``model/init``, ``train/{r}/{c}`` seeds).
        clients: sorted client ids; ``dataset``: the loaded dataset; ``splits``: client id -> split.
        model_config: the :class:`~fedsim.learning.models.MoEConfig`.
        train: the local-training settings (``train_shared`` is set per job).
        executor: ``() -> Executor`` (built at the first :meth:`train`, closed by :meth:`close`).
        replay: the replay seam.
        optimizer / momentum / batch_size: for the memory figures of :meth:`accounting`.
    """

    def __init__(
        self, sim: Simulation, clients: list[str], dataset: Any, splits: dict[str, Any],
        model_config: MoEConfig, train: TrainConfig, executor: Callable[[], Any], replay: Replay,
    ) -> None:
        self.sim, self.clients, self.dataset, self.splits = sim, clients, dataset, splits
        self.model_config, self.train_config = model_config, train
        self._make_executor, self._executor = executor, None
        self.replay = replay

    def num_samples(self, c: str) -> int:
        """Training samples held by client ``c``."""
        return int(len(self.splits[c].train_idx))

    def client_data(self, c: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``c``'s ``(x, y)`` training tensors, gathered per call (a city of clients
        keeps no copy per client)."""
        idx = self.splits[c].train_idx
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def new_model(self) -> Any:
        """A fresh MoE with the run's initial weights (stream ``model/init``)."""
        from fedsim.learning.training import build_model, init_state

        return build_model(self.model_config, init_state(self.model_config, self.sim.rng.seed_int("model/init")))

    def job(self, c: str, r: int, state: dict, experts: list[int], train_shared: bool, width: float | None = None) -> Any:
        """The training job of client ``c`` in round ``r`` (a pure function of its inputs).
        ``width``: an expert width ratio in (0, 1] (sub-networks, :mod:`fedsim.learning.subnet`):
        the job trains that sub-network of ``state``; None: the full model."""
        from fedsim.learning.training import TrainJob

        x, y = self.client_data(c)
        cfg = self.model_config
        if width is not None:
            from fedsim.learning.subnet import slice_state, width_config

            cfg = width_config(cfg, width)
            state = slice_state(state, cfg)
        return TrainJob(
            client_id=c, round=r, global_state=state, model_config=cfg, experts=list(experts), x=x, y=y,
            train=dataclasses.replace(self.train_config, train_shared=train_shared),
            seed=self.sim.rng.seed_int(f"train/{r}/{c}"),
        )

    def replayed(self, key: str, fn: Callable[[], Any]) -> Any:
        """The result of ``fn()`` (real learning work at zero simulated time), through the
        run's replay log: answered from the log while a resumed run replays, else
        computed and kept for the next checkpoint (:mod:`fedsim.engine.checkpoint`).
        ``key`` names the call (its position in the log is its identity; the key
        catches a diverged replay). ``fn`` must not draw from a shared RNG stream.

        Raises:
            CheckpointError: the replay diverged from the stored calls.
        """
        return self.replay.call(key, fn)

    def executor(self) -> Any:
        """The run's training executor (``training.executor``), built at its first use and
        closed by :meth:`close`; for callers that run jobs inside their own replay call."""
        if self._executor is None:
            self._executor = self._make_executor()
        return self._executor

    def train(self, jobs: list[Any], reduce: Callable[[list[Any]], Any] | None = None) -> Any:
        """Run training jobs with the executor through the replay seam (key: their round/client ids).

        Without ``reduce`` the updates themselves are logged (every client's
        weights); with it, ``reduce(updates)`` runs inside the seam and only its
        result is logged and returned: a pure fold such as FedAvg into one
        state, so that a checkpoint holds one model per round, not one per client.
        """
        key = "train/" + ",".join(f"{j.round}:{j.client_id}" for j in jobs)

        def run() -> list[Any]:
            return list(self.executor().run(jobs)) if jobs else []

        if reduce is None:
            return self.replayed(key, run)
        return self.replayed(key, lambda: reduce(run()))

    def accounting(self, model: Any) -> Any:
        """Bytes / FLOPs / memory figures of ``model`` for the training settings
        (:class:`~fedsim.parts.alignment.Accounting`)."""
        from fedsim.learning.accounting import (
            flops_per_sample,
            payload_bytes,
            training_memory_bytes,
        )
        from fedsim.parts.alignment import Accounting

        cfg, t = self.model_config, self.train_config
        shared = payload_bytes(model, [])
        per_e = payload_bytes(model, [0]) - shared
        f1 = flops_per_sample(model, cfg.input_shape, experts_active=1, train=True)
        f2 = flops_per_sample(model, cfg.input_shape, experts_active=2, train=True)
        f_exp = f2 - f1
        mem = [
            training_memory_bytes(model, t.batch_size, cfg.input_shape, t.optimizer, max(k, 1), momentum=t.momentum)
            for k in range(cfg.num_experts + 1)
        ]
        return Accounting(
            bytes_shared=shared, bytes_per_expert=per_e, flops_shared_per_sample=f1 - f_exp,
            flops_expert_per_sample=f_exp, mem_by_k=mem, epochs=t.local_epochs, top_k=cfg.top_k, num_experts=cfg.num_experts,
        )

    def width_accounting(self, ratio: float) -> Any:
        """:meth:`accounting` of the sub-network whose experts are ``ratio`` as wide
        (:func:`fedsim.learning.subnet.width_config`)."""
        from fedsim.learning.subnet import width_config
        from fedsim.learning.training import empty_model

        return self.accounting(empty_model(width_config(self.model_config, ratio)))

    def close(self) -> None:
        """Close the executor (worker processes), if one was built."""
        if self._executor is not None:
            self._executor.close()


class Evaluator:
    """The global test set and the metrics on it (through the trainer's replay seam).

    Args:
        trainer: the run's trainer (clients, data, splits, replay seam).
        x_test / y_test: ``(N, *input_shape)`` float / ``(N,)`` int global test set.
        test_groups: ``(N,)`` domain group of each test sample (``domain_skew``), else None.
        rec: the recorder (table ``personal``).
    """

    def __init__(self, trainer: Trainer, x_test: torch.Tensor, y_test: torch.Tensor, test_groups: np.ndarray | None, rec: Any) -> None:
        self.trainer, self.x_test, self.y_test, self.test_groups, self.rec = trainer, x_test, y_test, test_groups, rec

    def evaluate(self, model: Any, state: dict) -> dict[str, float]:
        """Accuracy, macro-F1 and macro AUC of ``state`` on the global test set."""
        from fedsim.learning.metrics import evaluate

        model.load_state_dict(state)
        return self.trainer.replayed("evaluate", lambda: evaluate(model, self.x_test, self.y_test))

    def evaluate_alignment(
        self, model: Any, state: dict, fitness: np.ndarray, k: int, trained: np.ndarray | None = None,
    ) -> dict[str, float]:
        """The paper's per-client inference with each client's best ``k`` experts by
        ``fitness`` (``(clients, E)``) among those it has ``trained`` (bool ``(clients, E)``;
        None: all) and test routing (see :mod:`fedsim.learning.routing`)."""
        from fedsim.learning.routing import alignment_metrics

        t = self.trainer
        model.load_state_dict(state)
        return t.replayed("evaluate_alignment", lambda: alignment_metrics(
            model, t.dataset.x_train, t.dataset.y_train, [t.splits[c] for c in t.clients],
            fitness, k, self.x_test, self.y_test, self.test_groups, trained,
        ))

    def personalised_accuracy(self, model: Any, state: dict) -> None:
        """Record each client's accuracy on its own test split (table ``personal``)."""
        from fedsim.learning.metrics import personalised_accuracy

        t = self.trainer
        model.load_state_dict(state)
        splits = [t.splits[c] for c in t.clients]
        acc = t.replayed("personalised", lambda: personalised_accuracy(model, t.dataset.x_train, t.dataset.y_train, splits))
        for c, a, sp in zip(t.clients, acc, splits):
            self.rec.row("personal", client=c, accuracy=float(a), num_test=int(len(sp.test_idx)), num_train=int(len(sp.train_idx)), group=int(sp.group))
