"""Network layer: topology, wireless channel, flow-level transfers, mobility."""

from fedsim.net.flows import FlowSystem, Link, TransferResult
from fedsim.net.network import Network
from fedsim.net.params import ChannelParams, NetworkParams
from fedsim.net.topology import explicit, from_graphml, manhattan_grid, unreachable_clients

__all__ = [
    "ChannelParams",
    "FlowSystem",
    "Link",
    "Network",
    "NetworkParams",
    "TransferResult",
    "explicit",
    "from_graphml",
    "manhattan_grid",
    "unreachable_clients",
]
