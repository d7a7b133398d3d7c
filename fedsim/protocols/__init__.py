"""Protocols: the SimPy processes of servers and clients (fedmoe, nmoe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedsim.protocols.base import Protocol

if TYPE_CHECKING:
    from fedsim.build import World

__all__ = ["Protocol", "make_protocol", "PROTOCOL_NAMES"]

PROTOCOL_NAMES = ("fedmoe", "nmoe")


def make_protocol(world: World, progress: Callable[..., Any] | None = None) -> Protocol:
    """The protocol named by ``world.scenario.protocol.name``."""
    name = world.scenario.protocol.name
    if name == "fedmoe":
        from fedsim.protocols.fedmoe import FedMoE

        return FedMoE(world, progress)
    if name == "nmoe":
        from fedsim.protocols.nmoe import NMoE

        return NMoE(world, progress)
    raise ValueError(f"unknown protocol {name!r} (valid: {', '.join(PROTOCOL_NAMES)})")
