"""Radio coverage of a saved run: serving cell, downlink SINR and achievable uplink rate anywhere.

Computed by the simulator's own radio model (:mod:`fedsim.net.radio`) from the run
directory alone (``manifest.json``'s resolved ``channel`` section and
``nodes.parquet``), so a map point and a client of the run standing there see the
same thing, except for the random parts of its channel:

- cells: :func:`fedsim.net.radio.cells_of` on the recorded nodes: positions,
  antenna heights, and the transmit power and up / down bandwidth each cell had
  in the run (the ``nodes`` table records them; a run directory written before
  it did falls back to the channel's values per cell kind);
- loss to every cell: :func:`fedsim.net.radio.mean_path_loss_db`, the channel
  model's path loss averaged over the LOS state
  (``p_LOS PL_LOS + (1 - p_LOS) PL_NLOS``) with shadowing at its mean (0 dB) and
  no fast fading (gain 1, 0 dB);
- serving cell: :func:`fedsim.net.radio.serving_cell`, the run's
  ``channel.attachment`` rule (uplink SNR or downlink power; no hysteresis: a map
  has no history);
- SINR: :func:`fedsim.net.radio.sinr_db` (the serving cell's own noise band,
  interference margin, ``interference_load_factor`` x the other cells' power on
  the downlink);
- achievable uplink rate of a reference device alone in its cell (bit/s):
  the serving cell's uplink bandwidth x
  :func:`fedsim.net.radio.spectral_efficiency` of the uplink SINR (0 in outage).
  The reference device's transmit power is the median of the run's clients'
  (recorded in ``nodes``; older run directories: their device classes' powers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.rundir import RunDir

__all__ = ["Radio", "Coverage", "radio_of", "coverage_at"]

#: map points evaluated at once (bounds the (points, cells) arrays)
_CHUNK = 8192


@dataclass(frozen=True)
class Radio:
    """Everything the coverage computation needs, read from a run directory.

    Attributes:
        channel: the ``channel`` section, every key (schema defaults under the run's values).
        params: the same as :class:`fedsim.net.params.ChannelParams`.
        cells: the run's cells (:class:`fedsim.net.radio.Cells`).
        ue_power_dbm: the reference device's transmit power, dBm.
    """

    channel: dict[str, Any]
    params: Any
    cells: Any
    ue_power_dbm: float

    @property
    def bs_ids(self) -> list[str]:
        """Base-station node ids, sorted (shape ``(m,)``)."""
        return list(self.cells.ids)

    @property
    def bs_kinds(self) -> list[str]:
        """``"bs_macro"`` / ``"bs_small"`` per station."""
        return list(self.cells.kinds)

    @property
    def bs_xyz_m(self) -> np.ndarray:
        """Station positions and antenna heights, shape ``(m, 3)``, m."""
        return np.asarray(self.cells.pos_m)


@dataclass(frozen=True)
class Coverage:
    """Coverage at ``n`` points.

    Attributes:
        sinr_down_db: downlink SINR from the serving cell, shape ``(n,)``, dB.
        rate_up_bps: achievable uplink rate of the reference device alone in
            its cell, shape ``(n,)``, bit/s (0 in outage).
        serving: index into :attr:`Radio.bs_ids` of the serving cell, ``(n,)``.
    """

    sinr_down_db: np.ndarray
    rate_up_bps: np.ndarray
    serving: np.ndarray


def _channel_params(sc: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The run's channel section with the schema's defaults for absent keys, as a dict and as
    :class:`~fedsim.net.params.ChannelParams`."""
    from fedsim.config.schema import ChannelConfig
    from fedsim.net.params import ChannelParams

    given = {k: v for k, v in (sc.get("channel") or {}).items() if v is not None}
    cp = ChannelConfig.model_validate(given).model_dump()
    return cp, ChannelParams(**cp)


def _reference_power_dbm(sc: dict[str, Any], clients: Any) -> float:
    """Median transmit power of the run's clients (dBm): the recorded ``tx_power_dbm``, else
    each client's class power (the scenario's override or the class default)."""
    from fedsim.devices.params import default_device_classes
    from fedsim.net.params import NetworkParams

    if "tx_power_dbm" in clients.columns and clients["tx_power_dbm"].notna().any():
        return float(np.median(clients["tx_power_dbm"].dropna().to_numpy(float)))
    classes = default_device_classes()
    over = (sc.get("devices") or {}).get("classes") or {}
    default = NetworkParams().ue_tx_power_dbm
    powers = []
    for cls in clients["device_class"].astype(str) if "device_class" in clients.columns else ():
        own = (over.get(cls) or {}).get("tx_power_dbm")
        powers.append(float(own) if own is not None else
                      classes[cls].tx_power_dbm if cls in classes else default)
    return float(np.median(powers)) if powers else default


def radio_of(run: RunDir) -> Radio:
    """The radio parameters and cells of ``run``.

    Raises:
        ValueError: if the run has no base station with a position, or its channel
            section is invalid.
        FileNotFoundError: if ``nodes.parquet`` or ``manifest.json`` is absent.
    """
    import networkx as nx

    from fedsim.net.radio import cells_of
    from fedsim.net.topology import BS_KINDS

    sc = run.scenario
    cp, params = _channel_params(sc)
    nodes = run.nodes
    bs = nodes[nodes["kind"].isin(list(BS_KINDS))].dropna(subset=["x", "y"])
    if bs.empty:
        raise ValueError(f"{run.path}: nodes.parquet has no base station with a position")
    g = nx.Graph()
    for row in bs.to_dict("records"):
        g.add_node(str(row.pop("node")), **{k: v for k, v in row.items() if v is not None and v == v})
    return Radio(channel=cp, params=params, cells=cells_of(g, params),
                 ue_power_dbm=_reference_power_dbm(sc, nodes[nodes["kind"] == "client"]))


def coverage_at(radio: Radio, xy_m: np.ndarray, height_m: float | np.ndarray = 1.5) -> Coverage:
    """Serving cell, downlink SINR and achievable uplink rate at points ``xy_m``.

    Args:
        radio: from :func:`radio_of`.
        xy_m: positions, shape ``(n, 2)``, m.
        height_m: terminal antenna height(s), scalar or ``(n,)``, m.

    Returns:
        A :class:`Coverage` of ``n`` points (see the module docstring for the model).
    """
    from fedsim.net import channel as ch
    from fedsim.net import radio as rd

    cp, cells = radio.params, radio.cells
    model = ch.channel_model(cp.model)
    xy = np.asarray(xy_m, dtype=float).reshape(-1, 2)
    n = len(xy)
    z = np.broadcast_to(np.asarray(height_m, dtype=float), (n,))
    sinr = np.empty(n)
    rate = np.empty(n)
    serving = np.empty(n, dtype=np.int64)
    for a in range(0, n, _CHUNK):
        p, pz = xy[a:a + _CHUNK], z[a:a + _CHUNK, None]
        d2 = np.hypot(p[:, 0:1] - cells.pos_m[None, :, 0], p[:, 1:2] - cells.pos_m[None, :, 1])
        loss = rd.mean_path_loss_db(model, cp, d2, cells.pos_m[None, :, 2], pz)
        rsrp = cells.power_dbm[None, :] - loss
        s = rd.serving_cell(rsrp, cells)
        up, down = rd.sinr_db(cells, cp, s, loss[np.arange(len(p)), s], 0.0, radio.ue_power_dbm, rsrp, s)
        sinr[a:a + _CHUNK], serving[a:a + _CHUNK] = down, s
        rate[a:a + _CHUNK] = cells.bw_up_hz[s] * rd.spectral_efficiency(up, cp)
    return Coverage(sinr_down_db=sinr, rate_up_bps=rate, serving=serving)
