"""Wireless channel models: path loss, shadowing, fading, noise, SINR, rate.

Pure functions on numpy arrays (scalars work too). Units: distances in
metres, frequencies in GHz (``fc_ghz``) or Hz where named, powers in dBm,
gains and losses in dB unless the name says ``_linear``.

Path loss follows 3GPP TR 38.901 V17 Table 7.4.1-1 (UMi street canyon and
UMa). Distances below 10 m are clamped to 10 m (the table's validity range
starts there); beyond 5 km the formulas are extrapolated.

The path-loss models a scenario can name (``channel.model``) are the entries
of :data:`CHANNEL_MODELS`: each :class:`ChannelModel` holds its path loss, its
LOS probability (or none: every link is LOS) and its default shadowing std.
:class:`~fedsim.net.network.Network` looks its model up once
(:func:`channel_model`). To add a model: write its path-loss (and LOS)
function here, add its :class:`ChannelModel` to :data:`CHANNEL_MODELS`, add
its name to the ``channel.model`` ``Literal`` in ``fedsim/config/schema.py``
(``tests/test_net_channel.py`` holds the two equal), and test it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import exp1

__all__ = [
    "CHANNEL_MODELS",
    "ChannelModel",
    "LinkGeometry",
    "channel_model",
    "SPEED_OF_LIGHT_MPS",
    "THERMAL_NOISE_DBM_HZ",
    "breakpoint_distance_m",
    "pathloss_umi",
    "pathloss_uma",
    "los_probability_umi",
    "los_probability_uma",
    "los_probability_uma_av",
    "los_probability_umi_av",
    "pathloss_uma_av_aerial",
    "pathloss_umi_av_aerial",
    "AERIAL_MIN_HEIGHT_M",
    "AERIAL_MAX_HEIGHT_M",
    "pathloss_free_space",
    "pathloss_log_distance",
    "rayleigh_power",
    "rician_power",
    "noise_power_dbm",
    "spectral_efficiency",
    "rayleigh_ergodic_capacity",
    "db_to_linear",
    "linear_to_db",
]

SPEED_OF_LIGHT_MPS = 299_792_458.0
#: Thermal noise power spectral density at 290 K (dBm/Hz).
THERMAL_NOISE_DBM_HZ = -174.0

Array = NDArray[np.float64]


def db_to_linear(x_db: ArrayLike) -> Array:
    """10^(x/10)."""
    return np.power(10.0, np.asarray(x_db, dtype=float) / 10.0)


def linear_to_db(x: ArrayLike) -> Array:
    """10 log10(x) (``-inf`` for 0)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(x, dtype=float))


def _d3d(d2d_m: ArrayLike, h_bs_m: float, h_ut_m: ArrayLike) -> tuple[Array, Array]:
    d2 = np.maximum(np.asarray(d2d_m, dtype=float), 10.0)
    d3 = np.sqrt(d2 * d2 + (h_bs_m - np.asarray(h_ut_m, dtype=float)) ** 2)
    return d2, d3


def breakpoint_distance_m(fc_ghz: float, h_bs_m: float, h_ut_m: ArrayLike, h_e_m: float = 1.0) -> Array:
    """TR 38.901 breakpoint distance d'_BP = 4 h'_BS h'_UT f_c / c (m), h' = h - h_E."""
    return 4.0 * (h_bs_m - h_e_m) * (np.asarray(h_ut_m, dtype=float) - h_e_m) * fc_ghz * 1e9 / SPEED_OF_LIGHT_MPS


def pathloss_umi(
    d2d_m: ArrayLike, fc_ghz: float, h_bs_m: float = 10.0, h_ut_m: ArrayLike = 1.5, los: ArrayLike = True
) -> Array:
    """UMi street-canyon path loss (dB), TR 38.901 Table 7.4.1-1.

    LOS: PL1 = 32.4 + 21 log10(d3D) + 20 log10(fc) up to d'_BP (h_E = 1 m),
    PL2 = 32.4 + 40 log10(d3D) + 20 log10(fc) - 9.5 log10(d'_BP^2 + (h_BS - h_UT)^2)
    beyond. NLOS: max(PL_LOS, 35.3 log10(d3D) + 22.4 + 21.3 log10(fc) - 0.3 (h_UT - 1.5)).
    ``los`` may be an array of booleans (per link).
    """
    d2, d3 = _d3d(d2d_m, h_bs_m, h_ut_m)
    h_ut = np.asarray(h_ut_m, dtype=float)
    dbp = breakpoint_distance_m(fc_ghz, h_bs_m, h_ut)
    lf = 20.0 * math.log10(fc_ghz)
    lg = np.log10(d3)
    pl1 = 32.4 + 21.0 * lg + lf
    pl2 = 32.4 + 40.0 * lg + lf - 9.5 * np.log10(dbp * dbp + (h_bs_m - h_ut) ** 2)
    pl_los = np.where(d2 <= dbp, pl1, pl2)
    pl_nlos = 35.3 * lg + 22.4 + 21.3 * math.log10(fc_ghz) - 0.3 * (h_ut - 1.5)
    return np.where(np.asarray(los, dtype=bool), pl_los, np.maximum(pl_los, pl_nlos))


