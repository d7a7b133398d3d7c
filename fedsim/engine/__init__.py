"""Simulation engine: the SimPy environment, the recorder, the RNG streams and live metric sinks (:mod:`fedsim.engine.sinks`)."""

from fedsim.engine.recorder import EVENT_COLUMNS, Recorder
from fedsim.engine.simulation import Simulation

__all__ = ["EVENT_COLUMNS", "Recorder", "Simulation"]
