"""Parameter dataclasses of the network layer (units in the field names).

The scenario schema mirrors these field by field; defaults are a 3.5 GHz
urban micro-cell deployment (3GPP TR 38.901 UMi street canyon).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.net.channel import CHANNEL_MODELS

__all__ = ["ChannelParams", "NetworkParams"]

_FADING = ("rayleigh", "rician", "none")


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

    model: str = "umi"
    fc_ghz: float = 3.5
    bandwidth_up_hz: float = 20e6
    bandwidth_down_hz: float = 20e6
    bs_tx_power_macro_dbm: float = 46.0
    bs_tx_power_small_dbm: float = 30.0
    bs_height_macro_m: float = 25.0
    bs_height_small_m: float = 10.0
    noise_figure_db: float = 7.0
    shadowing_std_db: float | None = None
    shadowing_decorrelation_m: float = 50.0
    log_distance_exponent: float = 3.0
    fading: str = "rayleigh"
    rician_k_db: float = 9.0
    coherence_s: float = 1.0
    outage_sinr_db: float = -5.0
    max_spectral_efficiency_bps_hz: float = 7.4
    interference_margin_db: float = 0.0
    interference_load_factor: float = 0.0
    handover_hysteresis_db: float = 3.0
    handover_time_to_trigger_s: float = 2.0
    access_latency_s: float = 1e-3
    max_ue_height_m: float = 22.5
    nearest_bs: int = 0
    population: str = "eager"
    small_bandwidth_up_hz: float | None = None
    small_bandwidth_down_hz: float | None = None
    attachment: str = "downlink"

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
            advanced and their channels / serving BS re-evaluated (s).
        link_sample_interval_s: how often link utilisation rows are written
            to the ``links`` table (s); ``0`` disables sampling.
        ue_tx_power_dbm: default client transmit power when the device
            class does not give one (dBm).
        ue_height_m: default client antenna height when a node has no ``z``.
    """

    channel: ChannelParams = ChannelParams()
    mobility_interval_s: float = 1.0
    link_sample_interval_s: float = 10.0
    ue_tx_power_dbm: float = 23.0
    ue_height_m: float = 1.5

    def __post_init__(self) -> None:
        if not self.mobility_interval_s > 0:
            raise ValueError('"mobility_interval_s" must be > 0')
        if self.link_sample_interval_s < 0:
            raise ValueError('"link_sample_interval_s" must be >= 0')