def pathloss_uma(
    d2d_m: ArrayLike, fc_ghz: float, h_bs_m: float = 25.0, h_ut_m: ArrayLike = 1.5, los: ArrayLike = True
) -> Array:
    """UMa path loss (dB), TR 38.901 Table 7.4.1-1.

    LOS: PL1 = 28.0 + 22 log10(d3D) + 20 log10(fc) up to d'_BP,
    PL2 = 28.0 + 40 log10(d3D) + 20 log10(fc) - 9 log10(d'_BP^2 + (h_BS - h_UT)^2).
    NLOS: max(PL_LOS, 13.54 + 39.08 log10(d3D) + 20 log10(fc) - 0.6 (h_UT - 1.5)).

    Simplification: the effective environment height is fixed at h_E = 1 m,
    which the standard prescribes for h_UT < 13 m; for taller terminals
    (drones) it draws h_E at random, which we do not.
    """
    d2, d3 = _d3d(d2d_m, h_bs_m, h_ut_m)
    h_ut = np.asarray(h_ut_m, dtype=float)
    dbp = breakpoint_distance_m(fc_ghz, h_bs_m, h_ut)
    lf = 20.0 * math.log10(fc_ghz)
    lg = np.log10(d3)
    pl1 = 28.0 + 22.0 * lg + lf
    pl2 = 28.0 + 40.0 * lg + lf - 9.0 * np.log10(dbp * dbp + (h_bs_m - h_ut) ** 2)
    pl_los = np.where(d2 <= dbp, pl1, pl2)
    pl_nlos = 13.54 + 39.08 * lg + lf - 0.6 * (h_ut - 1.5)
    return np.where(np.asarray(los, dtype=bool), pl_los, np.maximum(pl_los, pl_nlos))


def los_probability_umi(d2d_m: ArrayLike) -> Array:
    """UMi LOS probability: 1 for d <= 18 m, else 18/d + exp(-d/36) (1 - 18/d)."""
    d = np.maximum(np.asarray(d2d_m, dtype=float), 1e-9)
    p = 18.0 / d + np.exp(-d / 36.0) * (1.0 - 18.0 / d)
    return np.where(d <= 18.0, 1.0, p)


def los_probability_uma(d2d_m: ArrayLike, h_ut_m: ArrayLike = 1.5) -> Array:
    """UMa LOS probability (TR 38.901 Table 7.4.2-1), with the h_UT > 13 m term."""
    d = np.maximum(np.asarray(d2d_m, dtype=float), 1e-9)
    h = np.asarray(h_ut_m, dtype=float)
    c = np.where(h <= 13.0, 0.0, np.power(np.clip((h - 13.0) / 10.0, 0.0, None), 1.5))
    base = 18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d)
    p = base * (1.0 + c * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0))
    return np.where(d <= 18.0, 1.0, np.minimum(p, 1.0))


def pathloss_free_space(d3d_m: ArrayLike, fc_ghz: float) -> Array:
    """Friis free-space loss (dB): 20 log10(4 pi d f / c), d clamped to >= 1 m."""
    d = np.maximum(np.asarray(d3d_m, dtype=float), 1.0)
    return 20.0 * np.log10(4.0 * math.pi * d * fc_ghz * 1e9 / SPEED_OF_LIGHT_MPS)


def pathloss_log_distance(d3d_m: ArrayLike, fc_ghz: float, exponent: float = 3.0, d0_m: float = 1.0) -> Array:
    """Log-distance loss (dB): free space at ``d0_m`` + 10 n log10(d / d0)."""
    d = np.maximum(np.asarray(d3d_m, dtype=float), d0_m)
    return pathloss_free_space(d0_m, fc_ghz) + 10.0 * exponent * np.log10(d / d0_m)


