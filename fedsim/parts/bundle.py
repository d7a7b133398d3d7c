"""The bundle a protocol is handed: its parts, its own config section, the run settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from fedsim.engine import Simulation
    from fedsim.engine.checkpoint import Checkpointer
    from fedsim.parts.alignment import AlignmentServices
    from fedsim.parts.learning import Evaluator, Trainer

__all__ = ["RunSettings", "Checkpoints", "Parts"]


@dataclass(frozen=True)
class RunSettings:
    """The run-wide settings every protocol loop obeys.

    Attributes:
        rounds: federated rounds (fedmoe: aggregations; nmoe: training rounds per stage), >= 1.
        horizon_s: stop at this simulated time, s (None: no horizon).
        eval_every: evaluate every this many rounds (and at the last), >= 1.
    """

    rounds: int
    horizon_s: float | None = None
    eval_every: int = 1


class Checkpoints:
    """Round boundaries: the run's :class:`~fedsim.engine.checkpoint.Checkpointer`, once
    the run directory exists (:func:`fedsim.api.run` arms it), writes every
    ``output.checkpoint_every_rounds`` rounds; unarmed, a boundary does nothing."""

    def __init__(self) -> None:
        self.checkpointer: Checkpointer | None = None

    def arm(self, checkpointer: Checkpointer) -> None:
        """Write checkpoints with ``checkpointer`` from now on."""
        self.checkpointer = checkpointer

    def round_done(self, rounds_done: int, now_s: float, *, force: bool = False) -> None:
        """A round boundary at simulated time ``now_s`` (s)."""
        if self.checkpointer is not None:
            self.checkpointer.round_done(rounds_done, now_s, force=force)


@dataclass
class Parts:
    """Everything a protocol is handed, built once by :func:`fedsim.build.build_parts`.

    Attributes:
        protocol: the protocol's name (``protocol.name``).
        config: the protocol's own typed section (``protocol.<name>``).
        run: the :class:`RunSettings`.
        sim: the :class:`~fedsim.engine.Simulation` (env, recorder, rng streams).
        clients: sorted client ids.
        systems: :class:`~fedsim.parts.systems.Systems` (or a stand-in with its members).
        trainer / evaluator: :class:`~fedsim.parts.learning.Trainer` / ``Evaluator``.
        alignment: the :class:`~fedsim.parts.alignment.AlignmentServices` (fedmoe only; None otherwise).
        checkpoints: the round-boundary hook.
    """

    protocol: str
    config: Any
    run: RunSettings
    sim: Simulation
    clients: list[str]
    systems: Any
    trainer: Trainer
    evaluator: Evaluator
    alignment: AlignmentServices | None = None
    checkpoints: Checkpoints = field(default_factory=Checkpoints)

    def finish(self) -> None:
        """End of run: close the training executor, write the network's end-of-run tables."""
        self.trainer.close()
        self.systems.finish()

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every recorded table as a DataFrame."""
        return self.sim.rec.frames()
