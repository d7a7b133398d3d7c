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
(one row per sampling interval for every link that has carried traffic so
far, idle intervals as zeros, the last partial interval written by
:meth:`finish`; the ``bytes`` column sums to the link's ``bytes_carried``), events ``transfer`` (every completed or
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

from fedsim.engine.clock import delay_to
from fedsim.engine.simulation import Simulation
from fedsim.net import channel as ch
from fedsim.net import radio
from fedsim.net.channel_state import ChannelStateMixin
from fedsim.net.flows import Flow, FlowSystem, Link, TransferResult
from fedsim.net.mobility import Mobility
from fedsim.net.params import NetworkParams

__all__ = ["Network", "MobilitySpec"]


class MobilitySpec(Protocol):
    """What the network reads from a device class (``DeviceClassParams`` fits)."""

    mobility: str
    speed_min_mps: float
    speed_max_mps: float
    altitude_min_m: float
    altitude_max_m: float
    tx_power_dbm: float





class _Active:
    """An active transfer's flow and endpoints (for re-rating and rerouting)."""

    __slots__ = ("flow", "src", "dst")

    def __init__(self, flow: Flow, src: str, dst: str) -> None:
        self.flow = flow
        self.src = src
        self.dst = dst


class Network(ChannelStateMixin):
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
        self._init_wired()
        self._init_cells()
        specs = self._init_clients(classes)
        self._active: dict[int, list[_Active]] = {}
        self._caps: dict[int, tuple[Link, Link]] = {}  # per-client access rate caps
        self._init_population(specs)
        self._record_nodes()
        self._sample_t = 0.0
        self._sample_last: dict[Link, tuple[float, float]] = {}
        if self.params.link_sample_interval_s > 0:
            self.env.process(self._sample_loop())

    def _init_wired(self) -> None:
        """Wired links, both directions, and the routing graph."""
        graph = self.graph
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

    def _init_cells(self) -> None:
        """Base stations and their cells (:func:`fedsim.net.radio.cells_of`): up / down links,
        bandwidths, positions, powers, noise and cell-selection offsets."""
        self.cells = cells = radio.cells_of(self.graph, self.cp)
        self.bs_ids = cells.ids
        self._bs_index = {b: j for j, b in enumerate(self.bs_ids)}
        self.bw_up_hz, self.bw_down_hz = cells.bw_up_hz, cells.bw_down_hz
        self.bs_pos, self.bs_power_dbm = cells.pos_m, cells.power_dbm
        self.noise_up_dbm, self.noise_down_dbm = cells.noise_up_dbm, cells.noise_down_dbm
        self.attach_offset_db = cells.attach_offset_db
        self.up: list[Link] = []
        self.down: list[Link] = []
        for j, b in enumerate(self.bs_ids):
            self.up.append(self.fs.add_link(f"{b}/up", "uplink", b, float(self.bw_up_hz[j])))
            self.down.append(self.fs.add_link(f"{b}/down", "downlink", b, float(self.bw_down_hz[j])))
        for lk in self.up + self.down:  # SE <= cap, so a cell carries <= B x cap bit/s
            lk.min_coeff = 1.0 / self.cp.max_spectral_efficiency_bps_hz

    def _init_clients(self, classes: Mapping[str, MobilitySpec] | None) -> list[MobilitySpec | None]:
        """Client ids, positions and transmit powers; returns each client's class spec (or None)."""
        graph, nodes = self.graph, self.graph.nodes
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
        return specs

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
        self.serving = radio.serving_cell(self.rsrp_dbm, self.cells)
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
            cap = self._caps.get(si)
            if cap is not None:  # after the cell: the cell stays at index 0 (see _refresh)
                links.append(cap[0])
                coeffs.append(1.0)
        wp = self._wired_path(a, b)
        for u, v in zip(wp, wp[1:]):
            lk = self._wlink[(u, v)]
            links.append(lk)
            coeffs.append(1.0)
            lat += lk.latency_s
        if di is not None:
            cap = self._caps.get(di)
            if cap is not None:  # before the cell: the cell stays last (see _refresh)
                links.append(cap[1])
                coeffs.append(1.0)
            links.append(self.down[self.serving[di]])
            se = self.se_down[di]
            coeffs.append(1.0 / se if se > 0 else math.inf)
            lat += self.cp.access_latency_s
        names = tuple(([src] if si is not None else []) + wp + ([dst] if di is not None else []))
        return links, coeffs, names, lat

    def set_rate_cap(self, client: str, rate_bps: float) -> None:
        """Cap ``client``'s access rate at ``rate_bps`` in each direction.

        Models a device's own link limit (FedScale's device-capacity
        ``communication`` rate, in the trace's kbit/s x 1000): a virtual link of
        capacity ``rate_bps`` (kind ``access_cap``) is added to every path from and
        to the client, after its uplink cell and before its downlink cell, so its
        concurrent flows share the cap max-min fairly with everything else. Call
        before transfers start.

        Raises:
            ValueError: ``client`` is not a client, or ``rate_bps`` is not > 0.
        """
        i = self._index(client)
        if not rate_bps > 0 or not math.isfinite(rate_bps):
            raise ValueError(f'"rate_bps" must be > 0 and finite, got {rate_bps!r}')
        up = self.fs.add_link(f"{client}/cap_up", "access_cap", client, float(rate_bps))
        down = self.fs.add_link(f"{client}/cap_down", "access_cap", client, float(rate_bps))
        up.min_coeff = down.min_coeff = 1.0
        self._caps[i] = (up, down)

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
        loss = self._mean_loss_db(i, s)
        if up:
            sinr_db = self.ue_power_dbm[i] - loss - self.noise_up_dbm[s] - self.cp.interference_margin_db
            bw = self.bw_up_hz[s]
        else:
            sinr_db = (self.bs_power_dbm[s] - loss - self.noise_down_dbm[s]
                       - self.cp.interference_margin_db)
            bw = self.bw_down_hz[s]
        rate = bw * float(self._se(np.array([sinr_db]))[0])
        cap = self._caps.get(i)
        if cap is not None:
            rate = min(rate, cap[0].capacity)
        bs = self.bs_ids[s]
        wp = self._wired_path(bs, self.server) if up else self._wired_path(self.server, bs)
        for u, v in zip(wp, wp[1:]):
            rate = min(rate, self._wlink[(u, v)].capacity)
        return rate

    def _mean_loss_db(self, i: int, s: int) -> float:
        """Path loss + shadowing (dB, no fast fading) between client row ``i`` and BS ``s``."""
        return float(self.loss_db[i, s])

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

    def _sample_loop(self) -> Any:
        """Every ``link_sample_interval_s``, one row per link that has carried traffic so
        far: its *mean* load (bit/s), bytes and utilisation over the interval, from the
        exact time integrals kept by the flow system (short bursts between two samples
        are not missed; idle intervals are explicit zeros). The sample instants are
        ``k x interval`` from a kept index, never accumulated; :meth:`finish` writes the
        last, partial interval."""
        dt = self.params.link_sample_interval_s
        k = 0
        while True:
            k += 1
            yield self.env.timeout(delay_to(self.env.now, k * dt))
            self._sample()

    def _sample(self) -> None:
        """Write the rows of the interval since the previous sample (see :meth:`_sample_loop`)."""
        now = self.env.now
        dt = now - self._sample_t
        if dt <= 0.0:
            return
        self._sample_t = now
        rec = self.sim.rec
        fs = self.fs
        last = self._sample_last
        for lk in fs.take_touched():
            last.setdefault(lk, (0.0, 0.0))
        for lk in fs.busy:
            last.setdefault(lk, (0.0, 0.0))
        for lk in sorted(last, key=lambda k: k.name):
            fs.mark(lk)
            u0, b0 = last[lk]
            du, db = max(lk.usage_s - u0, 0.0), max(lk.load_bits - b0, 0.0)
            last[lk] = (lk.usage_s, lk.load_bits)
            util = du / (lk.capacity * dt) if lk.capacity > 0 else 0.0
            load = db / dt
            if lk.kind not in ("uplink", "downlink"):
                cap = lk.capacity
            else:  # a cell's bit-rate capacity depends on its clients' channels
                cap = load / util if util > 0 else math.nan
            rec.row("links", t_s=now, interval_s=dt, link=lk.name, kind=lk.kind, node=lk.node,
                    capacity_bps=cap, load_bps=load, bytes=db / 8.0, utilisation=util,
                    flows=len(lk.flows))

    # -- records -------------------------------------------------------------
    def _record_nodes(self) -> None:
        """The ``nodes`` table, with the radio values the run used: every cell's transmit power
        and bandwidths and every client's transmit power (NaN elsewhere), so an analysis
        (the coverage map) rebuilds the same cells with :func:`fedsim.net.radio.cells_of`."""
        rec = self.sim.rec
        for nd in sorted(self.graph.nodes):
            d = self.graph.nodes[nd]
            j, i = self._bs_index.get(nd), self._ci.get(nd)
            power = (self.bs_power_dbm[j] if j is not None else self.ue_power_dbm[i] if i is not None
                     else math.nan)
            rec.row("nodes", node=nd, kind=d["kind"], device_class=d.get("device_class"),
                    x=float(d["x"]), y=float(d["y"]), z=float(d["z"]), tx_power_dbm=float(power),
                    bandwidth_up_hz=float(self.bw_up_hz[j]) if j is not None else math.nan,
                    bandwidth_down_hz=float(self.bw_down_hz[j]) if j is not None else math.nan)

    def finish(self) -> None:
        """Write the ``edges`` table: every link with the bytes it carried.

        Wired links appear once per direction (src -> dst); a cell appears as
        src = dst = its BS with kind ``uplink`` / ``downlink`` and its
        bandwidth in ``capacity_hz`` (``capacity_bps`` is NaN: it depends on
        the clients' channels); a client's access rate cap (:meth:`set_rate_cap`)
        appears as src = dst = the client, kind ``access_cap``. ``link`` is the
        link's name, as in the ``links`` table. Flows still in flight are brought up to now first,
        and the ``links`` table gets its last, partial interval, so the bytes in
        ``links`` equal ``bytes_carried`` of every link.
        """
        self.fs.settle()
        if self.params.link_sample_interval_s > 0:
            self._sample()
        rec = self.sim.rec
        for (u, v), lk in self._wlink.items():
            rec.row("edges", src=u, dst=v, kind="wired", capacity_bps=lk.capacity,
                    capacity_hz=math.nan, bytes_carried=lk.bytes_carried, link=lk.name)
        for j, b in enumerate(self.bs_ids):
            for lk in (self.up[j], self.down[j]):
                rec.row("edges", src=b, dst=b, kind=lk.kind, capacity_bps=math.nan,
                        capacity_hz=lk.capacity, bytes_carried=lk.bytes_carried, link=lk.name)
        for i in sorted(self._caps):
            c = self.client_ids[i]
            for lk in self._caps[i]:
                rec.row("edges", src=c, dst=c, kind="access_cap", capacity_bps=lk.capacity,
                        capacity_hz=math.nan, bytes_carried=lk.bytes_carried, link=lk.name)

    def stats(self) -> dict[str, int]:
        """Counters: fading blocks, handovers, mobility steps, flows, recomputations."""
        return {"fading_blocks": self.fading_blocks, "handovers": self.handovers,
                "mobility_steps": self.mobility_steps, "flows": self.fs.flows_started,
                "recomputations": self.fs.recomputations}