def rayleigh_power(rng: np.random.Generator, size: int | tuple[int, ...] | None = None) -> Array:
    """Rayleigh block-fading power gain |h|^2 ~ Exp(1) (unit mean)."""
    return rng.exponential(1.0, size=size)


def rician_power(rng: np.random.Generator, k_db: float, size: int | tuple[int, ...] | None = None) -> Array:
    """Rician block-fading power gain with K factor ``k_db`` (unit mean).

    h = sqrt(K/(K+1)) + sqrt(1/(K+1)) CN(0, 1).
    """
    k = 10.0 ** (k_db / 10.0)
    s = math.sqrt(1.0 / (2.0 * (k + 1.0)))
    re = math.sqrt(k / (k + 1.0)) + rng.normal(0.0, s, size=size)
    im = rng.normal(0.0, s, size=size)
    return re * re + im * im


def noise_power_dbm(bandwidth_hz: float, noise_figure_db: float = 0.0) -> float:
    """Thermal noise power (dBm) over ``bandwidth_hz``: -174 + 10 log10(B) + NF."""
    return THERMAL_NOISE_DBM_HZ + 10.0 * math.log10(bandwidth_hz) + noise_figure_db


def spectral_efficiency(sinr: ArrayLike) -> Array:
    """Shannon spectral efficiency log2(1 + SINR) in bit/s/Hz (SINR linear)."""
    return np.log2(1.0 + np.asarray(sinr, dtype=float))


def rayleigh_ergodic_capacity(snr: ArrayLike) -> Array:
    """E[log2(1 + g |h|^2)] over Rayleigh fading, |h|^2 ~ Exp(1) (bit/s/Hz).

    Closed form e^(1/g) E1(1/g) / ln 2. For 1/g > 500 (tiny SNR) the
    asymptotic series e^x E1(x) ~ (1/x)(1 - 1/x + 2/x^2) avoids overflow.
    """
    g = np.asarray(snr, dtype=float)
    x = 1.0 / np.maximum(g, 1e-300)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.exp(np.minimum(x, 500.0)) * exp1(np.minimum(x, 500.0))
    asym = (1.0 / x) * (1.0 - 1.0 / x + 2.0 / (x * x))
    return np.where(x > 500.0, asym, exact) / math.log(2.0)



# ---------------------------------------------------------------------------
# aerial UEs: 3GPP TR 36.777 V15.0.0 Annex B (UMa-AV, UMi-AV)

#: TR 38.901's UMi / UMa formulas hold up to this UE height; TR 36.777 above (m)
AERIAL_MIN_HEIGHT_M = 22.5
#: the TR 36.777 Annex B models hold up to this UE height (m); higher UEs are clamped
AERIAL_MAX_HEIGHT_M = 300.0


def _aerial_los(d2d_m: ArrayLike, h_ut_m: ArrayLike, p1: Array, d1: Array) -> Array:
    d = np.maximum(np.asarray(d2d_m, dtype=float), 1e-9)
    p = d1 / d + np.exp(-d / p1) * (1.0 - d1 / d)
    return np.where(d <= d1, 1.0, np.minimum(p, 1.0))


def los_probability_uma_av(d2d_m: ArrayLike, h_ut_m: ArrayLike) -> Array:
    """UMa-AV LOS probability, TR 36.777 Table B-1: TR 38.901 UMa up to 22.5 m; for
    22.5 < h_UT <= 100 m, 1 within d1 and ``d1/d2D + exp(-d2D/p1) (1 - d1/d2D)``
    beyond, ``p1 = 4300 log10(h_UT) - 3800``, ``d1 = max(460 log10(h_UT) - 700, 18)``;
    1 above 100 m."""
    h = np.clip(np.asarray(h_ut_m, dtype=float), 1.0, AERIAL_MAX_HEIGHT_M)
    ha = np.maximum(h, AERIAL_MIN_HEIGHT_M)
    lh = np.log10(ha)
    air = _aerial_los(d2d_m, ha, 4300.0 * lh - 3800.0, np.maximum(460.0 * lh - 700.0, 18.0))
    air = np.where(ha > 100.0, 1.0, air)
    ground = los_probability_uma(d2d_m, np.minimum(h, AERIAL_MIN_HEIGHT_M))
    return np.where(h > AERIAL_MIN_HEIGHT_M, air, ground)


