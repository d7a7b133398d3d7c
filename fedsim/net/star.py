"""A minimal star network: clients on one switch, FIFO uplinks / downlinks, fixed latency.

The stand-in for a built world's flow model (:mod:`fedsim.net.flows`) where a
caller has no topology: the NMoE protocol's unit-test worlds and the NMoE
table's serverless-inference latency columns (``bench/nmoe_table.py``). Every
client has an uplink and a downlink of fixed capacity ``rate_bps`` to a switch,
each a FIFO ``simpy.Resource`` of capacity 1 (one flow at a time, so queueing
is the contention), plus a fixed one-way latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import simpy

__all__ = ["StarNetwork", "TransferOutcome"]


@dataclass(frozen=True)
class TransferOutcome:
    """Result of a :class:`StarNetwork` transfer (same fields as the flow model's)."""

    nbytes: float
    delivered_bytes: float
    completed: bool
    start_s: float
    end_s: float


class StarNetwork:
    """Minimal network: clients on a switch, per-client uplink / downlink FIFO
    links of ``rate_bps`` and a one-way ``latency_s``. ``transfer(src, dst,
    nbytes)`` is a process: latency, then the sender's uplink, then the
    receiver's downlink (each held for ``8 * nbytes / rate_bps`` seconds).

    Raises:
        ValueError: ``rate_bps <= 0`` or ``latency_s < 0``.
    """

    def __init__(self, env: simpy.Environment, clients: Sequence[str], rate_bps: float = 10e6, latency_s: float = 0.005) -> None:
        if rate_bps <= 0 or latency_s < 0:
            raise ValueError('"rate_bps" must be > 0 and "latency_s" >= 0')
        self.env = env
        self.rate_bps = float(rate_bps)
        self.latency_s = float(latency_s)
        self.up = {c: simpy.Resource(env, capacity=1) for c in clients}
        self.down = {c: simpy.Resource(env, capacity=1) for c in clients}

    def transfer(self, src: str, dst: str, nbytes: float, round: int = -1, tag: str = "") -> simpy.Process:  # noqa: A002
        """Move ``nbytes`` from ``src`` to ``dst``; the process returns a :class:`TransferOutcome`."""
        return self.env.process(self._transfer(src, dst, float(nbytes)))

    def _transfer(self, src: str, dst: str, nbytes: float) -> Any:
        start = self.env.now
        yield self.env.timeout(self.latency_s)
        for link in (self.up[src], self.down[dst]):
            with link.request() as rq:
                yield rq
                yield self.env.timeout(8.0 * nbytes / self.rate_bps)
        return TransferOutcome(nbytes, nbytes, True, float(start), float(self.env.now))
