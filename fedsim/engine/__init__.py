"""Simulation engine: the SimPy environment, the recorder and the RNG streams."""

from fedsim.engine.recorder import EVENT_COLUMNS, Recorder
from fedsim.engine.simulation import Simulation

__all__ = ["EVENT_COLUMNS", "Recorder", "Simulation"]
