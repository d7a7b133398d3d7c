"""Interrupt causes a protocol can ``isinstance``-check on results."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Dropout", "OutOfMemory"]


@dataclass(frozen=True)
class Dropout:
    """The device went away: ``reason`` is ``"offline"`` (availability) or
    ``"link_failure"`` (transfer hazard)."""

    node: str
    t_s: float
    reason: str = "offline"


@dataclass(frozen=True)
class OutOfMemory:
    """A job did not fit (at start) or stopped fitting (pressure rise, ``oom_mode="kill"``)."""

    node: str
    t_s: float
    needed_bytes: float
    available_bytes: float
