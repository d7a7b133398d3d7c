"""The radio model as pure functions over cell and client arrays: one home for the cells,
the path loss of client-BS pairs, cell selection, SINR and spectral efficiency.

:class:`~fedsim.net.network.Network` (its channel state: :mod:`fedsim.net.channel_state`),
:class:`~fedsim.net.population.LazyNetwork` and the coverage map
(:mod:`analysis.coverage`) all compute with these functions, so a map and a client
standing at the same point see the same serving cell, SINR and rate.

- :func:`cells_of`: every base station's position, transmit power, up / down
  bandwidth, noise power and cell-selection offset, from the topology graph and
  the channel parameters (a node's own ``tx_power_dbm`` / ``bandwidth_*_hz``
  win over the channel's values for its kind).
- :func:`path_loss_db`: path loss of pairs with the LOS state drawn from a
  uniform per pair (``u < p_LOS``); :func:`mean_path_loss_db`: its expectation
  over the LOS state (``p_LOS PL_LOS + (1 - p_LOS) PL_NLOS``).
- :func:`serving_cell`: the best received power plus the cell-selection offset.
- :func:`sinr_db`: uplink and downlink SINR of the serving link (noise over the
  cell's bandwidth, interference margin, optional downlink inter-cell
  interference); :func:`spectral_efficiency`: ``min(log2(1 + SINR), cap)``, 0
  below the outage SINR.
- :class:`NearestGrid`: the ``k`` nearest base stations of every cell of a
  25 m grid (the ``nearest_bs`` approximation and the lazy population's
  candidate sets).

Channel parameters ``cp`` are a :class:`~fedsim.net.params.ChannelParams` (or any
object with its attributes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from fedsim.net import channel as ch
from fedsim.net.topology import BS_KINDS

__all__ = [
    "Cells", "cells_of", "cell_bandwidth_hz", "path_loss_db", "mean_path_loss_db", "shadowing_std_db",
    "serving_cell", "sinr_db", "spectral_efficiency", "NearestGrid", "NEAR_CELL_M",
]

#: grid cell of the nearest-BS tables (``ChannelParams.nearest_bs``), m
NEAR_CELL_M = 25.0
#: grid rows evaluated at once when building a nearest-BS table (bounded memory at city scale)
_GRID_CHUNK = 4096


@dataclass(frozen=True)
class Cells:
    """The base stations of a topology as the radio model sees them (``m`` cells, sorted by id).

    Attributes:
        ids: base-station node ids, sorted, shape ``(m,)``.
        kinds: ``"bs_macro"`` / ``"bs_small"`` per cell.
        pos_m: positions and antenna heights, shape ``(m, 3)``, m.
        power_dbm: transmit powers, shape ``(m,)``, dBm.
        bw_up_hz / bw_down_hz: uplink / downlink bandwidths, shape ``(m,)``, Hz.
        noise_up_dbm / noise_down_dbm: noise power over each cell's band (incl. the
            noise figure), shape ``(m,)``, dBm.
        attach_offset_db: added to the received power for cell selection, shape
            ``(m,)``, dB: 0 with ``attachment="downlink"``, ``-P_j - N_up,j`` with
            ``"uplink"`` (the metric becomes the uplink SNR without the UE power,
            the same for every cell).
    """

    ids: list[str]
    kinds: list[str]
    pos_m: np.ndarray
    power_dbm: np.ndarray
    bw_up_hz: np.ndarray
    bw_down_hz: np.ndarray
    noise_up_dbm: np.ndarray
    noise_down_dbm: np.ndarray
    attach_offset_db: np.ndarray


def cell_bandwidth_hz(node: Mapping[str, Any], cp: Any, direction: str) -> float:
    """Bandwidth (Hz) of a base station's uplink (``direction="up"``) or downlink: the
    node's ``bandwidth_up_hz`` / ``bandwidth_down_hz`` if set, else the channel's
    ``small_bandwidth_*_hz`` for a small cell when set, else ``bandwidth_*_hz``."""
    own = node.get(f"bandwidth_{direction}_hz")
    if own is not None:
        return float(own)
    small = cp.small_bandwidth_up_hz if direction == "up" else cp.small_bandwidth_down_hz
    if node.get("kind") == "bs_small" and small is not None:
        return float(small)
    return float(cp.bandwidth_up_hz if direction == "up" else cp.bandwidth_down_hz)


def cells_of(graph: nx.Graph, cp: Any) -> Cells:
    """The cells of ``graph``'s base stations under channel parameters ``cp``.

    A station without a positive ``z`` gets the channel's default antenna height for
    its kind; its power is its own ``tx_power_dbm`` or the channel's for its kind.

    Raises:
        ValueError: the graph has no base station.
    """
    nodes = graph.nodes
    ids = sorted(n for n, d in graph.nodes(data=True) if d.get("kind") in BS_KINDS)
    if not ids:
        raise ValueError("the topology has no base station")
    kinds = [str(nodes[b]["kind"]) for b in ids]
    bw_up = np.array([cell_bandwidth_hz(nodes[b], cp, "up") for b in ids])
    bw_down = np.array([cell_bandwidth_hz(nodes[b], cp, "down") for b in ids])
    pos = np.array([[nodes[b]["x"], nodes[b]["y"], float(nodes[b].get("z", 0.0)) or (
        cp.bs_height_macro_m if nodes[b]["kind"] == "bs_macro" else cp.bs_height_small_m)]
        for b in ids], dtype=float)
    power = np.array([
        float(nodes[b].get("tx_power_dbm", cp.bs_tx_power_macro_dbm
                           if nodes[b]["kind"] == "bs_macro" else cp.bs_tx_power_small_dbm))
        for b in ids])
    noise_up = np.array([ch.noise_power_dbm(float(b), cp.noise_figure_db) for b in bw_up])
    noise_down = np.array([ch.noise_power_dbm(float(b), cp.noise_figure_db) for b in bw_down])
    offset = np.zeros(len(ids)) if cp.attachment == "downlink" else -power - noise_up
    return Cells(ids=ids, kinds=kinds, pos_m=pos, power_dbm=power, bw_up_hz=bw_up, bw_down_hz=bw_down,
                 noise_up_dbm=noise_up, noise_down_dbm=noise_down, attach_offset_db=offset)


def path_loss_db(model: ch.ChannelModel, cp: Any, d2d_m: np.ndarray, h_bs_m: Any, z_ut_m: Any,
                 los_u: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Path loss (dB, no shadowing) of client-BS pairs and their LOS state.

    Args:
        model: the registered model of ``cp.model`` (:func:`fedsim.net.channel.channel_model`).
        d2d_m: horizontal distances, m; ``h_bs_m``, ``z_ut_m``: BS antenna and client
            heights broadcasting with it, m (the client height is clamped to
            ``cp.max_ue_height_m`` inside the TR 38.901 formulas).
        los_u: a uniform per pair (same shape as ``d2d_m``): the pair is LOS when
            ``los_u < p_LOS``. Unused for a model without a LOS probability.

    Returns:
        ``(loss_db, los)``: ``los`` is the boolean LOS state, None for a model
        without a LOS probability (every link LOS).
    """
    h_ut = np.minimum(z_ut_m, cp.max_ue_height_m)
    geom = ch.LinkGeometry(d2d_m, h_bs_m, h_ut, z_ut_m)
    if model.los_probability is None:
        return model.path_loss(geom, True, cp.fc_ghz, cp), None
    los = los_u < model.los_probability(d2d_m, z_ut_m if model.aerial else h_ut)
    return model.path_loss(geom, los, cp.fc_ghz, cp), los


