"""Channel models against hand-written TR 38.901 formulas and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import exp1

from fedsim.net import channel as ch

C = 3.0e8  # TR 38.901 uses c = 3e8 m/s in d'_BP


def ref_umi(d2: float, fc: float, hbs: float, hut: float, los: bool) -> float:
    d3 = math.hypot(d2, hbs - hut)
    dbp = 4 * (hbs - 1) * (hut - 1) * fc * 1e9 / C
    if d2 <= dbp:
        pl_los = 32.4 + 21 * math.log10(d3) + 20 * math.log10(fc)
    else:
        pl_los = (32.4 + 40 * math.log10(d3) + 20 * math.log10(fc)
                  - 9.5 * math.log10(dbp**2 + (hbs - hut) ** 2))
    if los:
        return pl_los
    nlos = 35.3 * math.log10(d3) + 22.4 + 21.3 * math.log10(fc) - 0.3 * (hut - 1.5)
    return max(pl_los, nlos)


def ref_uma(d2: float, fc: float, hbs: float, hut: float, los: bool) -> float:
    d3 = math.hypot(d2, hbs - hut)
    dbp = 4 * (hbs - 1) * (hut - 1) * fc * 1e9 / C
    if d2 <= dbp:
        pl_los = 28.0 + 22 * math.log10(d3) + 20 * math.log10(fc)
    else:
        pl_los = (28.0 + 40 * math.log10(d3) + 20 * math.log10(fc)
                  - 9 * math.log10(dbp**2 + (hbs - hut) ** 2))
    if los:
        return pl_los
    nlos = 13.54 + 39.08 * math.log10(d3) + 20 * math.log10(fc) - 0.6 * (hut - 1.5)
    return max(pl_los, nlos)


DISTANCES = [10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0, 4000.0]


@pytest.mark.parametrize("los", [True, False])
@pytest.mark.parametrize("fc", [2.0, 3.5, 28.0])
def test_pathloss_umi_matches_tr38901(los: bool, fc: float) -> None:
    for hut in (1.5, 6.0):
        got = ch.pathloss_umi(np.array(DISTANCES), fc, 10.0, hut, los)
        want = [ref_umi(d, fc, 10.0, hut, los) for d in DISTANCES]
        np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("los", [True, False])
@pytest.mark.parametrize("fc", [2.0, 3.5, 28.0])
def test_pathloss_uma_matches_tr38901(los: bool, fc: float) -> None:
    for hut in (1.5, 6.0):
        got = ch.pathloss_uma(np.array(DISTANCES), fc, 25.0, hut, los)
        want = [ref_uma(d, fc, 25.0, hut, los) for d in DISTANCES]
        np.testing.assert_allclose(got, want, atol=0.05)


def test_pathloss_spot_values() -> None:
    # UMi LOS, 3.5 GHz, 100 m, h 10 / 1.5: below d'_BP (~420 m) -> PL1
    d3 = math.hypot(100, 8.5)
    assert float(ch.pathloss_umi(100.0, 3.5)) == pytest.approx(
        32.4 + 21 * math.log10(d3) + 20 * math.log10(3.5), abs=1e-9)
    assert float(ch.breakpoint_distance_m(3.5, 10.0, 1.5)) == pytest.approx(4 * 9 * 0.5 * 3.5e9 / C, rel=1e-3)
    # NLOS never below LOS
    d = np.linspace(10, 3000, 200)
    assert np.all(ch.pathloss_umi(d, 3.5, los=False) >= ch.pathloss_umi(d, 3.5, los=True))


def test_los_probabilities_and_free_space() -> None:
    assert float(ch.los_probability_umi(10.0)) == 1.0
    d = 100.0
    assert float(ch.los_probability_umi(d)) == pytest.approx(18 / d + math.exp(-d / 36) * (1 - 18 / d))
    assert float(ch.los_probability_uma(d)) == pytest.approx(18 / d + math.exp(-d / 63) * (1 - 18 / d))
    # Friis at 1 km, 2.4 GHz: 100.05 dB
    assert float(ch.pathloss_free_space(1000.0, 2.4)) == pytest.approx(100.05, abs=0.02)
    assert float(ch.pathloss_log_distance(10.0, 2.4, exponent=3.0)) == pytest.approx(
        float(ch.pathloss_free_space(1.0, 2.4)) + 30.0)


def test_noise_and_sinr() -> None:
    assert ch.noise_power_dbm(1e6, 0.0) == pytest.approx(-114.0)
    assert ch.noise_power_dbm(20e6, 7.0) == pytest.approx(-174 + 73.0103 + 7, abs=1e-3)
    assert float(ch.spectral_efficiency(3.0)) == pytest.approx(2.0)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 20.0])
def test_rayleigh_ergodic_capacity_monte_carlo(snr_db: float) -> None:
    g = 10 ** (snr_db / 10)
    rng = np.random.default_rng(7)
    mc = np.log2(1 + g * ch.rayleigh_power(rng, 400_000)).mean()
    closed = float(ch.rayleigh_ergodic_capacity(g))
    assert closed == pytest.approx(math.exp(1 / g) * exp1(1 / g) / math.log(2))
    assert mc == pytest.approx(closed, rel=0.02)


def test_fading_unit_mean() -> None:
    rng = np.random.default_rng(3)
    assert ch.rayleigh_power(rng, 200_000).mean() == pytest.approx(1.0, rel=0.01)
    assert ch.rician_power(rng, 9.0, 200_000).mean() == pytest.approx(1.0, rel=0.01)
    # tiny SNR: asymptotic branch ~ g / ln 2
    assert float(ch.rayleigh_ergodic_capacity(1e-4)) == pytest.approx(1e-4 / math.log(2), rel=1e-3)


# ---------------------------------------------------------------- the model registry


def test_schema_literal_and_documented_defaults_match_the_registry() -> None:
    """config may not import net, so this test holds the schema equal to ch.CHANNEL_MODELS."""
    from typing import get_args

    from fedsim.config.schema import ChannelConfig
    from fedsim.net.params import ChannelParams

    fields = ChannelConfig.model_fields
    assert get_args(fields["model"].annotation) == tuple(ch.CHANNEL_MODELS)
    assert ChannelConfig().model == ChannelParams().model in ch.CHANNEL_MODELS
    doc = fields["shadowing_std_db"].description
    for name, m in ch.CHANNEL_MODELS.items():
        assert m.name == name
        assert f"{name} {m.shadowing_std_db[0]:g}/{m.shadowing_std_db[1]:g}" in doc, name
        assert name in fields["model"].description


def test_unknown_channel_model_is_an_error_not_a_fallback() -> None:
    from fedsim.net.params import ChannelParams

    with pytest.raises(ValueError, match="unknown channel model 'moon'.*log_distance"):
        ch.channel_model("moon")
    with pytest.raises(ValueError, match="model"):
        ChannelParams(model="moon")


@pytest.mark.parametrize("name", list(ch.CHANNEL_MODELS))
def test_every_model_gives_the_same_loss_on_the_blocked_and_per_pair_paths(name: str) -> None:
    """Network evaluates path loss in blocks (all BSs) and per pair (nearest_bs): bitwise equal."""
    from fedsim.devices.params import default_device_classes
    from fedsim.engine import Simulation
    from fedsim.net.network import Network
    from fedsim.net.params import ChannelParams, NetworkParams
    from fedsim.net.topology import manhattan_grid

    sim = Simulation(7)
    g = manhattan_grid(clients_per_class={"vehicle": 4, "drone": 4, "phone": 4}, rng=sim.rng.numpy("topology"))
    net = Network(sim, g, NetworkParams(channel=ChannelParams(model=name)), "cloud", default_device_classes())
    rows = np.arange(len(net.client_ids))
    blocked = net._update_loss(rows).copy()
    m = len(net.bs_ids)
    cols = np.tile(np.arange(m), (rows.size, 1))
    flat = rows[:, None] * m + cols
    pairs = net._update_loss_pairs(rows, cols, flat, net._shadow_z[rows])
    assert np.array_equal(pairs, blocked)
    rates = [net.nominal_rate_bps(c, "down") for c in net.client_ids]
    assert np.all(np.isfinite(rates)) and max(rates) > 0
