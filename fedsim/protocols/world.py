"""The world as a protocol sees it: the members protocols actually use.

:class:`fedsim.build.World` implements it; a test double (or a lighter world)
only needs these members. Times are simulated seconds, sizes bytes, compute
FLOPs. Nothing here is called at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import simpy
    import torch

    from fedsim.engine import Simulation

__all__ = ["ProtocolWorld"]


@runtime_checkable
class ProtocolWorld(Protocol):
    """Interface of the world handed to a protocol.

    Attributes:
        scenario: the validated scenario (``fedsim.config.schema.Scenario``).
        sim: the :class:`~fedsim.engine.Simulation` (``env``, ``rec``, ``rng``).
        clients: sorted client node ids.
        server: the federated server's node id.
        dataset / splits / model_config / x_test / y_test: the data (``nmoe`` trains
            on them directly): the loaded dataset, client id -> split, the
            :class:`~fedsim.learning.models.MoEConfig`, the global test set
            (``x_test``: ``(N, *input_shape)`` float, ``y_test``: ``(N,)`` int).
        devices: client id -> :class:`~fedsim.devices.Device` (``speed_flops()`` FLOP/s).
    """

    scenario: Any
    sim: Simulation
    clients: list[str]
    server: str
    dataset: Any
    splits: dict[str, Any]
    model_config: Any
    x_test: torch.Tensor
    y_test: torch.Tensor
    devices: dict[str, Any]

    # -- state of the clients (ground truth, now)
    def is_online(self, c: str) -> bool:
        """Whether client ``c`` is online now."""
        ...

    def num_samples(self, c: str) -> int:
        """Training samples held by client ``c``."""
        ...

    def serving_bs(self, c: str) -> str:
        """Base station serving client ``c`` now."""
        ...

    def device_class(self, c: str) -> str:
        """Device class of client ``c``."""
        ...

    # -- systems (SimPy processes)
    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        """Start a transfer of ``nbytes``; the process returns a result with
        ``delivered_bytes``, ``completed`` and ``cause`` (an interrupt cause when not completed)."""
        ...

    def compute(self, c: str, flops: float, r: int, memory_bytes: float) -> simpy.Process:
        """Start a compute job on ``c``; the process returns a result with ``completed`` and ``cause``."""
        ...

    def cause_status(self, cause: Any) -> str:
        """Client status of an interrupt cause (``cause.status``, see :mod:`fedsim.devices.causes`)."""
        ...

    # -- learning (zero simulated time)
    def new_model(self) -> Any:
        """A fresh model with the run's initial weights."""
        ...

    def accounting(self, model: Any) -> Any:
        """Bytes / FLOPs / memory of ``model`` (:class:`fedsim.build.Accounting`)."""
        ...

    def new_executor(self) -> Any:
        """The training executor of ``training.executor`` (``run(jobs) -> updates``); ``finish`` closes it."""
        ...

    def train_job(self, c: str, r: int, state: dict, experts: list[int], train_shared: bool) -> Any:
        """The training job of client ``c`` in round ``r``."""
        ...

    def evaluate(self, model: Any, state: dict) -> dict[str, float]:
        """``accuracy``, ``f1``, ``auc`` of ``state`` on the global test set."""
        ...

    def personalised_accuracy(self, model: Any, state: dict) -> None:
        """Record each client's accuracy on its own test split (table ``personal``)."""
        ...

    # -- alignment
    def new_alignment_state(self) -> Any:
        """Fresh client-expert alignment state."""
        ...

    def new_capacity_estimator(self) -> Any:
        """The server's capacity estimator, primed with the clients' self-reports."""
        ...

    # -- end of run
    def finish(self) -> None:
        """Write end-of-run tables (edges with bytes carried)."""
        ...
