"""The channel state of a :class:`fedsim.net.network.Network` kept up to date: path loss and
shadowing after moves, fading, spectral efficiencies, the mobility loop and handover. The
radio model itself (cells, path loss, SINR, spectral efficiency, the nearest-BS grid) is
:mod:`fedsim.net.radio`; see :mod:`fedsim.net.network` for the whole model."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.net import channel as ch
from fedsim.net import radio

__all__ = ["ChannelStateMixin"]

#: client-BS pairs per block of the vectorised path-loss update (cache sized)
_BLOCK_PAIRS = 16384


class ChannelStateMixin:
    """Channel and mobility state updates of a :class:`~fedsim.net.network.Network` (a mixin over the
    network's per-client arrays; the arithmetic is :mod:`fedsim.net.radio`'s)."""

    def _init_nearest(self, bbox: tuple[float, float, float, float]) -> None:
        """Grid of the ``k + 1`` nearest BSs per cell (``nearest_bs`` approximation)."""
        m = len(self.bs_ids)
        self._near_grid = radio.NearestGrid(self.bs_pos, bbox, min(self._near_k + 1, m), self.pos)
        self._odo = np.zeros(len(self.client_ids))
        self._z_odo = np.zeros((len(self.client_ids), m))

    def _update_loss_pairs(self, rows: np.ndarray, cols: np.ndarray, flat: np.ndarray,
                           z: np.ndarray) -> np.ndarray:
        """Path loss + shadowing of the pairs (rows[i], cols[i, c]) (``flat``: their
        indices into the raveled (clients, BSs) arrays); returns their RSRP."""
        p = self.pos[rows]
        bs = self.bs_pos[cols]
        dx = p[:, 0:1] - bs[..., 0]
        dy = p[:, 1:2] - bs[..., 1]
        d2 = np.sqrt(dx * dx + dy * dy)
        u = self._los_u.reshape(-1)[flat] if self._channel.los_probability is not None else None
        pl, los = radio.path_loss_db(self._channel, self.cp, d2, bs[..., 2], p[:, 2:3], u)
        std_los, std_nlos = self._shadowing_std_db()
        std = np.where(los, std_los, std_nlos) if los is not None else std_los
        loss = pl + std * z
        rsrp = self.bs_power_dbm[cols] - loss
        self.loss_db[rows] = np.inf  # BSs out of reach: no service, no interference
        self.rsrp_dbm[rows] = -np.inf
        self.loss_db.reshape(-1)[flat] = loss
        self.rsrp_dbm.reshape(-1)[flat] = rsrp
        return rsrp

    def _shadowing_std_db(self) -> tuple[float, float]:
        """Shadowing std (dB) of LOS and NLOS pairs: ``channel.shadowing_std_db`` or the model's default."""
        return radio.shadowing_std_db(self._channel, self.cp)

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
        if z is None:
            z = self._shadow_z[rows]
        model = self._channel
        u = self._los_u[rows] if model.los_probability is not None else None
        p = self.pos[rows]
        px = np.ascontiguousarray(p[:, 0])
        py = np.ascontiguousarray(p[:, 1])
        pz = np.ascontiguousarray(p[:, 2])
        std_los, std_nlos = self._shadowing_std_db()
        # blocks of BSs x clients, clients contiguous (the arrays are transposed)
        loss = np.empty((m, rows.size))
        zt = z.T
        ut = u.T if u is not None else None
        block = max(1, min(m, _BLOCK_PAIRS // max(rows.size, 1)))
        for j0 in range(0, m, block):
            j1 = min(m, j0 + block)
            dx = px - self.bs_pos[j0:j1, 0:1]
            dy = py - self.bs_pos[j0:j1, 1:2]
            d2 = np.sqrt(dx * dx + dy * dy)
            pl, los = radio.path_loss_db(model, self.cp, d2, self.bs_pos[j0:j1, 2:3], pz,
                                         ut[j0:j1] if ut is not None else None)
            std = np.where(los, std_los, std_nlos) if los is not None else std_los
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
        fad_db = ch.linear_to_db(np.maximum(self.fading[rows], 1e-30))
        up_db, down_db = radio.sinr_db(self.cells, self.cp, s, self.loss_db[rows, s], fad_db,
                                       self.ue_power_dbm[rows], self.rsrp_dbm[rows], s)
        self.se_up[rows] = self._se(up_db)
        self.se_down[rows] = self._se(down_db)

    def _se(self, sinr_db: np.ndarray) -> np.ndarray:
        """Spectral efficiency (bit/s/Hz) of SINRs ``sinr_db`` (:func:`fedsim.net.radio.spectral_efficiency`)."""
        return radio.spectral_efficiency(sinr_db, self.cp)

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
            cols = self._near_grid.lookup(self.pos[rows], self._near_k, self.serving[rows])
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
