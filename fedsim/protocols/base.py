"""The protocol template: a protocol runs a scenario's processes on a built world."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.build import World

__all__ = ["Protocol"]


class Protocol(ABC):
    """Base of ``fedmoe`` and ``nmoe``.

    A protocol owns the SimPy processes of the server and the clients; it
    records into ``world.sim.rec`` and reports progress through the
    optional callback (keyword fields ``round``, ``rounds``, ``t_s``,
    ``accuracy``, ``bytes``).
    """

    name: str = ""

    def __init__(self, world: World, progress: Callable[..., Any] | None = None) -> None:
        self.world = world
        self.sim = world.sim
        self.env = world.sim.env
        self.rec = world.sim.rec
        self._progress = progress

    def progress(self, **fields: Any) -> None:
        """Report progress to the callback, if any."""
        if self._progress is not None:
            self._progress(**fields)

    @abstractmethod
    def run(self) -> None:
        """Run the whole simulation; results are left in ``world.sim.rec``."""