def los_probability_umi_av(d2d_m: ArrayLike, h_ut_m: ArrayLike) -> Array:
    """UMi-AV LOS probability, TR 36.777 Table B-1: TR 38.901 UMi up to 22.5 m; for
    22.5 < h_UT <= 300 m the form of :func:`los_probability_uma_av` with
    ``p1 = 233.98 log10(h_UT) - 0.95``, ``d1 = max(294.05 log10(h_UT) - 432.94, 18)``."""
    h = np.clip(np.asarray(h_ut_m, dtype=float), 1.0, AERIAL_MAX_HEIGHT_M)
    ha = np.maximum(h, AERIAL_MIN_HEIGHT_M)
    lh = np.log10(ha)
    air = _aerial_los(d2d_m, ha, 233.98 * lh - 0.95, np.maximum(294.05 * lh - 432.94, 18.0))
    return np.where(h > AERIAL_MIN_HEIGHT_M, air, los_probability_umi(d2d_m))


def pathloss_uma_av_aerial(d3d_m: ArrayLike, fc_ghz: float, h_ut_m: ArrayLike, los: ArrayLike) -> Array:
    """UMa-AV path loss (dB) for 22.5 < h_UT <= 300 m, TR 36.777 Table B-2:
    LOS ``28.0 + 22 log10(d3D) + 20 log10(fc)``; NLOS
    ``-17.5 + (46 - 7 log10(h_UT)) log10(d3D) + 20 log10(40 pi fc / 3)``."""
    lg = np.log10(np.maximum(np.asarray(d3d_m, dtype=float), 1.0))
    h = np.clip(np.asarray(h_ut_m, dtype=float), AERIAL_MIN_HEIGHT_M, AERIAL_MAX_HEIGHT_M)
    pl_los = 28.0 + 22.0 * lg + 20.0 * math.log10(fc_ghz)
    pl_nlos = -17.5 + (46.0 - 7.0 * np.log10(h)) * lg + 20.0 * math.log10(40.0 * math.pi * fc_ghz / 3.0)
    return np.where(np.asarray(los, dtype=bool), pl_los, pl_nlos)


def pathloss_umi_av_aerial(d3d_m: ArrayLike, fc_ghz: float, h_ut_m: ArrayLike, los: ArrayLike) -> Array:
    """UMi-AV path loss (dB) for 22.5 < h_UT <= 300 m, TR 36.777 Table B-2:
    LOS ``max(PL_FS, 30.9 + (22.25 - 0.5 log10(h_UT)) log10(d3D) + 20 log10(fc))`` with
    free space ``PL_FS = 20 log10(40 pi d3D fc / 3)``; NLOS
    ``max(PL_LOS, 32.4 + (43.2 - 7.6 log10(h_UT)) log10(d3D) + 20 log10(fc))``."""
    d3 = np.maximum(np.asarray(d3d_m, dtype=float), 1.0)
    lg = np.log10(d3)
    lh = np.log10(np.clip(np.asarray(h_ut_m, dtype=float), AERIAL_MIN_HEIGHT_M, AERIAL_MAX_HEIGHT_M))
    lf = 20.0 * math.log10(fc_ghz)
    pl_fs = 20.0 * np.log10(40.0 * math.pi * d3 * fc_ghz / 3.0)
    pl_los = np.maximum(pl_fs, 30.9 + (22.25 - 0.5 * lh) * lg + lf)
    pl_nlos = np.maximum(pl_los, 32.4 + (43.2 - 7.6 * lh) * lg + lf)
    return np.where(np.asarray(los, dtype=bool), pl_los, pl_nlos)


# ---------------------------------------------------------------------------
# the registry of path-loss models


@dataclass(frozen=True)
class LinkGeometry:
    """Client-BS pairs as a path-loss model sees them (arrays broadcast together).

    Attributes:
        d2d_m: horizontal distance client-BS (m).
        h_bs_m: BS antenna height (m).
        h_ut_m: client antenna height clipped to the TR 38.901 range
            (``ChannelParams.max_ue_height_m``), used by the 38.901 formulas (m).
        z_ut_m: the client's actual height (m), used for the 3D distance of
            the models without a validity range (free space, log-distance).
    """

    d2d_m: Array
    h_bs_m: ArrayLike
    h_ut_m: ArrayLike
    z_ut_m: ArrayLike

    def d3d_m(self) -> Array:
        """3D distance (m) with the client's actual height: ``sqrt(d2D^2 + (h_BS - z_UT)^2)``."""
        d2 = self.d2d_m
        return np.sqrt(d2 * d2 + (self.h_bs_m - self.z_ut_m) ** 2)


