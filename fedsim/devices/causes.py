"""Interrupt causes, together, each carrying the client status it leads to.

A SimPy process (a transfer, a compute job, a client's round) that is
interrupted receives one of these as ``Interrupt.cause``; a protocol turns it
into the client's round status with :func:`interrupt_status` (``cause.status``),
never with an ``isinstance`` ladder. Adding a cause is one class here with a
``status`` class attribute (and, if the status is new, a column counting it in
``fedsim/engine/tables.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Cause", "Deadline", "Dropout", "OutOfMemory", "RunEnd", "interrupt_status", "UNKNOWN_CAUSE_STATUS"]

#: Status of a client round ended by a cause that is none of the classes here.
UNKNOWN_CAUSE_STATUS = "straggler"


class Cause:
    """Base of every interrupt cause: ``status`` is the client status it leads to."""

    status: ClassVar[str] = UNKNOWN_CAUSE_STATUS


@dataclass(frozen=True)
class Deadline(Cause):
    """The round ended before the client finished (a straggler)."""

    status: ClassVar[str] = "straggler"

    def __repr__(self) -> str:
        return "Deadline()"


@dataclass(frozen=True)
class Dropout(Cause):
    """The device went away: ``reason`` is ``"offline"`` (availability) or
    ``"link_failure"`` (transfer hazard)."""

    status: ClassVar[str] = "dropout"

    node: str
    t_s: float
    reason: str = "offline"


@dataclass(frozen=True)
class OutOfMemory(Cause):
    """A job did not fit (at start) or stopped fitting (pressure rise, ``oom_mode="kill"``)."""

    status: ClassVar[str] = "oom"

    node: str
    t_s: float
    needed_bytes: float
    available_bytes: float


@dataclass(frozen=True)
class RunEnd(Cause):
    """The run stopped while the client was still working (asynchronous modes): its
    ``clients`` row keeps the bytes its phase had moved."""

    status: ClassVar[str] = "in_flight"

    def __repr__(self) -> str:
        return "RunEnd()"


def interrupt_status(cause: Any) -> str:
    """Client status for an interrupt cause: ``cause.status`` (``oom``, ``dropout``,
    ``straggler``), :data:`UNKNOWN_CAUSE_STATUS` for anything else (``None`` included)."""
    return cause.status if isinstance(cause, Cause) else UNKNOWN_CAUSE_STATUS
