"""Radio and mobility methods of :class:`fedsim.net.network.Network` (split out to keep
modules under 600 lines): path loss / shadowing / fading updates, spectral efficiency, nearest-BS
pruning, the mobility loop and handover. See :mod:`fedsim.net.network` for the model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsim.net import channel as ch

__all__ = ["RadioMixin"]

#: client-BS pairs per block of the vectorised path-loss update (cache sized)
_BLOCK_PAIRS = 16384
#: grid cell of the nearest-BS tables (``ChannelParams.nearest_bs``), m
NEAR_CELL_M = 25.0


class RadioMixin:
    """Channel and mobility state updates of a :class:`~fedsim.net.network.Network` (a mixin: it
    reads and writes the network's arrays; it has no state of its own)."""

    def _init_nearest(self, bbox: tuple[float, float, float, float]) -> None:
        """Grid of the ``k + 1`` nearest BSs per cell (``nearest_bs`` approximation)."""
        m = len(self.bs_ids)
        kk = min(self._near_k + 1, m)
        x0, y0, x1, y1 = bbox
        x0 = min(x0, float(self.pos[:, 0].min(initial=x0)))
        y0 = min(y0, float(self.pos[:, 1].min(initial=y0)))
        x1 = max(x1, float(self.pos[:, 0].max(initial=x1)))
        y1 = max(y1, float(self.pos[:, 1].max(initial=y1)))
        g = max(NEAR_CELL_M, (x1 - x0) / 1024.0, (y1 - y0) / 1024.0)
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
        ho_rows = self._handover_step(rows, best, cond, dt, ttt)
        self._update_se(rows)
        if self._active:
            with self.fs.batch():
                for i in ho_rows.tolist():
                    for a in self._active.get(i, ()):
                        links, coeffs, _, _ = self._route(a.src, a.dst)
                        self.fs.reroute(a.flow, links, coeffs)
                self._refresh([i for i in rows.tolist() if i in self._active])

    def _handover_step(self, rows: np.ndarray, best: np.ndarray, cond: np.ndarray,
                       dt: float | np.ndarray, ttt: float | np.ndarray) -> np.ndarray:
        """Time-to-trigger state machine of handover (3GPP TS 36.331 event A3): a row whose
        candidate ``best`` beats its serving cell by the hysteresis (``cond``) for ``ttt``
        seconds hands over; ``dt`` is the time since its last evaluation (s). Records a
        ``handover`` event per handover and returns the rows that handed over."""
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
        return ho_rows
