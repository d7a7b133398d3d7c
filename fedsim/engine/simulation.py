"""The Simulation: owner of the SimPy environment, the recorder and the RNG streams."""

from __future__ import annotations

import simpy

from fedsim.engine.recorder import Recorder
from fedsim.rng import RngStreams

__all__ = ["Simulation"]


class Simulation:
    """Shared context handed to every component of a run.

    Attributes:
        env: the SimPy environment; ``env.now`` is simulated time in seconds.
        rec: the run's :class:`Recorder`.
        rng: the run's :class:`RngStreams` under the root seed.
    """

    def __init__(self, seed: int) -> None:
        self.env = simpy.Environment()
        self.rec = Recorder()
        self.rng = RngStreams(seed)
        self.seed = int(seed)

    @property
    def now(self) -> float:
        """Current simulated time in seconds."""
        return float(self.env.now)
