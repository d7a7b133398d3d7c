"""A network whose idle clients cost nothing: channels and positions evaluated on demand.

:class:`LazyNetwork` has the interface and the channel model of
:class:`fedsim.net.network.Network` (TR 38.901 path loss and LOS, Gudmundson
shadowing, block fading, hysteresis + time-to-trigger handover), but keeps no
periodic process for clients that are not transferring:

- **Positions** come from :class:`fedsim.net.trajectory.Trajectories`
  (piecewise-linear, exact at any query time).
- **Block fading** of client ``i`` in coherence block ``b = floor(t /
  coherence_s)`` is a pure function of ``(i, b)`` drawn from the
  counter-based ``"channel/fading"`` stream, so a lazy draw equals the
  eager one, in any query order.
- **LOS** of a client-BS pair is a keyed uniform of ``(i, j)`` compared with
  the LOS probability at the current distance (as the eager model does with
  a stored uniform).
- **Shadowing** is kept for the client's candidate BSs only (the ``k``
  nearest, ``ChannelParams.nearest_bs`` or 8, plus the serving one) and
  advanced at each evaluation by the distance travelled since the last one:
  the Gudmundson AR(1) ``z' = rho z + sqrt(1 - rho^2) n``, ``rho =
  exp(-d / d_corr)``. Exponential correlation composes (``rho(d1) rho(d2) =
  rho(d1 + d2)``), so evaluating rarely has the same distribution as
  evaluating every step. A BS that (re-)enters the candidate set gets a
  fresh stationary draw.
- **Serving cell.** A client is evaluated when something needs its channel:
  at selection time (``serving_bs``, ``nominal_rate_bps``), when a transfer
  starts, and every ``mobility_interval_s`` / at every coherence-block
  boundary while it has active flows. A client without active flows attaches
  to the best candidate (idle-mode cell reselection, no hysteresis); a
  connected one (a flow active now or within the RRC inactivity time,
  10 s) hands over with the eager model's hysteresis and time-to-trigger.
  Handovers are therefore counted for connected clients only (idle
  reselections are not handovers). The clients of the transfers started at
  one instant (a round's downloads) are measured in one vectorised pass and
  each applies its measurement at its own turn (same numbers as one at a time).

The devices of a lazy population are columns too
(:class:`fedsim.devices.population.DevicePopulation`: availability, background
load and memory pressure as functions of (device, time)), so a client nobody
selects schedules no event at all.

Approximations (measured by ``bench/population_equivalence.py`` and the
statistical tests): only the candidate BSs can serve or interfere (as
``nearest_bs`` in the eager model) and idle-mode reselection has no
hysteresis. Random streams: ``"channel/los"``, ``"channel/shadowing"``,
``"channel/fading"``, ``"mobility"`` (all counter-based here).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsim.engine.clock import block_index, delay_to
from fedsim.net import channel as ch
from fedsim.net.network import Network
from fedsim.net.radio import NearestGrid
from fedsim.net.trajectory import Trajectories

__all__ = ["LazyNetwork", "DEFAULT_CANDIDATES", "next_block"]

#: candidate BSs per client when ``ChannelParams.nearest_bs`` is 0
DEFAULT_CANDIDATES = 8
#: a client stays connected (handover rules, not idle reselection) this long after its
#: last flow, like an LTE / NR RRC inactivity timer (typically 10 s), s
RRC_INACTIVITY_S = 10.0


def next_block(now: float, period_s: float, block: int) -> tuple[int, float]:
    """The next block boundary of a loop that last handled block ``block``: returns
    ``(b, delay_s)`` with ``b > block``, ``b * period_s > now`` and ``now + delay_s > now``.

    Integer block indices (:func:`fedsim.engine.clock.block_index`), not float phase
    arithmetic, so the clock always advances and no boundary is handled twice."""
    b = max(block, block_index(now, period_s)) + 1
    return b, delay_to(now, b * period_s)


class LazyNetwork(Network):
    """:class:`Network` with on-demand channels and trajectories (see the module docstring)."""

    # -- set-up ----------------------------------------------------------------
    def _init_population(self, specs: list[Any]) -> None:
        n = len(self.client_ids)
        m = len(self.bs_ids)
        cp = self.cp
        rng = self.sim.rng
        self._cr_los = rng.counter("channel/los")
        self._cr_shadow = rng.counter("channel/shadowing")
        self._cr_fading = rng.counter("channel/fading")
        bbox = self._bbox()
        self.traj = Trajectories(
            self.pos,
            [s.mobility if s is not None else "static" for s in specs],
            [(s.speed_min_mps, s.speed_max_mps) if s is not None else (0.0, 0.0) for s in specs],
            [(s.altitude_min_m, s.altitude_max_m) if s is not None else (1.5, 1.5) for s in specs],
            self.graph.graph.get("streets"), bbox, rng.counter("mobility"))
        self.pos = self.traj.p0.copy()  # last evaluated positions (highway ones snap at the first)
        k = int(cp.nearest_bs)
        self._near_k = k if 0 < k < m else min(DEFAULT_CANDIDATES, m)
        self._kk = min(self._near_k + 1, m)
        self._grid = NearestGrid(self.bs_pos, bbox, self._kk, self.pos)
        kk = self._kk
        self._cand = np.full((n, kk), -1, dtype=np.int64)
        self._cz = np.zeros((n, kk))
        self._codo = np.full((n, kk), np.nan)
        self._closs = np.full((n, kk), np.inf)
        self._crsrp = np.full((n, kk), -np.inf)
        self._gen = np.zeros(n, dtype=np.int64)  # evaluations of each client (draw counter)
        self._t_eval = np.full(n, -np.inf)
        self._t_conn = np.full(n, -np.inf)  # last time the client had an active flow
        self._block_se = np.full(n, -1, dtype=np.int64)
        self.serving = np.full(n, -1, dtype=np.int64)
        self.se_up = np.zeros(n)
        self.se_down = np.zeros(n)
        self._ho_time = np.zeros(n)
        self._ho_cand = np.full(n, -1, dtype=np.int64)
        self.evaluations = 0
        self._channel = ch.channel_model(cp.model)  # the one look-up of the path-loss model
        self._std = self._shadowing_std_db()
        self._upkeep = False
        self._fading_on = False
        self._pend: dict[int, None] = {}  # client rows whose transfer started at _pend_t
        self._pend_t = -math.inf
        self._pre: dict[int, tuple[dict[str, Any], int, tuple[Any, ...]]] = {}  # their measurements

    # -- evaluation --------------------------------------------------------------
    def _candidates(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(rows, kk) candidate BS indices, sorted, the serving BS always among them."""
        cols = self._grid.lookup(pos, self._near_k, self.serving[rows])
        return np.sort(cols, axis=1)

    def _pair_loss(self, rows: np.ndarray, pos: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Path loss (dB, without shadowing) and LOS-dependent shadowing std of the pairs."""
        cp = self.cp
        pz = pos[:, 2:3]
        h_ut = np.minimum(pz, cp.max_ue_height_m)
        bs = self.bs_pos[cols]
        d2 = np.hypot(pos[:, 0:1] - bs[..., 0], pos[:, 1:2] - bs[..., 1])
        h_bs = bs[..., 2]
        std_los, std_nlos = self._std
        model = self._channel
        geom = ch.LinkGeometry(d2, h_bs, h_ut, pz)
        if model.los_probability is not None:
            u = self._cr_los.uniform(rows[:, None], cols)
            los = u < model.los_probability(d2, pz if model.aerial else h_ut)
            pl = model.path_loss(geom, los, cp.fc_ghz, cp)
            return np.stack([pl, np.where(los, std_los, std_nlos)])
        pl = model.path_loss(geom, True, cp.fc_ghz, cp)
        return np.stack([pl, np.full_like(pl, std_los)])

    def _merged(self, rows: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shadowing state (z, odometer) of ``rows`` over the candidates ``cand``: that of BSs
        that stay candidates carried over, new ones fresh (0, NaN). Reads, writes nothing."""
        old = self._cand[rows]
        cz, codo = self._cz[rows], self._codo[rows]
        for r in np.nonzero((cand != old).any(axis=1))[0].tolist():
            keep = {int(j): (cz[r, c], codo[r, c]) for c, j in enumerate(old[r]) if j >= 0}
            nz, no = zip(*(keep.get(j, (0.0, np.nan)) for j in cand[r].tolist()))
            cz[r], codo[r] = nz, no
        return cz, codo

    def _measure(self, rows: np.ndarray, with_se: bool = False) -> dict[str, Any]:
        """The channel of ``rows`` now (position, candidates, shadowing, path loss, received
        powers, best cell), computed without changing any state (:meth:`_commit` applies it).

        A row's values depend only on its own state, so measuring rows together or one at a
        time gives the same numbers. ``with_se``: also the spectral efficiencies each row
        would have when served by its best cell (what an idle row gets)."""
        now = self.env.now
        pos, odo = self.traj.positions(rows, now)
        cand = self._candidates(rows, pos)
        z, codo = self._merged(rows, cand)
        gen = self._gen[rows] + 1
        innov = self._cr_shadow.normal(rows[:, None], cand, gen[:, None])
        d = odo[:, None] - codo
        fresh = np.isnan(d)
        rho = np.exp(-np.where(fresh, 0.0, np.maximum(d, 0.0)) / self.cp.shadowing_decorrelation_m)
        z = np.where(fresh, innov, np.where(d > 0.0, rho * z + np.sqrt(1.0 - rho * rho) * innov, z))
        pl, std = self._pair_loss(rows, pos, cand)
        loss = pl + std * z
        rsrp = self.bs_power_dbm[cand] - loss
        rs = rsrp + self.attach_offset_db[cand]  # the cell-selection metric
        bc = np.argmax(rs, axis=1)
        m = {"t": now, "pos": pos, "odo": odo, "cand": cand, "z": z, "gen": gen, "loss": loss,
             "rsrp": rsrp, "rs": rs, "bc": bc, "best": cand[np.arange(rows.size), bc]}
        if with_se:
            m["block"] = self._block()
            m["se"] = self._se_of(rows, cand, m["best"], loss, rsrp, m["block"])
        return m

    def _commit(self, rows: np.ndarray, m: dict[str, Any]) -> np.ndarray:
        """Apply a measurement of ``rows`` taken now (:meth:`_measure`): channel state, serving
        cell (idle: the best; connected: hysteresis + time-to-trigger) and spectral
        efficiencies. Returns the (connected) rows that handed over."""
        now = self.env.now
        self.evaluations += rows.size
        self.pos[rows] = m["pos"]
        self._cand[rows] = m["cand"]
        self._gen[rows] = m["gen"]
        self._cz[rows] = m["z"]
        self._codo[rows] = m["odo"][:, None]
        self._closs[rows] = m["loss"]
        self._crsrp[rows] = m["rsrp"]
        cand, rs, bc, best = m["cand"], m["rs"], m["bc"], m["best"]
        k = np.arange(rows.size)
        cur = self.serving[rows]
        act = np.array([int(i) in self._active for i in rows.tolist()], dtype=bool)
        self._t_conn[rows[act]] = now
        connected = (cur >= 0) & (now - self._t_conn[rows] <= RRC_INACTIVITY_S)
        idle = ~connected
        self.serving[rows[idle]] = best[idle]
        self._ho_time[rows[idle]] = 0.0
        self._ho_cand[rows[idle]] = -1
        ho_rows = np.zeros(0, dtype=np.int64)
        anyc = bool(connected.any())
        if anyc:
            cr = rows[connected]
            dt = np.maximum(now - self._t_eval[cr], 0.0)
            kc = k[connected]
            rs_cur = rs[kc, np.argmax(cand[kc] == cur[connected][:, None], axis=1)]
            b = best[connected]
            cond = rs[kc, bc[connected]] > rs_cur + self.cp.handover_hysteresis_db
            ttt = np.maximum(self.cp.handover_time_to_trigger_s, dt)
            ho_rows = self._handover_step(cr, b, cond, dt, ttt)
        self._t_eval[rows] = now
        if "se" in m and not anyc:  # every row idle: served by its best cell, as measured
            self._block_se[rows] = m["block"]
            self.se_up[rows], self.se_down[rows] = m["se"]
        else:
            self._se_now(rows)
        return ho_rows

    def _evaluate(self, rows: np.ndarray) -> np.ndarray:
        """Position, shadowing, path loss and serving cell of ``rows`` now; returns the rows
        (connected ones) that handed over."""
        return self._commit(rows, self._measure(rows))

    def _prefetched(self, i: int) -> dict[str, Any] | None:
        """The measurement of row ``i`` taken now together with the other rows whose
        transfers were started at this instant (one vectorised :meth:`_measure` for the
        whole cohort instead of one per row), or ``None`` (not pending, or its state
        changed since: the caller measures it alone). Same numbers either way."""
        now = self.env.now
        if self._pend_t != now:
            return None
        if i not in self._pre and i in self._pend:
            rows = np.fromiter(self._pend, dtype=np.int64, count=len(self._pend))
            te = self._t_eval[rows]
            due = (te != now) & ~((self.serving[rows] >= 0) & (now - te < self.params.mobility_interval_s))
            rows = rows[due]
            self._pend.clear()
            if rows.size:
                m = self._measure(rows, with_se=True)
                for k, r in enumerate(rows.tolist()):
                    self._pre[r] = (m, k, self._snapshot(r))
        hit = self._pre.pop(i, None)
        if hit is None or hit[2] != self._snapshot(i):
            return None
        m, k, _ = hit
        one = {key: (v[k:k + 1] if isinstance(v, np.ndarray) else v) for key, v in m.items()}
        if "se" in m:
            one["se"] = (m["se"][0][k:k + 1], m["se"][1][k:k + 1])
        return one

    def _snapshot(self, i: int) -> tuple[Any, ...]:
        """The state of row ``i`` that a measurement and its commit read (besides time)."""
        return (float(self._t_eval[i]), int(self.serving[i]), float(self._t_conn[i]), i in self._active)

    def transfer(self, src: str, dst: str, nbytes: float, *, round: int = -1, tag: str = "") -> Any:
        """:meth:`Network.transfer`; the client ends are noted, so that the channels of all
        the transfers started at one instant are measured in one vectorised pass."""
        proc = super().transfer(src, dst, nbytes, round=round, tag=tag)
        now = self.env.now
        if self._pend_t != now:
            self._pend_t = now
            self._pend.clear()
            self._pre.clear()
        for nd in (src, dst):
            i = self._ci.get(nd)
            if i is not None and i not in self._pre:
                self._pend[i] = None
        return proc

    def _block(self) -> int:
        """Coherence block of now: the largest ``b`` with ``b * coherence_s <= now``."""
        return block_index(self.env.now, self.cp.coherence_s)

    def fading_power(self, rows: np.ndarray, block: int | np.ndarray) -> np.ndarray:
        """Block-fading power gain (unit mean) of ``rows`` in coherence block ``block``:
        a pure function of (client row, block), drawn from the counter-based stream."""
        cp = self.cp
        if cp.fading == "none":
            return np.ones(np.broadcast(rows, block).shape)
        if cp.fading == "rayleigh":
            return self._cr_fading.exponential(rows, block)
        kf = 10.0 ** (cp.rician_k_db / 10.0)
        s = math.sqrt(1.0 / (2.0 * (kf + 1.0)))
        re = math.sqrt(kf / (kf + 1.0)) + s * self._cr_fading.normal(rows, block, 0)
        im = s * self._cr_fading.normal(rows, block, 1)
        return re * re + im * im

    def _se_now(self, rows: np.ndarray, block: int | None = None) -> None:
        """Spectral efficiencies of ``rows`` with the fading of ``block`` (default: now's)."""
        if rows.size == 0:
            return
        block = self._block() if block is None else block
        self._block_se[rows] = block
        self.se_up[rows], self.se_down[rows] = self._se_of(
            rows, self._cand[rows], self.serving[rows], self._closs[rows], self._crsrp[rows], block)

    def _se_of(self, rows: np.ndarray, cand: np.ndarray, s: np.ndarray, closs: np.ndarray,
               crsrp: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) spectral efficiencies (bit/s/Hz) of ``rows`` served by BSs ``s``, with
        candidate losses ``closs`` and received powers ``crsrp`` (dB, dBm; (rows, kk)) over
        candidates ``cand`` and the fading of ``block``."""
        k = np.arange(rows.size)
        sc = np.argmax(cand == s[:, None], axis=1)
        loss = closs[k, sc]
        fad_db = ch.linear_to_db(np.maximum(self.fading_power(rows, block), 1e-30))
        margin = self.cp.interference_margin_db
        up_db = self.ue_power_dbm[rows] - loss + fad_db - self.noise_up_dbm[s] - margin
        rx_down = self.bs_power_dbm[s] - loss + fad_db
        if self.cp.interference_load_factor > 0 and len(self.bs_ids) > 1:
            mw = ch.db_to_linear(crsrp)
            interf = self.cp.interference_load_factor * (mw.sum(axis=1) - mw[k, sc])
            down_db = ch.linear_to_db(ch.db_to_linear(rx_down) / (
                ch.db_to_linear(self.noise_down_dbm[s] + margin) + interf))
        else:
            down_db = rx_down - self.noise_down_dbm[s] - margin
        return self._se(up_db), self._se(down_db)

    def _ensure(self, i: int) -> None:
        """Bring client row ``i`` up to date now.

        A client evaluated less than ``mobility_interval_s`` ago keeps its serving
        cell and path loss (as in the eager model, where they change only at
        mobility steps) and gets the current block's fading; anyone else is
        evaluated now."""
        now = self.env.now
        if self._t_eval[i] == now:
            return
        if self.serving[i] >= 0 and now - self._t_eval[i] < self.params.mobility_interval_s:
            if self._block_se[i] != self._block():
                self._se_now(np.array([i], dtype=np.int64))
            return
        row = np.array([i], dtype=np.int64)
        m = self._prefetched(i)
        ho = self._evaluate(row) if m is None else self._commit(row, m)
        self._after_handover(ho, row)

    def _after_handover(self, ho_rows: np.ndarray, rows: np.ndarray) -> None:
        """Reroute the flows of clients that handed over; push new rates of ``rows``."""
        if not self._active:
            return
        with self.fs.batch():
            for i in ho_rows.tolist():
                for a in self._active.get(i, ()):
                    links, coeffs, _, _ = Network._route(self, a.src, a.dst)
                    self.fs.reroute(a.flow, links, coeffs)
            self._refresh([i for i in rows.tolist() if i in self._active])

    # -- connected clients: upkeep while they have flows ------------------------
    def _on_active(self, i: int) -> None:
        self._t_conn[i] = self.env.now
        if not self._upkeep:
            self._upkeep = True
            self.env.process(self._mobility_upkeep())
        if not self._fading_on and self.cp.fading != "none":
            # one fading loop at a time: the last one may still wait for its next block
            # when the mobility loop restarts (two loops did the same refresh twice)
            self._fading_on = True
            self.env.process(self._fading_upkeep())

    def _mobility_upkeep(self) -> Any:
        dt = self.params.mobility_interval_s
        while self._active:
            yield self.env.timeout(dt)
            rows = np.array(sorted(self._active), dtype=np.int64)
            if rows.size:
                self.mobility_steps += 1
                self._after_handover(self._evaluate(rows), rows)
        self._upkeep = False

    def _fading_upkeep(self) -> Any:
        c = self.cp.coherence_s
        b = self._block()
        while self._active:
            b, delay = next_block(self.env.now, c, b)
            yield self.env.timeout(delay)
            rows = np.array(sorted(self._active), dtype=np.int64)
            if rows.size:
                self.fading_blocks += 1
                self._se_now(rows, b)
                self._refresh(rows.tolist())
        self._fading_on = False

    # -- public queries (evaluate first) -----------------------------------------
    def _route(self, src: str, dst: str) -> tuple[list[Any], list[float], tuple[str, ...], float]:
        for nd in (src, dst):
            i = self._ci.get(nd)
            if i is not None:
                self._ensure(i)
        return super()._route(src, dst)

    def serving_bs(self, client: str) -> str:
        self._ensure(self._index(client))
        return super().serving_bs(client)

    def position(self, node: str) -> tuple[float, float, float]:
        i = self._ci.get(node)
        if i is not None:
            self._ensure(i)
        return super().position(node)

    def spectral_efficiency(self, client: str, direction: str) -> float:
        self._ensure(self._index(client))
        return super().spectral_efficiency(client, direction)

    def nominal_rate_bps(self, client: str, direction: str) -> float:
        self._ensure(self._index(client))
        return super().nominal_rate_bps(client, direction)

    def _mean_loss_db(self, i: int, s: int) -> float:
        return float(self._closs[i, int(np.argmax(self._cand[i] == s))])

    def move_client(self, client: str, x: float, y: float, z: float) -> None:
        """Teleport ``client`` now (it then stands still) and re-evaluate its channel."""
        i = self._index(client)
        _, odo = self.traj.positions(np.array([i]), self.env.now)
        step = float(np.linalg.norm(np.array([x, y, z]) - self.pos[i]))
        self.traj.teleport(i, (x, y, z), self.env.now, float(odo[0]) + step)
        self._t_eval[i] = min(self._t_eval[i], self.env.now - self.params.mobility_interval_s)
        ho = self._evaluate(np.array([i], dtype=np.int64))
        self._after_handover(ho, np.array([i], dtype=np.int64))
