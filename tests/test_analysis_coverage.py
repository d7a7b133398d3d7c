"""Coverage map: its numbers agree with the channel model, and it is drawn for every fedmoe scenario."""

from __future__ import annotations

import json
import sys
from math import exp, log2, log10, sqrt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from tests.shared_data import missing_data_dir, scenario_param
    from tests.test_analysis_plots import assert_readable_png
except ImportError:  # tests/ is not a package
    sys.path.insert(0, str(Path(__file__).parent))
    from shared_data import missing_data_dir, scenario_param
    from test_analysis_plots import assert_readable_png

from analysis.coverage import coverage_at, radio_of
from analysis.plots_coverage import client_uplink_summary, plot_coverage
from analysis.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]

# A macro BS (46 dBm, 25 m) at the origin and a small cell (30 dBm, 10 m) 400 m east;
# UMi at 3.5 GHz, 20 MHz down / 10 MHz up, NF 7 dB, half the other cells' power as
# downlink interference, a phone (23 dBm, its class default) as reference device at 1.5 m;
# cells selected by uplink SNR (the schema's default attachment).
CHANNEL = {
    "model": "umi", "fc_ghz": 3.5, "bandwidth_up_hz": 10e6, "bandwidth_down_hz": 20e6,
    "bs_tx_power_macro_dbm": 46.0, "bs_tx_power_small_dbm": 30.0, "noise_figure_db": 7.0,
    "interference_load_factor": 0.5, "interference_margin_db": 0.0, "outage_sinr_db": -5.0,
    "max_spectral_efficiency_bps_hz": 7.4, "shadowing_std_db": None,
}


def _two_cell_run(path: Path) -> Path:
    path.mkdir(parents=True)
    nodes = pd.DataFrame([
        {"node": "bs0", "kind": "bs_macro", "device_class": None, "x": 0.0, "y": 0.0, "z": 25.0},
        {"node": "bs1", "kind": "bs_small", "device_class": None, "x": 400.0, "y": 0.0, "z": 10.0},
        {"node": "cloud", "kind": "cloud", "device_class": None, "x": 200.0, "y": 500.0, "z": 0.0},
        {"node": "phone00000", "kind": "client", "device_class": "phone", "x": 200.0,
         "y": 150.0, "z": 1.5},
    ])
    nodes.to_parquet(path / "nodes.parquet")
    pd.DataFrame({"round": [0], "t_end_s": [1.0]}).to_parquet(path / "rounds.parquet")
    scenario = {"run": {"name": "two-cells"}, "protocol": {"name": "fedmoe"},
                "topology": {"kind": "explicit"}, "channel": CHANNEL}
    (path / "manifest.json").write_text(json.dumps({"seed": 0, "scenario": scenario}))
    return path


def test_coverage_agrees_with_hand_computed_tr38901_points(tmp_path: Path) -> None:
    """Three points worked by hand from TR 38.901 Table 7.4.1-1 (UMi street canyon).

    Noise: -174 + 10 log10(20e6) + 7 = -93.990 dBm down, -174 + 70 + 7 = -97.000 dBm up.
    Breakpoint d'_BP = 4 (h_BS - 1)(1.5 - 1) 3.5e9 / c: 560.4 m (macro), 210.2 m (small).
    Mean loss = p_LOS PL_LOS + (1 - p_LOS) PL_NLOS, p_LOS = 18/d + e^(-d/36)(1 - 18/d).

    (10, 0): macro at d2D = 10 m, LOS certain: d3D = sqrt(10^2 + 23.5^2) = 25.539 m,
      PL = 32.4 + 21 log10(25.539) + 20 log10(3.5) = 72.833 dB, RSRP -26.833 dBm;
      small cell at 390 m: RSRP -94.410 dBm, interference 0.5 x that.
      SINR_down = -26.833 - 10 log10(10^-9.399 + 0.5 x 10^-9.441) = 65.532 dB;
      SINR_up = 23 - 72.833 + 97 = 47.167 dB -> log2 capped at 7.4 -> 74.0 Mbit/s.
    (400, 5): small cell 5 m away (d2D clamped to 10 m, LOS): PL 66.761 dB, RSRP -36.761;
      macro at 400.03 m (p_LOS 0.04501) RSRP -78.612 dBm interferes:
      SINR_down = 44.616 dB; uplink capped, 74.0 Mbit/s.
    (200, 150): 250 m from both (p_LOS 0.07289); macro mean loss 116.879 dB (beyond
      the small cell's breakpoint its LOS loss uses PL2): RSRP -70.879 vs -86.927 dBm,
      SINR_down = 17.617 dB; SINR_up = 23 - 116.879 + 97 = 3.121 dB,
      rate = 10 MHz x log2(1 + 10^0.3121) = 16.095 Mbit/s.
    """
    run = RunDir(_two_cell_run(tmp_path / "r"))
    radio = radio_of(run)
    assert radio.bs_ids == ["bs0", "bs1"]
    assert radio.cells.noise_down_dbm[0] == pytest.approx(-93.990, abs=1e-3)
    assert radio.ue_power_dbm == 23.0
    cov = coverage_at(radio, np.array([[10.0, 0.0], [400.0, 5.0], [200.0, 150.0]]), 1.5)
    assert cov.serving.tolist() == [0, 1, 0]
    assert cov.sinr_down_db == pytest.approx([65.532, 44.616, 17.617], abs=2e-3)
    assert cov.rate_up_bps / 1e6 == pytest.approx([74.0, 74.0, 16.095], abs=2e-3)