#: ``path_loss(geometry, los, fc_ghz, params) -> dB``; ``params`` is the
#: :class:`~fedsim.net.params.ChannelParams` (model-specific fields, e.g.
#: ``log_distance_exponent``); ``los`` is a boolean array (all True for a
#: model without a LOS probability).
PathLossFn = Callable[[LinkGeometry, Any, float, Any], Array]
#: ``los_probability(d2d_m, h_ut_m) -> probability`` of LOS per pair.
LosProbabilityFn = Callable[[Array, ArrayLike], Array]


@dataclass(frozen=True)
class ChannelModel:
    """One entry of :data:`CHANNEL_MODELS`.

    Attributes:
        name: the ``channel.model`` name in scenarios.
        path_loss: :data:`PathLossFn` (dB).
        los_probability: :data:`LosProbabilityFn`, or None when the model has no
            LOS state (then no LOS uniform is drawn and every link is LOS).
        shadowing_std_db: default log-normal shadowing std (dB), ``(LOS, NLOS)``;
            ``channel.shadowing_std_db`` overrides both.
        source: the standard or paper the model follows.
        aerial: the LOS probability takes the client's actual height (not the
            one clipped to the TR 38.901 range), as the TR 36.777 models do.
    """

    name: str
    path_loss: PathLossFn
    los_probability: LosProbabilityFn | None
    shadowing_std_db: tuple[float, float]
    source: str
    aerial: bool = False


def _pl_umi(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    return pathloss_umi(g.d2d_m, fc_ghz, g.h_bs_m, g.h_ut_m, los)


def _pl_uma(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    return pathloss_uma(g.d2d_m, fc_ghz, g.h_bs_m, g.h_ut_m, los)


def _pl_free_space(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    return pathloss_free_space(g.d3d_m(), fc_ghz)


def _pl_log_distance(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    return pathloss_log_distance(g.d3d_m(), fc_ghz, params.log_distance_exponent)


def _los_umi(d2d_m: Array, h_ut_m: ArrayLike) -> Array:
    return los_probability_umi(d2d_m)


def _pl_uma_av(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    air = np.asarray(g.z_ut_m, dtype=float) > AERIAL_MIN_HEIGHT_M
    return np.where(air, pathloss_uma_av_aerial(g.d3d_m(), fc_ghz, g.z_ut_m, los),
                    pathloss_uma(g.d2d_m, fc_ghz, g.h_bs_m, g.h_ut_m, los))


def _pl_umi_av(g: LinkGeometry, los: Any, fc_ghz: float, params: Any) -> Array:
    air = np.asarray(g.z_ut_m, dtype=float) > AERIAL_MIN_HEIGHT_M
    return np.where(air, pathloss_umi_av_aerial(g.d3d_m(), fc_ghz, g.z_ut_m, los),
                    pathloss_umi(g.d2d_m, fc_ghz, g.h_bs_m, g.h_ut_m, los))


#: Every path-loss model a scenario can name, by name. The order is the
#: order of the ``channel.model`` ``Literal`` in the scenario schema.
CHANNEL_MODELS: dict[str, ChannelModel] = {
    m.name: m
    for m in (
        ChannelModel("umi", _pl_umi, _los_umi, (4.0, 7.82), "3GPP TR 38.901 V17 Tables 7.4.1-1, 7.4.2-1 (UMi street canyon)"),
        ChannelModel("uma", _pl_uma, los_probability_uma, (4.0, 6.0), "3GPP TR 38.901 V17 Tables 7.4.1-1, 7.4.2-1 (UMa)"),
        ChannelModel("free_space", _pl_free_space, None, (0.0, 0.0), "Friis free-space equation"),
        ChannelModel("log_distance", _pl_log_distance, None, (8.0, 8.0), "log-distance model (Rappaport, Wireless Communications, 2nd ed., 4.9)"),
        ChannelModel("umi_av", _pl_umi_av, los_probability_umi_av, (4.0, 7.82), "3GPP TR 36.777 V15 Annex B Tables B-1, B-2 (UMi-AV) above 22.5 m; TR 38.901 UMi below", aerial=True),
        ChannelModel("uma_av", _pl_uma_av, los_probability_uma_av, (4.0, 6.0), "3GPP TR 36.777 V15 Annex B Tables B-1, B-2 (UMa-AV) above 22.5 m; TR 38.901 UMa below", aerial=True),
    )
}


def channel_model(name: str) -> ChannelModel:
    """The registered path-loss model ``name`` (never a fallback).

    Raises:
        ValueError: ``name`` is not in :data:`CHANNEL_MODELS` (the message lists the valid names).
    """
    try:
        return CHANNEL_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown channel model {name!r}; valid: {', '.join(CHANNEL_MODELS)}") from None