def mean_path_loss_db(model: ch.ChannelModel, cp: Any, d2d_m: np.ndarray, h_bs_m: Any,
                      z_ut_m: Any) -> np.ndarray:
    """Path loss (dB) of pairs averaged over the LOS state, ``p_LOS PL_LOS + (1 - p_LOS) PL_NLOS``
    (the deterministic loss for a model without a LOS probability); arguments as
    :func:`path_loss_db`."""
    h_ut = np.minimum(z_ut_m, cp.max_ue_height_m)
    geom = ch.LinkGeometry(d2d_m, h_bs_m, h_ut, z_ut_m)
    if model.los_probability is None:
        return model.path_loss(geom, True, cp.fc_ghz, cp)
    p = model.los_probability(d2d_m, z_ut_m if model.aerial else h_ut)
    return p * model.path_loss(geom, True, cp.fc_ghz, cp) + (1.0 - p) * model.path_loss(geom, False, cp.fc_ghz, cp)


def shadowing_std_db(model: ch.ChannelModel, cp: Any) -> tuple[float, float]:
    """(LOS, NLOS) log-normal shadowing std (dB): ``cp.shadowing_std_db`` or the model's default."""
    if cp.shadowing_std_db is not None:
        return cp.shadowing_std_db, cp.shadowing_std_db
    return model.shadowing_std_db


def serving_cell(rsrp_dbm: np.ndarray, cells: Cells) -> np.ndarray:
    """Cell selection without history: per row of received powers ``(n, m)`` (dBm), the
    index of the best ``rsrp + attach_offset_db`` (shape ``(n,)``)."""
    if rsrp_dbm.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(rsrp_dbm + cells.attach_offset_db, axis=1)


