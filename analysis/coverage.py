"""Radio coverage of a saved run: best downlink SINR and achievable uplink rate anywhere.

Recomputes the *mean* channel of the run's scenario at arbitrary points from
the run directory alone (``manifest.json``'s resolved scenario and
``nodes.parquet``), with the same channel models the simulator uses (the registry
:data:`fedsim.net.channel.CHANNEL_MODELS`: 3GPP TR 38.901 UMi / UMa, free
space, log-distance):

- loss ``L_j`` to base station ``j`` = mean path loss over the LOS state,
  ``p_LOS PL_LOS + (1 - p_LOS) PL_NLOS`` (dB, TR 38.901 Tables 7.4.1-1 and
  7.4.2-1), plus shadowing at its mean (0 dB: log-normal shadowing is
  zero-mean in dB). No fast fading (its mean power gain is 1).
- serving cell: the largest mean received power ``P_j - L_j``, as the
  simulator's initial association (no hysteresis: a map has no history).
- downlink SINR (dB) = ``P_s - L_s`` over noise (-174 dBm/Hz + NF over the
  downlink bandwidth, plus the interference margin) plus
  ``interference_load_factor`` x the other cells' received power, exactly
  the simulator's formula with the fading gain set to 1.
- achievable uplink rate of a reference device alone in its cell (bit/s) =
  ``B_up min(log2(1 + SINR_up), cap)``, 0 below the outage SINR, with
  ``SINR_up = P_ue - L_s - N_up - margin`` and ``P_ue`` =
  ``devices.ue_tx_power_dbm``.

Base-station heights come from the ``z`` column (the channel's default
antenna height by kind when ``z <= 0``, as the simulator does) and transmit
powers from ``channel.bs_tx_power_{macro,small}_dbm`` (per-node
``tx_power_dbm`` overrides of explicit topologies are not in the nodes table
and are not seen here).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from analysis.rundir import RunDir

__all__ = ["Radio", "Coverage", "radio_of", "coverage_at", "mean_loss_db", "shadowing_std_db"]


@dataclass(frozen=True)
class Radio:
    """Everything the coverage computation needs, read from a run directory.

    Attributes:
        channel: the resolved ``channel`` section of the scenario.
        bs_ids: base-station node ids, sorted (shape ``(m,)``).
        bs_kinds: ``"bs_macro"`` / ``"bs_small"`` per station.
        bs_xyz_m: station positions and antenna heights, shape ``(m, 3)``, m.
        bs_power_dbm: transmit powers, shape ``(m,)``, dBm.
        ue_power_dbm: the reference device's transmit power, dBm.
        noise_up_dbm: uplink noise power over the uplink band (incl. NF), dBm.
        noise_down_dbm: downlink noise power over the downlink band, dBm.
    """

    channel: dict[str, Any]
    bs_ids: list[str]
    bs_kinds: list[str]
    bs_xyz_m: np.ndarray
    bs_power_dbm: np.ndarray
    ue_power_dbm: float
    noise_up_dbm: float
    noise_down_dbm: float


@dataclass(frozen=True)
class Coverage:
    """Coverage at ``n`` points.

    Attributes:
        sinr_down_db: best downlink SINR, shape ``(n,)``, dB.
        rate_up_bps: achievable uplink rate of the reference device alone in
            its cell, shape ``(n,)``, bit/s (0 in outage).
        serving: index into :attr:`Radio.bs_ids` of the serving cell, ``(n,)``.
    """

    sinr_down_db: np.ndarray
    rate_up_bps: np.ndarray
    serving: np.ndarray


def radio_of(run: RunDir) -> Radio:
    """The radio parameters and base stations of ``run``.

    Raises:
        ValueError: if the run has no base station with a position.
        FileNotFoundError: if ``nodes.parquet`` or ``manifest.json`` is absent.
    """
    from dataclasses import asdict

    from fedsim.net import channel as ch
    from fedsim.net.params import ChannelParams

    sc = run.scenario
    cp = asdict(ChannelParams())  # the simulator's defaults under the run's resolved values
    cp.update({k: v for k, v in (sc.get("channel") or {}).items() if v is not None})
    nodes = run.nodes
    bs = nodes[nodes["kind"].isin(["bs_macro", "bs_small"])].dropna(subset=["x", "y"])
    bs = bs.assign(node=bs["node"].astype(str)).sort_values("node")
    if bs.empty:
        raise ValueError(f"{run.path}: nodes.parquet has no base station with a position")
    kinds = bs["kind"].astype(str).tolist()
    macro = np.array([k == "bs_macro" for k in kinds])
    z = bs["z"].fillna(0.0).to_numpy(float) if "z" in bs.columns else np.zeros(len(bs))
    z = np.where(z > 0, z, np.where(macro, cp["bs_height_macro_m"], cp["bs_height_small_m"]))
    xyz = np.column_stack([bs["x"].to_numpy(float), bs["y"].to_numpy(float), z])
    power = np.where(macro, cp["bs_tx_power_macro_dbm"], cp["bs_tx_power_small_dbm"]).astype(float)
    ue = float((sc.get("devices") or {}).get("ue_tx_power_dbm", 23.0))
    nf = float(cp["noise_figure_db"])
    return Radio(
        channel=cp, bs_ids=bs["node"].tolist(), bs_kinds=kinds, bs_xyz_m=xyz,
        bs_power_dbm=power, ue_power_dbm=ue,
        noise_up_dbm=ch.noise_power_dbm(float(cp["bandwidth_up_hz"]), nf),
        noise_down_dbm=ch.noise_power_dbm(float(cp["bandwidth_down_hz"]), nf),
    )


def mean_loss_db(cp: dict[str, Any], d2d_m: np.ndarray, h_bs_m: float, h_ut_m: np.ndarray,
                 z_ut_m: np.ndarray) -> np.ndarray:
    """Mean path loss (dB) over the LOS state, from the simulator's model ``cp["model"]``.

    The model comes from the channel registry
    (:data:`fedsim.net.channel.CHANNEL_MODELS`), exactly as the simulator
    looks it up; only the LOS draw is replaced by its expectation.

    Args:
        cp: the channel section (``model``, ``fc_ghz`` and the model's own fields,
            e.g. ``log_distance_exponent``).
        d2d_m: horizontal distances to one base station, any shape, m.
        h_bs_m: that station's antenna height, m.
        h_ut_m: terminal heights clamped to ``max_ue_height_m`` (TR 38.901 range), m.
        z_ut_m: unclamped terminal heights (3D distance of free space / log-distance), m.

    Returns:
        ``p_LOS PL_LOS + (1 - p_LOS) PL_NLOS`` for a model with a LOS
        probability (UMi, UMa: TR 38.901), the deterministic loss otherwise;
        same shape as ``d2d_m``, dB.

    Raises:
        ValueError: for a model name not in the registry.
    """
    from fedsim.net import channel as ch

    model = ch.channel_model(str(cp["model"]))
    fc = float(cp["fc_ghz"])
    params = SimpleNamespace(**cp)
    geom = ch.LinkGeometry(np.asarray(d2d_m, dtype=float), h_bs_m, h_ut_m, z_ut_m)
    if model.los_probability is None:
        return model.path_loss(geom, True, fc, params)
    p = model.los_probability(geom.d2d_m, h_ut_m)
    los = model.path_loss(geom, True, fc, params)
    nlos = model.path_loss(geom, False, fc, params)
    return p * los + (1.0 - p) * nlos


def shadowing_std_db(cp: dict[str, Any]) -> tuple[float, float]:
    """(LOS, NLOS) shadowing std of the run's channel (dB): the scenario's value or the model's."""
    from fedsim.net import channel as ch

    if cp.get("shadowing_std_db") is not None:
        v = float(cp["shadowing_std_db"])
        return v, v
    return ch.channel_model(str(cp["model"])).shadowing_std_db


