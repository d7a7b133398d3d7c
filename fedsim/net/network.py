"""The Network facade: links from the graph, channels, fading, mobility, routing, transfers.

Build one per run: ``net = Network(sim, graph, NetworkParams(), server="cloud",
classes=default_device_classes())``. It creates one directed :class:`Link`
per wired edge direction and an uplink and a downlink cell per base station,
starts the fading, mobility and link-sampling processes, and writes the
``nodes`` table at once (call :meth:`Network.finish` at the end of the run
for the ``edges`` table with the bytes each link carried).

Channel model per client ``i`` and BS ``j`` (all vectorised over clients):
mean received power ``P_j - PL_ij - S_ij`` (dBm) with TR 38.901 (or free
space / log-distance) path loss, LOS drawn per pair from the LOS
probability (a fixed uniform per pair, compared with the probability at the
current distance) and log-normal shadowing ``S_ij`` (Gudmundson AR(1) in
the distance moved). The serving BS is the best mean received power, with
handover hysteresis. The serving link adds block fading (redrawn every
``coherence_s``); the SINR (noise -174 dBm/Hz + NF over the cell
bandwidth, interference margin, optional downlink inter-cell interference)
gives the spectral efficiency ``min(log2(1+SINR), cap)``, or 0 below the
outage threshold. A flow's usage coefficient on its cell is ``1 / SE``
(``inf`` in outage: the flow stalls).

Cost: every mobility update re-evaluates path loss and shadowing of the
moved clients against every BS (exact; vectorised in cache-sized blocks).
``ChannelParams.nearest_bs = k`` is a documented approximation for large
deployments (off by default): only the ``k`` nearest BSs and the serving
one are re-evaluated, the others can neither serve nor interfere.

Records: ``nodes`` (once), ``edges`` (at :meth:`finish`), ``links``
(utilisation samples, only of links carrying traffic at the sample
instant: a missing row means idle), events ``transfer`` (every completed or
interrupted transfer) and ``handover``. Fading blocks are counted
(:attr:`Network.fading_blocks`), not logged.

Random streams: ``"channel/shadowing"``, ``"channel/los"``,
``"channel/fading"``, ``"mobility"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import networkx as nx
import numpy as np
import simpy

from fedsim.engine.simulation import Simulation
from fedsim.net import channel as ch
from fedsim.net.flows import Flow, FlowSystem, Link, TransferResult
from fedsim.net.mobility import Mobility
from fedsim.net.params import NetworkParams
from fedsim.net.topology import BS_KINDS

__all__ = ["Network", "MobilitySpec"]


class MobilitySpec(Protocol):
    """What the network reads from a device class (``DeviceClassParams`` fits)."""

    mobility: str
    speed_min_mps: float
    speed_max_mps: float
    altitude_min_m: float
    altitude_max_m: float
    tx_power_dbm: float


#: client-BS pairs per block of the vectorised path-loss update (cache sized)
_BLOCK_PAIRS = 16384
#: grid cell of the nearest-BS tables (``ChannelParams.nearest_bs``), m
_NEAR_CELL_M = 25.0



class _Active:
    """An active transfer's flow and endpoints (for re-rating and rerouting)."""

    __slots__ = ("flow", "src", "dst")

    def __init__(self, flow: Flow, src: str, dst: str) -> None:
        self.flow = flow
        self.src = src
        self.dst = dst