def test_coverage_independent_formula_on_random_points(tmp_path: Path) -> None:
    """The same model, re-derived without fedsim.net, at 50 random points (serving cell by
    uplink SNR: the least mean loss, both cells having the same uplink band)."""
    run = RunDir(_two_cell_run(tmp_path / "r"))
    radio = radio_of(run)
    c = 299_792_458.0

    def pl_los(d2: float, hb: float) -> float:
        d2 = max(d2, 10.0)
        d3 = sqrt(d2 * d2 + (hb - 1.5) ** 2)
        dbp = 4 * (hb - 1) * 0.5 * 3.5e9 / c
        if d2 <= dbp:
            return 32.4 + 21 * log10(d3) + 20 * log10(3.5)
        return 32.4 + 40 * log10(d3) + 20 * log10(3.5) - 9.5 * log10(dbp**2 + (hb - 1.5) ** 2)

    def mean_loss(d2: float, hb: float) -> float:
        d3 = sqrt(max(d2, 10.0) ** 2 + (hb - 1.5) ** 2)
        nlos = max(pl_los(d2, hb), 35.3 * log10(d3) + 22.4 + 21.3 * log10(3.5))
        p = 1.0 if d2 <= 18 else 18 / d2 + exp(-d2 / 36) * (1 - 18 / d2)
        return p * pl_los(d2, hb) + (1 - p) * nlos

    pts = np.random.default_rng(3).uniform([-100, -300], [600, 300], size=(50, 2))
    cov = coverage_at(radio, pts, 1.5)
    for k, (x, y) in enumerate(pts):
        rs = [p - mean_loss(sqrt((x - bx) ** 2 + (y - by) ** 2), hb)
              for (bx, by, hb), p in zip([(0, 0, 25), (400, 0, 10)], [46.0, 30.0])]
        s = int(np.argmax([r - p for r, p in zip(rs, [46.0, 30.0])]))  # uplink SNR: least loss
        sinr = rs[s] - 10 * log10(10 ** (-93.98970004 / 10) + 0.5 * 10 ** (rs[1 - s] / 10))
        up = 23 - (([46.0, 30.0][s]) - rs[s]) + 97.0
        rate = 10e6 * (min(log2(1 + 10 ** (up / 10)), 7.4) if up >= -5 else 0.0)
        assert cov.serving[k] == s
        assert cov.sinr_down_db[k] == pytest.approx(sinr, abs=1e-6)
        assert cov.rate_up_bps[k] == pytest.approx(rate, rel=1e-9, abs=1e-3)


def test_client_uplink_summary_reads_rates_and_statuses(tmp_path: Path) -> None:
    path = _two_cell_run(tmp_path / "r")
    pd.DataFrame({"round": [0, 1, 2], "client": ["phone00000"] * 3, "bs": ["bs1", "bs0", "bs0"],
                  "status": ["completed", "straggler", "dropout"]}).to_parquet(
        path / "clients.parquet")
    pd.DataFrame({"t_s": [1.0, 2.0, 3.0], "round": [0, 0, 1],
                  "node": ["phone00000", "cloud", "phone00000"],
                  "kind": ["transfer"] * 3, "tag": ["upload", "download", "upload"],
                  "bytes": [1e6, 5e6, 3e6], "seconds": [1.0, 1.0, 3.0]}).to_parquet(
        path / "events.parquet")
    s = client_uplink_summary(RunDir(path)).set_index("client").loc["phone00000"]
    assert s["bs"] == "bs1"  # the cell at its first selection
    assert s["rate_up_bps"] == pytest.approx(8 * 4e6 / 4.0)  # downloads are not uplink
    assert (s["stragglers"], s["dropouts"]) == (1, 1)
    paths = plot_coverage(path, tmp_path / "fig", formats=("png",))
    assert_readable_png(paths[0])


def _fedmoe_scenarios() -> list[Path]:
    """Shipped scenarios whose protocol is fedmoe, read from the raw YAML: validating them here,
    at collection time, would fail the whole module on a machine without ``../shared``."""
    import yaml

    return [p for p in sorted((REPO / "scenarios").glob("*.yaml"))
            if ((yaml.safe_load(p.read_text()) or {}).get("protocol") or {}).get("name", "fedmoe") == "fedmoe"]


