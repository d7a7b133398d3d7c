"""The systems part: what the simulated clock charges (transfers, compute, memory, availability).

:class:`Systems` wraps the built network (:mod:`fedsim.net`) and the client devices
(:mod:`fedsim.devices`); :class:`StarSystems` is the stand-in for callers without a
topology (a :class:`~fedsim.net.star.StarNetwork` and a fixed compute speed). Both
have the same members, so a protocol never asks which one it was handed. Times are
simulated seconds, sizes bytes, compute FLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.alignment.capacity import CapacityEstimate
from fedsim.devices.causes import interrupt_status

if TYPE_CHECKING:
    import networkx as nx
    import simpy

    from fedsim.engine import Simulation

__all__ = ["Systems", "StarSystems", "ComputeDone"]


class Systems:
    """Transfers over the flow network, compute and memory on the devices, availability.

    Args:
        sim: the run's :class:`~fedsim.engine.Simulation`.
        graph: the topology; ``server``: the federated server's node id.
        clients: sorted client ids; ``network``: the :class:`~fedsim.net.network.Network`;
        devices: client id -> :class:`~fedsim.devices.device.Device` (with ``population``,
        its mapping that makes a device object on first request).
        population: the device columns (:class:`~fedsim.devices.population.DevicePopulation`)
            of a lazy run, where idle devices schedule no events; None: eager devices.
    """

    def __init__(self, sim: Simulation, graph: nx.Graph, server: str, clients: list[str], network: Any,
                 devices: Mapping[str, Any], population: Any = None) -> None:
        self.sim, self.graph, self.server, self.clients = sim, graph, server, clients
        self.network, self.devices, self.population = network, devices, population

    def is_online(self, c: str) -> bool:
        """Whether node ``c`` is online now (ground truth; a node without a device always is)."""
        if self.population is not None and c in self.population.index:  # from the columns: no device object
            return self.population.is_online(c)
        dev = self.devices.get(c)
        return True if dev is None else bool(dev.online)

    def device_class(self, c: str) -> str:
        """Device class of client ``c``."""
        return str(self.graph.nodes[c]["device_class"])

    def serving_bs(self, c: str) -> str:
        """Base station currently serving client ``c``."""
        return self.network.serving_bs(c)

    def speed_flops(self, c: str) -> float:
        """Effective compute speed of node ``c`` now, FLOP/s (1 GFLOP/s for a node without a device)."""
        dev = self.devices.get(c)
        return 1e9 if dev is None else float(dev.speed_flops())

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        """Start a transfer of ``nbytes``; the client end's device watches it (dropout,
        link-failure hazard). The process returns a result with ``delivered_bytes``,
        ``completed`` and ``cause`` (an interrupt cause when not completed)."""
        proc = self.network.transfer(src, dst, nbytes, round=r, tag=tag)
        for end in (src, dst):
            dev = self.devices.get(end)
            if dev is not None:
                dev.watch(proc, hazard=True)
        return proc

    def compute(self, c: str, flops: float, r: int, memory_bytes: float, tag: str = "train") -> simpy.Process:
        """Start a compute job of ``flops`` FLOPs needing ``memory_bytes`` on client ``c``;
        the process returns a result with ``completed`` and ``cause``."""
        return self.devices[c].compute(flops, memory_bytes=memory_bytes, round=r, tag=tag)

    @staticmethod
    def cause_status(cause: Any) -> str:
        """Client status for an interrupt cause (``cause.status``: ``oom``, ``dropout`` or ``straggler``)."""
        return interrupt_status(cause)

    def true_capacity(self, c: str) -> CapacityEstimate:
        """Ground-truth capacity of ``c`` (what a device would self-report, before noise)."""
        if self.population is not None:  # from the columns: no device object needed
            flops, mem = self.population.capacity(c)
        else:
            dev = self.devices[c]
            flops, mem = dev.base_flops_per_s * (1.0 - dev.params.background_load_mean), dev.memory_available_bytes()
        return CapacityEstimate(
            flops_per_s=flops, memory_bytes=mem,
            up_bps=max(self.network.nominal_rate_bps(c, "up"), 1.0),
            down_bps=max(self.network.nominal_rate_bps(c, "down"), 1.0),
            latency_s=self.network.path_latency_s(c, self.server),
        )

    def finish(self) -> None:
        """Write the network's end-of-run tables (edges with bytes carried)."""
        self.network.finish()


@dataclass(frozen=True)
class ComputeDone:
    """Result of a :class:`StarSystems` compute job (same fields as a device's)."""

    completed: bool
    delivered_bytes: float = 0.0
    cause: Any = None


class StarSystems:
    """The systems stand-in without a topology: a :class:`~fedsim.net.star.StarNetwork`
    over ``nodes`` (FIFO up / down links of ``rate_bps``), a fixed ``flops_per_s`` per
    node, everybody always online, no memory limit."""

    def __init__(self, env: simpy.Environment, nodes: Sequence[str], server: str = "server", rate_bps: float = 10e6, flops_per_s: float = 1e9) -> None:
        from fedsim.net.star import StarNetwork

        self.env, self.server = env, server
        self.clients = sorted(set(nodes) - {server})
        self.graph = None
        self.devices: dict[str, Any] = {}
        self.population = None  # no device columns
        self.flops_per_s = float(flops_per_s)
        self.network = StarNetwork(env, sorted({*nodes, server}), rate_bps=rate_bps)

    def is_online(self, c: str) -> bool:
        """Always online."""
        return True

    def device_class(self, c: str) -> str:
        """``"star"`` for every node."""
        return "star"

    def serving_bs(self, c: str) -> str:
        """``""``: there are no base stations."""
        return ""

    def speed_flops(self, c: str) -> float:
        """The fixed speed, FLOP/s."""
        return self.flops_per_s

    def transfer(self, src: str, dst: str, nbytes: float, r: int, tag: str) -> simpy.Process:
        """A :class:`~fedsim.net.star.StarNetwork` transfer."""
        return self.network.transfer(src, dst, nbytes, r, tag)

    def compute(self, c: str, flops: float, r: int, memory_bytes: float, tag: str = "train") -> simpy.Process:
        """``flops / flops_per_s`` seconds; always completes."""
        return self.env.process(self._compute(flops))

    def _compute(self, flops: float) -> Any:
        yield self.env.timeout(flops / self.flops_per_s)
        return ComputeDone(True)

    @staticmethod
    def cause_status(cause: Any) -> str:
        """Client status for an interrupt cause (as :meth:`Systems.cause_status`)."""
        return interrupt_status(cause)

    def finish(self) -> None:
        """Nothing to write."""