class Network:
    """Links, channels and transfers of one run (see the module docstring)."""

    def __init__(self, sim: Simulation, graph: nx.Graph, params: NetworkParams | None = None,
                 server: str = "cloud", classes: Mapping[str, MobilitySpec] | None = None) -> None:
        self.sim = sim
        self.env = sim.env
        self.graph = graph
        self.params = params or NetworkParams()
        self.cp = self.params.channel
        if server not in graph:
            raise ValueError(f"unknown server node {server!r}")
        self.server = server
        self.fs = FlowSystem(self.env, defer=True)
        self.fading_blocks = 0
        self.handovers = 0
        self.mobility_steps = 0
        nodes = graph.nodes

        # wired links, both directions, and the routing graph
        self._wired = nx.Graph()
        self._wired.add_nodes_from(sorted(n for n, d in graph.nodes(data=True)
                                          if d.get("kind") != "client"))
        self._wlink: dict[tuple[str, str], Link] = {}
        for u, v in sorted(tuple(sorted((str(a), str(b)))) for a, b in graph.edges()):
            d = graph.edges[u, v]
            if d.get("kind", "wired") != "wired":
                continue
            self._wired.add_edge(u, v, latency_s=float(d["latency_s"]))
            for a, b in ((u, v), (v, u)):
                self._wlink[(a, b)] = self.fs.add_link(f"{a}->{b}", "wired", a,
                                                       float(d["capacity_bps"]),
                                                       float(d["latency_s"]))
        self._paths: dict[str, dict[str, list[str]]] = {}

        # base stations and cells
        self.bs_ids = sorted(n for n, d in graph.nodes(data=True) if d.get("kind") in BS_KINDS)
        if not self.bs_ids:
            raise ValueError("the topology has no base station")
        self._bs_index = {b: j for j, b in enumerate(self.bs_ids)}
        self.up: list[Link] = []
        self.down: list[Link] = []
        # per-cell bandwidth: the node's own, else the channel's value for its kind
        self.bw_up_hz = np.array([self._cell_bw(b, "up") for b in self.bs_ids])
        self.bw_down_hz = np.array([self._cell_bw(b, "down") for b in self.bs_ids])
        for j, b in enumerate(self.bs_ids):
            self.up.append(self.fs.add_link(f"{b}/up", "uplink", b, float(self.bw_up_hz[j])))
            self.down.append(self.fs.add_link(f"{b}/down", "downlink", b, float(self.bw_down_hz[j])))
        for lk in self.up + self.down:  # SE <= cap, so a cell carries <= B x cap bit/s
            lk.min_coeff = 1.0 / self.cp.max_spectral_efficiency_bps_hz
        # a BS without a positive ``z`` gets the channel's default antenna height
        self.bs_pos = np.array([[nodes[b]["x"], nodes[b]["y"], float(nodes[b].get("z", 0.0)) or (
            self.cp.bs_height_macro_m if nodes[b]["kind"] == "bs_macro" else self.cp.bs_height_small_m)]
            for b in self.bs_ids], dtype=float)
        self.bs_power_dbm = np.array([
            float(nodes[b].get("tx_power_dbm", self.cp.bs_tx_power_macro_dbm
                               if nodes[b]["kind"] == "bs_macro" else self.cp.bs_tx_power_small_dbm))
            for b in self.bs_ids])

        # clients
        self.client_ids = sorted(n for n, d in graph.nodes(data=True) if d.get("kind") == "client")
        self._ci = {c: i for i, c in enumerate(self.client_ids)}
        n = len(self.client_ids)
        self.pos = np.array([[nodes[c]["x"], nodes[c]["y"], nodes[c]["z"]] for c in self.client_ids],
                            dtype=float).reshape(n, 3)
        specs = [classes.get(nodes[c].get("device_class", "")) if classes else None
                 for c in self.client_ids]
        self.ue_power_dbm = np.array([
            float(nodes[c].get("tx_power_dbm", s.tx_power_dbm if s is not None
                               else self.params.ue_tx_power_dbm))
            for c, s in zip(self.client_ids, specs)])

        self._active: dict[int, list[_Active]] = {}
        # noise over each cell's bandwidth (dBm, per BS)
        self.noise_up_dbm = np.array([ch.noise_power_dbm(float(b), self.cp.noise_figure_db)
                                      for b in self.bw_up_hz])
        self.noise_down_dbm = np.array([ch.noise_power_dbm(float(b), self.cp.noise_figure_db)
                                        for b in self.bw_down_hz])
        # cell selection metric = received power + offset: downlink power, or the uplink
        # SNR (UE power - path loss - the cell's uplink noise, same UE power for every cell)
        self.attach_offset_db = (np.zeros(len(self.bs_ids)) if self.cp.attachment == "downlink"
                                 else -self.bs_power_dbm - self.noise_up_dbm)
        self._init_population(specs)
        self._record_nodes()
        if self.params.link_sample_interval_s > 0:
            self.env.process(self._sample_loop())

    def _cell_bw(self, bs: str, direction: str) -> float:
        """Bandwidth (Hz) of ``bs``'s uplink / downlink: the node's ``bandwidth_up_hz`` /
        ``bandwidth_down_hz`` if set, else the channel's value for the BS kind."""
        d = self.graph.nodes[bs]
        own = d.get(f"bandwidth_{direction}_hz")
        if own is not None:
            return float(own)
        cp = self.cp
        small = cp.small_bandwidth_up_hz if direction == "up" else cp.small_bandwidth_down_hz
        if d.get("kind") == "bs_small" and small is not None:
            return float(small)
        return float(cp.bandwidth_up_hz if direction == "up" else cp.bandwidth_down_hz)

    # -- population (eager: every client's channel and position kept up to date) --
    def _bbox(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the area (m)."""
        g = self.graph
        area = g.graph.get("area_m")
        if area:
            return (0.0, 0.0, float(area[0]), float(area[1]))
        xs = [d["x"] for _, d in g.nodes(data=True)]
        ys = [d["y"] for _, d in g.nodes(data=True)]
        return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))

    def _init_population(self, specs: list[Any]) -> None:
        """Channel state, mobility and their periodic processes, for every client."""
        n = len(self.client_ids)
        sim = self.sim
        # channel state
        self._channel = ch.channel_model(self.cp.model)  # the one look-up of the path-loss model
        rng_s = sim.rng.numpy("channel/shadowing")
        rng_l = sim.rng.numpy("channel/los")
        self._fad_rng = sim.rng.numpy("channel/fading")
        m = len(self.bs_ids)
        self._shadow_z = rng_s.standard_normal((n, m))
        self._los_u = rng_l.random((n, m))
        self._shadow_rng = rng_s
        self.loss_db = np.zeros((n, m))
        self.rsrp_dbm = np.zeros((n, m))
        self._update_loss(np.arange(n))
        self.serving = (np.argmax(self.rsrp_dbm + self.attach_offset_db, axis=1) if n
                        else np.zeros(0, dtype=np.int64))
        self.fading = np.ones(n)
        if self.cp.fading != "none":
            self.fading = self._draw_fading(n)
        self.se_up = np.zeros(n)
        self.se_down = np.zeros(n)
        self._update_se(np.arange(n))
        self._ho_time = np.zeros(n)
        self._ho_cand = np.full(n, -1, dtype=np.int64)

        # mobility
        bbox = self._bbox()
        graph = self.graph
        self.mobility = Mobility(
            self.pos,
            [s.mobility if s is not None else "static" for s in specs],
            [(s.speed_min_mps, s.speed_max_mps) if s is not None else (0.0, 0.0) for s in specs],
            [(s.altitude_min_m, s.altitude_max_m) if s is not None else (1.5, 1.5) for s in specs],
            graph.graph.get("streets"), bbox, sim.rng.numpy("mobility"))

        # approximation: only the nearest BSs are re-evaluated after a move
        k = int(self.cp.nearest_bs)
        self._near_k = k if 0 < k < m else 0
        if self._near_k:
            self._init_nearest(bbox)

        if self.cp.fading != "none" and n:
            self.env.process(self._fading_loop())
        if self.mobility.mobile.size:
            self.env.process(self._mobility_loop())

    # -- channel -------------------------------------------------------------
    def _init_nearest(self, bbox: tuple[float, float, float, float]) -> None:
        """Grid of the ``k + 1`` nearest BSs per cell (``nearest_bs`` approximation)."""
        m = len(self.bs_ids)
        kk = min(self._near_k + 1, m)
        x0, y0, x1, y1 = bbox
        x0 = min(x0, float(self.pos[:, 0].min(initial=x0)))
        y0 = min(y0, float(self.pos[:, 1].min(initial=y0)))
        x1 = max(x1, float(self.pos[:, 0].max(initial=x1)))
        y1 = max(y1, float(self.pos[:, 1].max(initial=y1)))
        g = max(_NEAR_CELL_M, (x1 - x0) / 1024.0, (y1 - y0) / 1024.0)
        nx_ = max(1, math.ceil((x1 - x0) / g))
        ny_ = max(1, math.ceil((y1 - y0) / g))
        cx = x0 + (np.arange(nx_) + 0.5) * g
        cy = y0 + (np.arange(ny_) + 0.5) * g
        gx, gy = np.meshgrid(cx, cy, indexing="ij")
        d = np.hypot(gx.reshape(-1, 1) - self.bs_pos[None, :, 0],
                     gy.reshape(-1, 1) - self.bs_pos[None, :, 1])
        order = np.argsort(d, axis=1, kind="stable")[:, :kk]
        self._near_grid = (x0, y0, g, nx_, ny_, order)
        self._odo = np.zeros(len(self.client_ids))
        self._z_odo = np.zeros((len(self.client_ids), m))

    def _nearest_cols(self, rows: np.ndarray) -> np.ndarray:
        """The ``k`` nearest BSs of ``rows`` plus the serving one: (rows, k + 1) indices."""
        x0, y0, g, nx_, ny_, order = self._near_grid
        p = self.pos[rows]
        ix = np.clip(((p[:, 0] - x0) / g).astype(np.int64), 0, nx_ - 1)
        iy = np.clip(((p[:, 1] - y0) / g).astype(np.int64), 0, ny_ - 1)
        cols = order[ix * ny_ + iy].copy()
        k = self._near_k
        s = self.serving[rows]
        if cols.shape[1] > k:  # the (k+1)-th nearest gives way to the serving BS
            has = (cols[:, :k] == s[:, None]).any(axis=1)
            cols[~has, k] = s[~has]
        return cols

    def _update_loss_pairs(self, rows: np.ndarray, cols: np.ndarray, flat: np.ndarray,
                           z: np.ndarray) -> np.ndarray:
        """Path loss + shadowing of the pairs (rows[i], cols[i, c]) (``flat``: their
        indices into the raveled (clients, BSs) arrays); returns their RSRP."""
        cp = self.cp
        p = self.pos[rows]
        pz = p[:, 2:3]
        h_ut = np.minimum(pz, cp.max_ue_height_m)
        bs = self.bs_pos[cols]
        dx = p[:, 0:1] - bs[..., 0]
        dy = p[:, 1:2] - bs[..., 1]
        d2 = np.sqrt(dx * dx + dy * dy)
        h_bs = bs[..., 2]
        model = self._channel
        std_los, std_nlos = self._shadowing_std_db()
        geom = ch.LinkGeometry(d2, h_bs, h_ut, pz)
        if model.los_probability is not None:
            u = self._los_u.reshape(-1)[flat]
            los = u < model.los_probability(d2, pz if model.aerial else h_ut)
            pl = model.path_loss(geom, los, cp.fc_ghz, cp)
            std = np.where(los, std_los, std_nlos)
        else:
            pl = model.path_loss(geom, True, cp.fc_ghz, cp)
            std = std_los
        loss = pl + std * z
        rsrp = self.bs_power_dbm[cols] - loss
        self.loss_db[rows] = math.inf  # BSs out of reach: no service, no interference
        self.rsrp_dbm[rows] = -math.inf
        self.loss_db.reshape(-1)[flat] = loss
        self.rsrp_dbm.reshape(-1)[flat] = rsrp
        return rsrp

    def _shadowing_std_db(self) -> tuple[float, float]:
        """Shadowing std (dB) of LOS and NLOS pairs: ``channel.shadowing_std_db`` or the model's default."""
        if self.cp.shadowing_std_db is not None:
            return self.cp.shadowing_std_db, self.cp.shadowing_std_db
        return self._channel.shadowing_std_db

    def _draw_fading(self, size: int) -> np.ndarray:
        if self.cp.fading == "rayleigh":
            return ch.rayleigh_power(self._fad_rng, size)
        return ch.rician_power(self._fad_rng, self.cp.rician_k_db, size)

    def _update_loss(self, rows: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """Recompute path loss + shadowing and mean received power for ``rows``.

        ``z`` is ``self._shadow_z[rows]`` when the caller has it at hand. Works
        on blocks of base stations (a few tens of thousands of pairs, cache
        sized) with the same per-element arithmetic as the channel functions
        applied one BS at a time, so the results are bitwise those of the
        per-BS formulas. Returns the received powers of ``rows`` (dBm).
        """
        m = len(self.bs_ids)
        if rows.size == 0:
            return np.zeros((0, m))
        cp = self.cp
        if z is None:
            z = self._shadow_z[rows]
        model = self._channel
        u = self._los_u[rows] if model.los_probability is not None else None
        p = self.pos[rows]
        px = np.ascontiguousarray(p[:, 0])
        py = np.ascontiguousarray(p[:, 1])
        pz = np.ascontiguousarray(p[:, 2])
        h_ut = np.minimum(pz, cp.max_ue_height_m)
        std_los, std_nlos = self._shadowing_std_db()
        # blocks of BSs x clients, clients contiguous (the arrays are transposed)
        loss = np.empty((m, rows.size))
        zt = z.T
        ut = u.T if u is not None else None
        block = max(1, min(m, _BLOCK_PAIRS // max(rows.size, 1)))
        for j0 in range(0, m, block):
            j1 = min(m, j0 + block)
            bx = self.bs_pos[j0:j1, 0:1]
            by = self.bs_pos[j0:j1, 1:2]
            h_bs = self.bs_pos[j0:j1, 2:3]
            dx = px - bx
            dy = py - by
            d2 = np.sqrt(dx * dx + dy * dy)
            geom = ch.LinkGeometry(d2, h_bs, h_ut, pz)
            if ut is not None:
                los = ut[j0:j1] < model.los_probability(d2, pz if model.aerial else h_ut)
                pl = model.path_loss(geom, los, cp.fc_ghz, cp)
                std = np.where(los, std_los, std_nlos)
            else:
                pl = model.path_loss(geom, True, cp.fc_ghz, cp)
                std = std_los
            loss[j0:j1] = pl + std * zt[j0:j1]
        loss = loss.T
        rsrp = self.bs_power_dbm[None, :] - loss
        self.loss_db[rows] = loss
        self.rsrp_dbm[rows] = rsrp
        return rsrp

    def _update_se(self, rows: np.ndarray) -> None:
        """Recompute the spectral efficiencies (up, down) of ``rows`` with the current fading."""
        if rows.size == 0:
            return
        s = self.serving[rows]
        loss = self.loss_db[rows, s]
        fad_db = ch.linear_to_db(np.maximum(self.fading[rows], 1e-30))
        margin = self.cp.interference_margin_db
        up_db = self.ue_power_dbm[rows] - loss + fad_db - self.noise_up_dbm[s] - margin
        rx_down = self.bs_power_dbm[s] - loss + fad_db
        if self.cp.interference_load_factor > 0 and len(self.bs_ids) > 1:
            mw = ch.db_to_linear(self.rsrp_dbm[rows])
            interf = self.cp.interference_load_factor * (mw.sum(axis=1) - mw[np.arange(rows.size), s])
            down_lin = ch.db_to_linear(rx_down) / (
                ch.db_to_linear(self.noise_down_dbm[s] + margin) + interf)
            down_db = ch.linear_to_db(down_lin)
        else:
            down_db = rx_down - self.noise_down_dbm[s] - margin
        self.se_up[rows] = self._se(up_db)
        self.se_down[rows] = self._se(down_db)

    def _se(self, sinr_db: np.ndarray) -> np.ndarray:
        se = np.minimum(ch.spectral_efficiency(ch.db_to_linear(sinr_db)),
                        self.cp.max_spectral_efficiency_bps_hz)
        return np.where(sinr_db >= self.cp.outage_sinr_db, se, 0.0)

    # -- routing -------------------------------------------------------------
    def _wired_path(self, a: str, b: str) -> list[str]:
        if a == b:
            return [a]
        paths = self._paths.get(a)
        if paths is None:
            paths = nx.single_source_dijkstra_path(self._wired, a, weight="latency_s")
            self._paths[a] = paths
        try:
            return paths[b]
        except KeyError:
            raise ValueError(f"no wired route from {a!r} to {b!r}") from None

    def _route(self, src: str, dst: str) -> tuple[list[Link], list[float], tuple[str, ...], float]:
        """Links, coefficients, node names and latency (s) of the path src -> dst."""
        links: list[Link] = []
        coeffs: list[float] = []
        lat = 0.0
        si, di = self._ci.get(src), self._ci.get(dst)
        a = self.bs_ids[self.serving[si]] if si is not None else src
        b = self.bs_ids[self.serving[di]] if di is not None else dst
        if si is not None:
            links.append(self.up[self.serving[si]])
            se = self.se_up[si]
            coeffs.append(1.0 / se if se > 0 else math.inf)
            lat += self.cp.access_latency_s
        wp = self._wired_path(a, b)
        for u, v in zip(wp, wp[1:]):
            lk = self._wlink[(u, v)]
            links.append(lk)
            coeffs.append(1.0)
            lat += lk.latency_s
        if di is not None:
            links.append(self.down[self.serving[di]])
            se = self.se_down[di]
            coeffs.append(1.0 / se if se > 0 else math.inf)
            lat += self.cp.access_latency_s
        names = tuple(([src] if si is not None else []) + wp + ([dst] if di is not None else []))
        return links, coeffs, names, lat

    # -- public queries ------------------------------------------------------
    def serving_bs(self, client: str) -> str:
        """The base station currently serving ``client``."""
        return self.bs_ids[self.serving[self._index(client)]]

    def position(self, node: str) -> tuple[float, float, float]:
        """Current (x, y, z) of ``node`` in metres."""
        i = self._ci.get(node)
        if i is not None:
            return (float(self.pos[i, 0]), float(self.pos[i, 1]), float(self.pos[i, 2]))
        d = self.graph.nodes[node]
        return (d["x"], d["y"], d["z"])

    def spectral_efficiency(self, client: str, direction: str) -> float:
        """Current spectral efficiency (bit/s/Hz, with fading) of ``client``; 0 in outage."""
        i = self._index(client)
        return float(self.se_up[i] if self._dir(direction) == "up" else self.se_down[i])

    def nominal_rate_bps(self, client: str, direction: str) -> float:
        """Rate ``client`` would get alone in its cell with the mean channel (no fast
        fading), capped by the narrowest wired link towards the server: what a
        device would self-report (bit/s). 0 when the mean channel is in outage."""
        i = self._index(client)
        up = self._dir(direction) == "up"
        s = self.serving[i]
        loss = self.loss_db[i, s]
        if up:
            sinr_db = self.ue_power_dbm[i] - loss - self.noise_up_dbm[s] - self.cp.interference_margin_db
            bw = self.bw_up_hz[s]
        else:
            sinr_db = (self.bs_power_dbm[s] - loss - self.noise_down_dbm[s]
                       - self.cp.interference_margin_db)
            bw = self.bw_down_hz[s]
        rate = bw * float(self._se(np.array([sinr_db]))[0])
        bs = self.bs_ids[s]
        wp = self._wired_path(bs, self.server) if up else self._wired_path(self.server, bs)
        for u, v in zip(wp, wp[1:]):
            rate = min(rate, self._wlink[(u, v)].capacity)
        return rate

    def path_latency_s(self, src: str, dst: str) -> float:
        """One-way latency of the current path src -> dst (s), without queueing."""
        return self._route(src, dst)[3]

    def _index(self, client: str) -> int:
        try:
            return self._ci[client]
        except KeyError:
            raise ValueError(f"{client!r} is not a client") from None

    @staticmethod
    def _dir(direction: str) -> str:
        if direction not in ("up", "down"):
            raise ValueError(f'"direction" must be "up" or "down", got {direction!r}')
        return direction

    # -- transfers -----------------------------------------------------------
    def transfer(self, src: str, dst: str, nbytes: float, *, round: int = -1, tag: str = ""
                 ) -> simpy.Process:
        """Move ``nbytes`` from ``src`` to ``dst``; the process returns a :class:`TransferResult`.

        The path latency elapses first, then the flow shares its links max-min
        fairly (re-rated on fading, mobility and handover; stalled in outage).
        ``proc.interrupt(cause)`` ends it early: the process then *returns* a
        result with ``completed=False`` and ``cause``. Each transfer is
        recorded as a ``transfer`` event.

        Raises:
            ValueError: an unknown node, or ``nbytes < 0``.
        """
        for nd in (src, dst):
            if nd not in self.graph:
                raise ValueError(f"unknown node {nd!r}")
        if nbytes < 0:
            raise ValueError('"nbytes" must be >= 0')
        return self.env.process(self._transfer(src, dst, float(nbytes), int(round), tag))

    def _transfer(self, src: str, dst: str, nbytes: float, rnd: int, tag: str) -> Any:
        env = self.env
        start = env.now
        flow: Flow | None = None
        act: _Active | None = None
        names: tuple[str, ...] = (src, dst)
        cause: Any = None
        completed = False
        try:
            _, _, names, lat = self._route(src, dst)
            if lat > 0:
                yield env.timeout(lat)
            links, coeffs, names, _ = self._route(src, dst)
            flow = self.fs.start(links, coeffs, nbytes)
            if flow.active:
                act = _Active(flow, src, dst)
                for nd in (src, dst):
                    i = self._ci.get(nd)
                    if i is not None:
                        self._active.setdefault(i, []).append(act)
                        self._on_active(i)
            yield flow.done
            completed = True
        except simpy.Interrupt as intr:
            cause = intr.cause
            if flow is not None:
                self.fs.stop(flow)
                completed = flow.done_bits >= flow.size_bits
        finally:
            if act is not None:
                for nd in (src, dst):
                    i = self._ci.get(nd)
                    if i is not None:
                        lst = self._active.get(i)
                        if lst is not None:
                            lst.remove(act)
                            if not lst:
                                del self._active[i]
        delivered = nbytes if completed else (flow.done_bits / 8.0 if flow is not None else 0.0)
        res = TransferResult(nbytes, delivered, completed, start, env.now, names,
                             None if completed else cause)
        dur = res.seconds
        self.sim.rec.event(env.now, "transfer", node=src, round=rnd, bytes=delivered, seconds=dur,
                           dst=dst, tag=tag, completed=completed,
                           mean_rate_bps=delivered * 8.0 / dur if dur > 0 else math.nan,
                           cause=None if completed else type(cause).__name__)
        return res

    def _on_active(self, i: int) -> None:
        """Hook: client row ``i`` has a new active transfer (the lazy population tracks it)."""

    def _refresh(self, rows: Any) -> None:
        """Push the current spectral efficiencies of ``rows`` into their active flows."""
        if not self._active:
            return
        fs = self.fs
        with fs.batch():
            for i in rows:
                acts = self._active.get(int(i))
                if not acts:
                    continue
                c = self.client_ids[int(i)]
                for a in acts:
                    f = a.flow
                    if a.src == c:
                        se = self.se_up[i]
                        fs.set_coeff(f, 0, 1.0 / se if se > 0 else math.inf)
                    if a.dst == c:
                        se = self.se_down[i]
                        fs.set_coeff(f, len(f.path) - 1, 1.0 / se if se > 0 else math.inf)

    # -- processes -----------------------------------------------------------
    def _fading_loop(self) -> Any:
        n = len(self.client_ids)
        all_rows = np.arange(n)
        while True:
            yield self.env.timeout(self.cp.coherence_s)
            self.fading = self._draw_fading(n)
            self.fading_blocks += 1
            self._update_se(all_rows)
            if self._active:
                self._refresh(sorted(self._active))

    def _mobility_loop(self) -> Any:
        dt = self.params.mobility_interval_s
        while True:
            yield self.env.timeout(dt)
            self.mobility_steps += 1
            rows, dist = self.mobility.step(dt)
            self._after_move(rows, dist, dt)

    def move_client(self, client: str, x: float, y: float, z: float) -> None:
        """Teleport ``client`` now and re-evaluate its channel (counts as one
        mobility update of ``mobility_interval_s`` for time-to-trigger)."""
        i = self._index(client)
        old = self.pos[i].copy()
        self.pos[i] = (x, y, z)
        self.mobility.target[i] = self.pos[i]
        dist = np.array([float(np.linalg.norm(self.pos[i] - old))])
        self._after_move(np.array([i]), dist, self.params.mobility_interval_s)

    def _after_move(self, rows: np.ndarray, dist: np.ndarray, dt: float) -> None:
        """Shadowing, path loss, handover (hysteresis + time-to-trigger), rates of moved rows."""
        if rows.size == 0:
            return
        hyst = self.cp.handover_hysteresis_db
        ttt = max(self.cp.handover_time_to_trigger_s, dt)
        cur = self.serving[rows]
        k = np.arange(rows.size)
        if self._near_k:
            cols = self._nearest_cols(rows)
            self._odo[rows] += dist
            odo = self._odo[rows][:, None]
            flat = rows[:, None] * len(self.bs_ids) + cols  # pair indices into (n, m) arrays
            z_odo = self._z_odo.reshape(-1)
            shadow = self._shadow_z.reshape(-1)
            rho = np.exp(-(odo - z_odo[flat]) / self.cp.shadowing_decorrelation_m)
            z = self._shadow_rng.standard_normal(cols.shape)
            zr = rho * shadow[flat] + np.sqrt(1.0 - rho * rho) * z
            shadow[flat] = zr
            z_odo[flat] = np.broadcast_to(odo, flat.shape)
            rc = self._update_loss_pairs(rows, cols, flat, zr) + self.attach_offset_db[cols]
            bc = np.argmax(rc, axis=1)
            best = cols[k, bc]
            rs_best = rc[k, bc]
            rs_cur = rc[k, np.argmax(cols == cur[:, None], axis=1)]
        else:
            rho = np.exp(-dist / self.cp.shadowing_decorrelation_m)[:, None]
            z = self._shadow_rng.standard_normal((rows.size, len(self.bs_ids)))
            z *= np.sqrt(1.0 - rho * rho)
            zr = rho * self._shadow_z[rows]
            zr += z
            self._shadow_z[rows] = zr
            rs = self._update_loss(rows, zr) + self.attach_offset_db
            best = np.argmax(rs, axis=1)
            rs_best = rs[k, best]
            rs_cur = rs[k, cur]
        cond = rs_best > rs_cur + hyst
        same = cond & (self._ho_cand[rows] == best)
        self._ho_time[rows] = np.where(same, self._ho_time[rows] + dt, np.where(cond, dt, 0.0))
        self._ho_cand[rows] = np.where(cond, best, -1)
        ho = cond & (self._ho_time[rows] >= ttt - 1e-9)
        ho_rows = rows[ho]
        self._ho_time[ho_rows] = 0.0
        self._ho_cand[ho_rows] = -1
        for i, new in zip(ho_rows.tolist(), best[ho].tolist()):
            old = int(self.serving[i])
            self.serving[i] = new
            self.handovers += 1
            self.sim.rec.event(self.env.now, "handover", node=self.client_ids[i],
                               src_bs=self.bs_ids[old], dst_bs=self.bs_ids[new])
        self._update_se(rows)
        if self._active:
            with self.fs.batch():
                for i in ho_rows.tolist():
                    for a in self._active.get(i, ()):
                        links, coeffs, _, _ = self._route(a.src, a.dst)
                        self.fs.reroute(a.flow, links, coeffs)
                self._refresh([i for i in rows.tolist() if i in self._active])

    def _sample_loop(self) -> Any:
        """Every ``link_sample_interval_s``, one row per link that carried traffic in the
        interval: its *mean* load (bit/s) and utilisation over the interval, from the
        exact time integrals kept by the flow system (short bursts between two
        samples are not missed). Idle links write no row."""
        dt = self.params.link_sample_interval_s
        rec = self.sim.rec
        fs = self.fs
        last: dict[Link, tuple[float, float]] = {}
        while True:
            yield self.env.timeout(dt)
            now = self.env.now
            links = {lk: None for lk in fs.take_touched()}
            links.update({lk: None for lk in fs.busy})
            for lk in sorted(links, key=lambda k: k.name):
                fs.mark(lk)
                u0, b0 = last.get(lk, (0.0, 0.0))
                du, db = lk.usage_s - u0, lk.load_bits - b0
                last[lk] = (lk.usage_s, lk.load_bits)
                if du <= 0.0 and db <= 0.0:
                    continue
                util = du / (lk.capacity * dt) if lk.capacity > 0 else 0.0
                load = db / dt
                cap = lk.capacity if lk.kind == "wired" else (load / util if util > 0 else math.nan)
                rec.row("links", t_s=now, link=lk.name, kind=lk.kind, node=lk.node,
                        capacity_bps=cap, load_bps=load, utilisation=util, flows=len(lk.flows))

    # -- records -------------------------------------------------------------
    def _record_nodes(self) -> None:
        rec = self.sim.rec
        for nd in sorted(self.graph.nodes):
            d = self.graph.nodes[nd]
            rec.row("nodes", node=nd, kind=d["kind"], device_class=d.get("device_class"),
                    x=float(d["x"]), y=float(d["y"]), z=float(d["z"]))

    def finish(self) -> None:
        """Write the ``edges`` table: every link with the bytes it carried.

        Wired links appear once per direction (src -> dst); a cell appears as
        src = dst = its BS with kind ``uplink`` / ``downlink`` and its
        bandwidth in ``capacity_hz`` (``capacity_bps`` is NaN: it depends on
        the clients' channels).
        """
        rec = self.sim.rec
        for (u, v), lk in self._wlink.items():
            rec.row("edges", src=u, dst=v, kind="wired", capacity_bps=lk.capacity,
                    capacity_hz=math.nan, bytes_carried=lk.bytes_carried)
        for j, b in enumerate(self.bs_ids):
            for lk in (self.up[j], self.down[j]):
                rec.row("edges", src=b, dst=b, kind=lk.kind, capacity_bps=math.nan,
                        capacity_hz=lk.capacity, bytes_carried=lk.bytes_carried)

    def stats(self) -> dict[str, int]:
        """Counters: fading blocks, handovers, mobility steps, flows, recomputations."""
        return {"fading_blocks": self.fading_blocks, "handovers": self.handovers,
                "mobility_steps": self.mobility_steps, "flows": self.fs.flows_started,
                "recomputations": self.fs.recomputations}