def coverage_at(radio: Radio, xy_m: np.ndarray, height_m: float | np.ndarray = 1.5) -> Coverage:
    """Best downlink SINR, achievable uplink rate and serving cell at points ``xy_m``.

    Args:
        radio: from :func:`radio_of`.
        xy_m: positions, shape ``(n, 2)``, m.
        height_m: terminal antenna height(s), scalar or ``(n,)``, m.

    Returns:
        A :class:`Coverage` of ``n`` points (see the module docstring for the model).
    """
    from fedsim.net import channel as ch

    cp = radio.channel
    xy = np.asarray(xy_m, dtype=float).reshape(-1, 2)
    n, m = len(xy), len(radio.bs_ids)
    z = np.broadcast_to(np.asarray(height_m, dtype=float), (n,))
    h_ut = np.minimum(z, float(cp["max_ue_height_m"]))
    loss = np.empty((n, m))
    for j in range(m):
        bx, by, hb = radio.bs_xyz_m[j]
        d2 = np.hypot(xy[:, 0] - bx, xy[:, 1] - by)
        loss[:, j] = mean_loss_db(cp, d2, float(hb), h_ut, z)
    rsrp = radio.bs_power_dbm[None, :] - loss
    s = np.argmax(rsrp, axis=1) if m else np.zeros(n, dtype=int)
    rows = np.arange(n)
    margin = float(cp["interference_margin_db"])
    load = float(cp["interference_load_factor"])
    rx = rsrp[rows, s]
    if load > 0 and m > 1:
        mw = ch.db_to_linear(rsrp)
        interf = load * (mw.sum(axis=1) - mw[rows, s])
        sinr_down = ch.linear_to_db(ch.db_to_linear(rx) / (
            ch.db_to_linear(radio.noise_down_dbm + margin) + interf))
    else:
        sinr_down = rx - radio.noise_down_dbm - margin
    sinr_up = radio.ue_power_dbm - loss[rows, s] - radio.noise_up_dbm - margin
    se = np.minimum(ch.spectral_efficiency(ch.db_to_linear(sinr_up)),
                    float(cp["max_spectral_efficiency_bps_hz"]))
    se = np.where(sinr_up >= float(cp["outage_sinr_db"]), se, 0.0)
    return Coverage(sinr_down_db=np.asarray(sinr_down, dtype=float),
                    rate_up_bps=float(cp["bandwidth_up_hz"]) * se, serving=s)
