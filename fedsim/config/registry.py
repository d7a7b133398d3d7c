"""Names of the pluggable parts the schema lets a scenario choose, each mapped to the
``"module:Class"`` that implements it (imported only when looked up, so the config layer
imports nothing above it).

Adding an aggregation mode is one new module (its :class:`fedsim.protocols.base.Loop`
subclass) plus its line here: the schema's ``protocol.fedmoe.aggregation`` accepts exactly
these names, and :func:`fedsim.protocols.base.loop_class` resolves them.
"""

from __future__ import annotations

__all__ = ["AGGREGATION_MODES"]

#: Aggregation mode name -> ``"module:Class"`` of its server loop: the one place a mode is
#: registered.
AGGREGATION_MODES: dict[str, str] = {
    "sync": "fedsim.protocols.base:SyncLoop",
    "async": "fedsim.protocols.fedbuff:AsyncLoop",
    "semi_async": "fedsim.protocols.fedbuff:SemiAsyncLoop",
}
