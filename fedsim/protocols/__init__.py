"""Protocols: the SimPy processes of servers and clients.

A protocol is a subclass of :class:`~fedsim.protocols.base.Protocol`, listed
once, by name, in :data:`REGISTRY` (imported only when it is looked up, so a
run of one protocol never imports another's dependencies).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedsim.protocols.base import ClientOutcome, Protocol, RoundState

if TYPE_CHECKING:
    from fedsim.parts.bundle import Parts

__all__ = ["Protocol", "ClientOutcome", "RoundState", "REGISTRY", "PROTOCOL_NAMES", "make_protocol", "protocol_class"]

#: Protocol name -> ``"module:Class"``: the one place a protocol is registered.
REGISTRY: dict[str, str] = {
    "fedmoe": "fedsim.protocols.fedmoe:FedMoE",
    "nmoe": "fedsim.protocols.nmoe:NMoE",
}

PROTOCOL_NAMES = tuple(REGISTRY)


def protocol_class(name: str) -> type[Protocol]:
    """The class of protocol ``name``.

    Raises:
        ValueError: ``name`` is not in :data:`REGISTRY`.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown protocol {name!r} (valid: {', '.join(PROTOCOL_NAMES)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_protocol(parts: Parts, progress: Callable[..., Any] | None = None) -> Protocol:
    """The protocol named by ``parts.protocol``, handed ``parts``.

    Raises:
        ValueError: the name is not a known protocol.
    """
    return protocol_class(parts.protocol)(parts, progress)
