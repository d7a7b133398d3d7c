"""Parameter dataclasses of the network layer (units in the field names).

:class:`ChannelParams` mirrors the scenario schema's ``channel`` section field by field and
takes every default from it (:func:`fedsim.config.schema.defaults_of`, one home per default):
a 3.5 GHz urban micro-cell deployment (3GPP TR 38.901 UMi street canyon).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config.schema import ChannelConfig, DevicesConfig, OutputConfig, defaults_of
from fedsim.net.channel import CHANNEL_MODELS

__all__ = ["ChannelParams", "NetworkParams"]

_FADING = ("rayleigh", "rician", "none")
#: the schema's ``channel`` defaults, the only copy
_D = defaults_of(ChannelConfig)


@dataclass(frozen=True)
class ChannelParams:
    """Wireless access channel of every base station.

    Attributes:
        model: path-loss model, a name in
            :data:`fedsim.net.channel.CHANNEL_MODELS` (``"umi"`` / ``"uma"``: TR
            38.901, LOS drawn per client-BS pair from the model's LOS
            probability; ``"free_space"``; ``"log_distance"``).
        fc_ghz: carrier frequency in GHz.
        bandwidth_up_hz: uplink bandwidth of one cell in Hz (shared by its flows).
        bandwidth_down_hz: downlink bandwidth of one cell in Hz.
        bs_tx_power_macro_dbm: transmit power of a macro BS (dBm, whole band).
        bs_tx_power_small_dbm: transmit power of a small-cell BS (dBm).
        bs_height_macro_m: default antenna height of a macro BS (m).
        bs_height_small_m: default antenna height of a small-cell BS (m).
        noise_figure_db: receiver noise figure (dB), both directions.
        shadowing_std_db: log-normal shadowing std (dB); ``None`` uses the
            model's registry value ``ChannelModel.shadowing_std_db`` (LOS / NLOS:
            UMi 4 / 7.82 and UMa 4 / 6 from TR 38.901 Table 7.4.1-1,
            free space 0, log-distance 8).
        shadowing_decorrelation_m: distance over which a moving client's
            shadowing decorrelates (Gudmundson AR(1), m).
        log_distance_exponent: path-loss exponent of ``"log_distance"``.
        fading: block fading of the serving link: ``"rayleigh"``,
            ``"rician"`` or ``"none"``.
        rician_k_db: Rician K factor (dB).
        coherence_s: block-fading coherence interval; every interval all
            fading powers are redrawn and the flows' rates recomputed (s).
        outage_sinr_db: below this SINR the client is in outage: its flows
            stall (rate 0) until the channel recovers (dB).
        max_spectral_efficiency_bps_hz: cap of log2(1+SINR) (256-QAM ~ 7.4).
        interference_margin_db: extra noise rise added to every link (dB).
        interference_load_factor: downlink inter-cell interference: the
            fraction of time every other BS transmits (0 = no interference).
        handover_hysteresis_db: a client hands over when another BS's mean
            received power beats the serving one by this margin (dB).
        handover_time_to_trigger_s: the handover condition must hold this
            long (consecutive mobility updates toward the same BS) before the
            client hands over (s), as in LTE/NR time-to-trigger.
        access_latency_s: one-way latency of the radio hop (scheduling,
            HARQ), added once per wireless hop of a path (s).
        max_ue_height_m: terminal heights are clamped to this value inside
            the UMi / UMa formulas (their validity range ends at 22.5 m);
            models ``umi_av`` / ``uma_av`` use TR 36.777 above that height.
        nearest_bs: approximation for large deployments, ``0`` (default) =
            exact. With ``k > 0``, after a client moves only its ``k``
            nearest base stations (precomputed on a 25 m grid) and its
            serving BS have their path loss and shadowing updated; the
            others can neither be handed over to nor interfere until they
            are among the nearest again. The shadowing of a pair is then
            advanced lazily by the distance moved since its last update
            (the same Gudmundson AR(1) correlation, drawn at once), so the
            ``"channel/shadowing"`` stream is consumed differently and
            results differ from the exact model for the same seed even
            where the candidate set does not matter. Cost per mobility
            update falls from O(moving clients x BSs) to O(moving clients x k).
        population: ``"eager"`` (every client advanced periodically: the
            reference) or ``"lazy"`` (:class:`fedsim.net.population.LazyNetwork`:
            channels, positions and serving cells evaluated on demand).
        small_bandwidth_up_hz / small_bandwidth_down_hz: bandwidth of a small
            cell's uplink / downlink (Hz); ``None`` = the macro value. A BS node
            with its own ``bandwidth_up_hz`` / ``bandwidth_down_hz`` uses those.
        attachment: cell selection and handover by ``"downlink"`` received
            power (RSRP) or by ``"uplink"`` SNR (path loss and the cell's uplink
            noise: a client near a strong macro may be better heard by a small
            cell, as in downlink / uplink decoupling).
    """

    model: str = _D["model"]
    fc_ghz: float = _D["fc_ghz"]
    bandwidth_up_hz: float = _D["bandwidth_up_hz"]
    bandwidth_down_hz: float = _D["bandwidth_down_hz"]
    bs_tx_power_macro_dbm: float = _D["bs_tx_power_macro_dbm"]
    bs_tx_power_small_dbm: float = _D["bs_tx_power_small_dbm"]
    bs_height_macro_m: float = _D["bs_height_macro_m"]
    bs_height_small_m: float = _D["bs_height_small_m"]
    noise_figure_db: float = _D["noise_figure_db"]
    shadowing_std_db: float | None = _D["shadowing_std_db"]
    shadowing_decorrelation_m: float = _D["shadowing_decorrelation_m"]
    log_distance_exponent: float = _D["log_distance_exponent"]
    fading: str = _D["fading"]
    rician_k_db: float = _D["rician_k_db"]
    coherence_s: float = _D["coherence_s"]
    outage_sinr_db: float = _D["outage_sinr_db"]
    max_spectral_efficiency_bps_hz: float = _D["max_spectral_efficiency_bps_hz"]
    interference_margin_db: float = _D["interference_margin_db"]
    interference_load_factor: float = _D["interference_load_factor"]
    handover_hysteresis_db: float = _D["handover_hysteresis_db"]
    handover_time_to_trigger_s: float = _D["handover_time_to_trigger_s"]
    access_latency_s: float = _D["access_latency_s"]
    max_ue_height_m: float = _D["max_ue_height_m"]
    nearest_bs: int = _D["nearest_bs"]
    population: str = _D["population"]
    small_bandwidth_up_hz: float | None = _D["small_bandwidth_up_hz"]
    small_bandwidth_down_hz: float | None = _D["small_bandwidth_down_hz"]
    attachment: str = _D["attachment"]

    def __post_init__(self) -> None:
        if self.model not in CHANNEL_MODELS:
            raise ValueError(f'"model" must be one of {tuple(CHANNEL_MODELS)}, got {self.model!r}')
        if self.fading not in _FADING:
            raise ValueError(f'"fading" must be one of {_FADING}, got {self.fading!r}')
        for name in ("fc_ghz", "bandwidth_up_hz", "bandwidth_down_hz", "coherence_s",
                     "max_spectral_efficiency_bps_hz", "shadowing_decorrelation_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f'"{name}" must be > 0')
        if self.attachment not in ("downlink", "uplink"):
            raise ValueError(f'"attachment" must be "downlink" or "uplink", got {self.attachment!r}')
        for name in ("small_bandwidth_up_hz", "small_bandwidth_down_hz"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f'"{name}" must be > 0')
        if self.population not in ("eager", "lazy"):
            raise ValueError(f'"population" must be "eager" or "lazy", got {self.population!r}')
        if self.nearest_bs < 0:
            raise ValueError('"nearest_bs" must be >= 0')
        if not 0.0 <= self.interference_load_factor <= 1.0:
            raise ValueError('"interference_load_factor" must be in [0, 1]')


@dataclass(frozen=True)
class NetworkParams:
    """Everything :class:`fedsim.net.network.Network` needs besides the graph.

    Attributes:
        channel: the wireless channel of every cell.
        mobility_interval_s: how often moving clients' positions are
            advanced and their channels / serving BS re-evaluated (s); default
            the schema's ``devices.mobility_interval_s``.
        link_sample_interval_s: how often link utilisation rows are written
            to the ``links`` table (s); ``0`` disables sampling; default the
            schema's ``output.link_sample_s``.
        ue_tx_power_dbm: default client transmit power when the device
            class does not give one (dBm).
    """

    channel: ChannelParams = ChannelParams()
    mobility_interval_s: float = defaults_of(DevicesConfig)["mobility_interval_s"]
    link_sample_interval_s: float = defaults_of(OutputConfig)["link_sample_s"]
    ue_tx_power_dbm: float = 23.0

    def __post_init__(self) -> None:
        if not self.mobility_interval_s > 0:
            raise ValueError('"mobility_interval_s" must be > 0')
        if self.link_sample_interval_s < 0:
            raise ValueError('"link_sample_interval_s" must be >= 0')
