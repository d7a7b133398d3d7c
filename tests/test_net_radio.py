"""The radio model's pure functions (fedsim.net.radio) with hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.net import radio
from fedsim.net.params import ChannelParams
from fedsim.net.topology import explicit


def _graph() -> object:
    nodes = [{"id": "cloud", "kind": "cloud"},
             {"id": "m", "kind": "bs_macro", "x": 0, "y": 0},
             {"id": "s1", "kind": "bs_small", "x": 100, "y": 0, "z": 12, "tx_power_dbm": 24.0,
              "bandwidth_up_hz": 5e6},
             {"id": "s2", "kind": "bs_small", "x": 0, "y": 100}]
    edges = [{"src": b, "dst": "cloud", "capacity_bps": 1e9, "latency_s": 0.0} for b in ("m", "s1", "s2")]
    return explicit(nodes, edges)


def test_cells_take_a_nodes_own_values_then_the_kinds() -> None:
    cp = ChannelParams(small_bandwidth_up_hz=40e6, attachment="uplink", noise_figure_db=7.0)
    c = radio.cells_of(_graph(), cp)
    assert c.ids == ["m", "s1", "s2"]
    assert c.bw_up_hz.tolist() == [20e6, 5e6, 40e6]  # channel's, node's own, small cells'
    assert c.bw_down_hz.tolist() == [20e6, 20e6, 20e6]
    assert c.power_dbm.tolist() == [46.0, 24.0, 30.0]
    assert c.pos_m[:, 2].tolist() == [25.0, 12.0, 10.0]  # z <= 0: the kind's default height
    # -174 dBm/Hz + 10 log10(5e6) + 7 = -100.010 dBm; uplink offset -P - N_up
    assert c.noise_up_dbm[1] == pytest.approx(-100.0103, abs=1e-4)
    assert c.attach_offset_db.tolist() == pytest.approx((-c.power_dbm - c.noise_up_dbm).tolist())
    assert radio.cells_of(_graph(), ChannelParams(attachment="downlink")).attach_offset_db.tolist() == [0, 0, 0]


def test_sinr_and_spectral_efficiency_by_hand() -> None:
    """Downlink: -90 dBm received over -100 dBm noise plus 0.5 x 2 x -97 dBm interference
    (0.5 x 2 x 10^-9.7 mW = 10^-9.7) -> 10^-9 / (10^-10 + 10^-9.7) = 6.6612 -> 8.2356 dB.
    Uplink: 20 - 110 + 3 (fading) - N_up - 2 (margin)."""
    cp = ChannelParams(interference_load_factor=0.5, interference_margin_db=2.0, outage_sinr_db=-5.0,
                       max_spectral_efficiency_bps_hz=7.4)
    cells = radio.Cells(ids=["a", "b", "c"], kinds=["bs_macro"] * 3, pos_m=np.zeros((3, 3)),
                        power_dbm=np.array([20.0, 40.0, 40.0]), bw_up_hz=np.full(3, 1e6),
                        bw_down_hz=np.full(3, 1e6), noise_up_dbm=np.full(3, -104.0),
                        noise_down_dbm=np.full(3, -102.0), attach_offset_db=np.zeros(3))
    s = np.array([0])
    up, down = radio.sinr_db(cells, cp, s, np.array([110.0]), 0.0, 20.0,
                             np.array([[-90.0, -97.0, -97.0]]), s)
    assert up[0] == pytest.approx(20 - 110 + 104 - 2)
    assert down[0] == pytest.approx(10 * math.log10(1e-9 / (1e-10 + 10 ** -9.7)), abs=1e-9)
    se = radio.spectral_efficiency(np.array([-6.0, 0.0, 40.0]), cp)
    assert se.tolist() == pytest.approx([0.0, 1.0, 7.4])


def test_nearest_grid_keeps_the_serving_station() -> None:
    bs = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [300.0, 0.0]])
    g = radio.NearestGrid(bs, (0.0, -50.0, 300.0, 50.0), 3)
    cols = g.lookup(np.array([[10.0, 0.0], [10.0, 0.0], [290.0, 0.0]]), 2, np.array([3, 1, -1]))
    assert cols[0].tolist() == [0, 1, 3]  # the serving station replaces the 3rd nearest
    assert cols[1].tolist() == [0, 1, 2]  # already among the 2 nearest
    assert cols[2].tolist() == [3, 2, 1]  # no serving station yet