@pytest.mark.parametrize("path", [scenario_param(p) for p in _fedmoe_scenarios()])
def test_coverage_map_drawn_for_every_fedmoe_scenario(path: Path, tmp_path: Path) -> None:
    """The map of each shipped fedmoe scenario's own topology (full client count)."""
    from fedsim.build import build_graph
    from fedsim.config import load_scenario

    missing = missing_data_dir(path)
    if missing is not None:
        pytest.skip(f"no data at {missing}")

    loaded = load_scenario(path)
    g = build_graph(loaded)
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"node": n, "kind": d["kind"], "device_class": d.get("device_class"),
             "x": float(d["x"]), "y": float(d["y"]), "z": float(d["z"])}
            for n, d in sorted(g.nodes(data=True))]
    pd.DataFrame(rows).to_parquet(run / "nodes.parquet")
    pd.DataFrame({"round": [0], "t_end_s": [1.0]}).to_parquet(run / "rounds.parquet")
    (run / "manifest.json").write_text(json.dumps(
        {"seed": 0, "scenario": loaded.scenario.model_dump(mode="json")}))
    paths = plot_coverage(run, tmp_path / "fig", resolution=120, formats=("png",))
    assert [p.name for p in paths] == ["coverage.png"]
    assert_readable_png(paths[0])


def test_coverage_equals_the_network_for_clients_standing_at_the_points(tmp_path: Path) -> None:
    """The map is the simulator's radio model: at sampled points, its serving cell, downlink SINR
    and uplink rate equal what :class:`Network` computes for a client standing there.

    Small cells with their own bandwidth (one per node, one from ``small_bandwidth_*_hz``),
    clients transmitting at 10 dBm (not the 23 dBm default), cells selected by uplink SNR,
    downlink interference; no shadowing, fading or LOS draw (log-distance), so the network's
    channel is the map's mean channel."""
    import dataclasses

    from fedsim.devices.params import default_device_classes
    from fedsim.engine import Simulation
    from fedsim.net.network import Network
    from fedsim.net.params import ChannelParams, NetworkParams
    from fedsim.net.topology import explicit

    cp = ChannelParams(model="log_distance", fading="none", shadowing_std_db=0.0, attachment="uplink",
                       interference_load_factor=0.5, max_spectral_efficiency_bps_hz=30.0,
                       small_bandwidth_up_hz=40e6, small_bandwidth_down_hz=30e6)
    pts = np.random.default_rng(5).uniform([-150, -150], [450, 450], size=(40, 2))
    nodes = [{"id": "cloud", "kind": "cloud", "x": 0, "y": 900},
             {"id": "m0", "kind": "bs_macro", "x": 0, "y": 0, "z": 25},
             {"id": "s1", "kind": "bs_small", "x": 300, "y": 0, "z": 10,
              "bandwidth_up_hz": 5e6, "bandwidth_down_hz": 10e6},
             {"id": "s2", "kind": "bs_small", "x": 0, "y": 300, "z": 10}]
    nodes += [{"id": f"c{k:02d}", "kind": "client", "device_class": "phone", "x": x, "y": y, "z": 1.5}
              for k, (x, y) in enumerate(pts)]
    edges = [{"src": b, "dst": "cloud", "capacity_bps": 1e13, "latency_s": 0.001} for b in ("m0", "s1", "s2")]
    classes = default_device_classes()
    classes["phone"] = dataclasses.replace(classes["phone"], mobility="static", tx_power_dbm=10.0)
    sim = Simulation(0)
    net = Network(sim, explicit(nodes, edges), NetworkParams(channel=cp), classes=classes)

    run = tmp_path / "run"
    run.mkdir()
    sim.rec.frame("nodes").to_parquet(run / "nodes.parquet")
    (run / "manifest.json").write_text(json.dumps({"seed": 0, "scenario": {"channel": dataclasses.asdict(cp)}}))
    cov = coverage_at(radio_of(RunDir(run)), pts, 1.5)

    clients = [f"c{k:02d}" for k in range(len(pts))]
    bs_ids = ["m0", "s1", "s2"]
    assert [bs_ids[j] for j in cov.serving] == [net.serving_bs(c) for c in clients]
    assert len(set(cov.serving.tolist())) == 3  # every cell serves some point
    assert cov.rate_up_bps == pytest.approx([net.nominal_rate_bps(c, "up") for c in clients], rel=1e-12)
    se_down = np.minimum(np.log2(1.0 + 10.0 ** (cov.sinr_down_db / 10.0)), 30.0)
    se_down = np.where(cov.sinr_down_db >= cp.outage_sinr_db, se_down, 0.0)
    assert se_down == pytest.approx([net.spectral_efficiency(c, "down") for c in clients], rel=1e-12)