def sinr_db(cells: Cells, cp: Any, serving: np.ndarray, loss_db: np.ndarray, fading_db: Any,
            ue_power_dbm: Any, rsrp_dbm: np.ndarray, serving_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uplink and downlink SINR (dB) of ``n`` clients on their serving links.

    Args:
        serving: serving cell index per client, ``(n,)``.
        loss_db: path loss + shadowing to the serving cell, ``(n,)``, dB.
        fading_db: fast-fading gain of the serving link, ``(n,)`` or scalar, dB (0: none).
        ue_power_dbm: client transmit powers, ``(n,)`` or scalar, dBm.
        rsrp_dbm: received powers of the cells that may interfere, ``(n, c)``, dBm
            (used when ``cp.interference_load_factor > 0`` and there is more than one cell).
        serving_col: column of the serving cell in ``rsrp_dbm``, ``(n,)``.

    Returns:
        ``(up_db, down_db)``: uplink ``P_ue - L + F - N_up - margin``; downlink
        ``P_s - L + F`` over ``N_down + margin`` plus ``interference_load_factor``
        x the other cells' received power.
    """
    s = serving
    margin = cp.interference_margin_db
    up_db = ue_power_dbm - loss_db + fading_db - cells.noise_up_dbm[s] - margin
    rx_down = cells.power_dbm[s] - loss_db + fading_db
    if cp.interference_load_factor > 0 and len(cells.ids) > 1:
        mw = ch.db_to_linear(rsrp_dbm)
        interf = cp.interference_load_factor * (mw.sum(axis=1) - mw[np.arange(s.size), serving_col])
        down_lin = ch.db_to_linear(rx_down) / (ch.db_to_linear(cells.noise_down_dbm[s] + margin) + interf)
        down_db = ch.linear_to_db(down_lin)
    else:
        down_db = rx_down - cells.noise_down_dbm[s] - margin
    return up_db, down_db


def spectral_efficiency(sinr_db: np.ndarray, cp: Any) -> np.ndarray:
    """``min(log2(1 + SINR), cp.max_spectral_efficiency_bps_hz)`` (bit/s/Hz), 0 below
    ``cp.outage_sinr_db``; same shape as ``sinr_db``."""
    se = np.minimum(ch.spectral_efficiency(ch.db_to_linear(sinr_db)), cp.max_spectral_efficiency_bps_hz)
    return np.where(sinr_db >= cp.outage_sinr_db, se, 0.0)


class NearestGrid:
    """The ``kk`` nearest base stations (by horizontal distance) of every cell of a square
    grid over a box: the candidate sets of the ``nearest_bs`` approximation.

    The grid step is ``max(NEAR_CELL_M, width / 1024, height / 1024)`` m; the box is
    ``bbox`` widened to hold every point of ``points_m``; points outside it use the
    nearest edge cell.
    """

    def __init__(self, bs_xy_m: np.ndarray, bbox: tuple[float, float, float, float], kk: int,
                 points_m: np.ndarray | None = None) -> None:
        """``bs_xy_m``: station positions ``(m, >= 2)``, m; ``bbox``: ``(xmin, ymin, xmax, ymax)``, m;
        ``kk``: stations kept per grid cell (<= m); ``points_m``: ``(n, >= 2)`` positions the box must hold."""
        x0, y0, x1, y1 = bbox
        if points_m is not None and len(points_m):
            x0 = min(x0, float(points_m[:, 0].min()))
            y0 = min(y0, float(points_m[:, 1].min()))
            x1 = max(x1, float(points_m[:, 0].max()))
            y1 = max(y1, float(points_m[:, 1].max()))
        g = max(NEAR_CELL_M, (x1 - x0) / 1024.0, (y1 - y0) / 1024.0)
        nx_ = max(1, math.ceil((x1 - x0) / g))
        ny_ = max(1, math.ceil((y1 - y0) / g))
        gx, gy = np.meshgrid(x0 + (np.arange(nx_) + 0.5) * g, y0 + (np.arange(ny_) + 0.5) * g, indexing="ij")
        flat_x, flat_y = gx.reshape(-1), gy.reshape(-1)
        order = np.empty((nx_ * ny_, kk), dtype=np.int64)
        for a in range(0, flat_x.size, _GRID_CHUNK):
            d = np.hypot(flat_x[a:a + _GRID_CHUNK, None] - bs_xy_m[None, :, 0],
                         flat_y[a:a + _GRID_CHUNK, None] - bs_xy_m[None, :, 1])
            order[a:a + _GRID_CHUNK] = np.argsort(d, axis=1, kind="stable")[:, :kk]
        self.x0, self.y0, self.step_m, self.nx, self.ny, self.order = x0, y0, g, nx_, ny_, order

    def lookup(self, xy_m: np.ndarray, k: int, serving: np.ndarray) -> np.ndarray:
        """The ``kk`` candidates of points ``xy_m`` ``(n, >= 2)``: the ``k`` nearest stations
        of the point's grid cell, with the ``(k+1)``-th giving way to the point's
        ``serving`` station when that is not among the ``k`` (``serving < 0``: none);
        shape ``(n, kk)``, unsorted."""
        ix = np.clip(((xy_m[:, 0] - self.x0) / self.step_m).astype(np.int64), 0, self.nx - 1)
        iy = np.clip(((xy_m[:, 1] - self.y0) / self.step_m).astype(np.int64), 0, self.ny - 1)
        cols = self.order[ix * self.ny + iy].copy()
        if cols.shape[1] > k:
            has = (cols[:, :k] == serving[:, None]).any(axis=1) | (serving < 0)
            cols[~has, k] = serving[~has]
        return cols
