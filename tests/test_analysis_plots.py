"""Tests of the analysis package: run-directory loading, figures, comparison, info."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from tests.rundir_factory import make_run_dir
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    sys.path.insert(0, str(Path(__file__).parent))
    from rundir_factory import make_run_dir

from analysis.compare import aggregate_cells, compare_runs, plot_metric_vs_param, run_summary
from analysis.info import summary_table
from analysis.plots import (
    plot_accuracy,
    plot_assignment_heatmap,
    plot_client_timeline,
    plot_expert_load,
    plot_gating_heatmap,
    plot_latency_cdf,
    plot_link_utilisation,
    plot_request_latency,
    plot_run,
    plot_topology,
)
from analysis.rundir import RunDir

FEDMOE_STEMS = [
    "accuracy_vs_round",
    "accuracy_vs_time",
    "round_breakdown",
    "latency_cdf",
    "client_timeline",
    "link_utilisation",
    "topology",
    "coverage",
    "assignment_heatmap",
    "expert_load",
]
NMOE_EXTRA = ["request_latency", "gating_heatmap"]


def assert_readable_png(path: Path) -> None:
    """``path`` is a PNG that matplotlib can read and is not blank."""
    from matplotlib.image import imread

    assert path.is_file(), f"missing {path}"
    with path.open("rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.02, f"{path} looks blank"
    # more than a handful of distinct colours: something was drawn
    q = (rgb[::2, ::2].reshape(-1, 3) * 255).astype(np.int64)
    assert np.unique(q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).size > 8


# ---------------------------------------------------------------------------
# RunDir


def test_rundir_loads_lazily_and_names_missing_file(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "r", rounds=4, omit=["links"])
    run = RunDir(path)
    assert run._cache == {}
    assert len(run.rounds) == 4
    assert "rounds" in run._cache and "clients" not in run._cache
    assert run.name == "synthetic" and run.policy == "fitness" and run.protocol == "fedmoe"
    assert run.seed == 0
    assert not run.has("links") and run.maybe("links") is None
    with pytest.raises(FileNotFoundError, match="links.parquet"):
        _ = run.links


def test_rundir_missing_dir_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        RunDir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        _ = RunDir(tmp_path / "empty").manifest


# ---------------------------------------------------------------------------
# plots


def test_plot_run_fedmoe_writes_all_figures(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "r", rounds=8, eval_every=2)
    written = plot_run(path)
    names = {p.name for p in written}
    for stem in FEDMOE_STEMS:
        assert f"{stem}.png" in names and f"{stem}.svg" in names, stem
        assert_readable_png(path / "figures" / f"{stem}.png")
        assert (path / "figures" / f"{stem}.svg").stat().st_size > 1000
    for stem in NMOE_EXTRA:
        assert f"{stem}.png" not in names
    assert all(p.parent == path / "figures" for p in written)
    if "matplotlib.pyplot" in sys.modules:  # figures never go through pyplot
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_plot_run_nmoe_writes_request_figures(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "n", protocol="nmoe", rounds=5)
    assert not (path / "assignments.parquet").exists()
    names = {p.name for p in plot_run(path, tmp_path / "out")}
    for stem in NMOE_EXTRA:
        assert f"{stem}.png" in names
        assert_readable_png(tmp_path / "out" / f"{stem}.png")
    # nmoe has no server-side assignments: no assignment heatmap
    assert "assignment_heatmap.png" not in names


def test_plot_run_minimal_run_dir_skips_gracefully(tmp_path: Path) -> None:
    optional = ["clients", "events", "links", "nodes", "edges", "assignments", "experts"]
    path = make_run_dir(tmp_path / "m", rounds=6, omit=optional)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "rounds.parquet"]
    names = {p.name for p in plot_run(path)}
    assert names == {
        f"{s}.{f}"
        for s in ("accuracy_vs_round", "accuracy_vs_time", "round_breakdown")
        for f in ("png", "svg")
    }
    run = RunDir(path)
    out = tmp_path / "o"
    assert plot_latency_cdf(run, out) == []
    assert plot_client_timeline(run, out) == []
    assert plot_link_utilisation(run, out) == []
    assert plot_topology(run, out) == []
    assert plot_assignment_heatmap(run, out) == []
    assert plot_request_latency(run, out) == []
    assert plot_gating_heatmap(run, out) == []


def test_assignment_heatmap_falls_back_on_clients_experts(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "r", rounds=4, omit=["assignments", "experts"])
    out = tmp_path / "o"
    assert plot_assignment_heatmap(path, out, formats=("png",)) == [out / "assignment_heatmap.png"]
    assert plot_expert_load(path, out, formats=("png",)) == [out / "expert_load.png"]
    assert_readable_png(out / "expert_load.png")


def test_many_clients_render(tmp_path: Path) -> None:
    """A few thousand clients are aggregated, not drawn one by one."""
    path = make_run_dir(
        tmp_path / "big", rounds=4, n_clients=2000, n_bs=20, clients_per_round=400, n_experts=16
    )
    out = tmp_path / "figs"
    for fn in (plot_client_timeline, plot_assignment_heatmap, plot_topology, plot_link_utilisation):
        paths = fn(path, out, formats=("png",))
        assert paths
        assert_readable_png(paths[0])


def test_accuracy_overlay_labels_duplicate_names(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a", seed=1, rounds=4)
    b = make_run_dir(tmp_path / "b", seed=2, rounds=4)
    paths = plot_accuracy([a, b], tmp_path / "o", metric="f1", stem="f1")
    assert {p.name for p in paths} == {
        "f1_vs_round.png",
        "f1_vs_round.svg",
        "f1_vs_time.png",
        "f1_vs_time.svg",
    }
    svg = (tmp_path / "o" / "f1_vs_round.svg").read_text()
    assert "seed 1" in svg and "seed 2" in svg


# ---------------------------------------------------------------------------
# compare


def test_compare_runs_numbers(tmp_path: Path) -> None:
    acc_a = [0.2, 0.5, 0.72, 0.81, 0.79]
    acc_b = [0.1, 0.3, 0.4, 0.5, 0.6]
    a = make_run_dir(
        tmp_path / "a",
        name="fast",
        policy="fitness",
        seed=3,
        rounds=5,
        accuracy=acc_a,
        round_durations=[10, 20, 30, 40, 50],
    )
    b = make_run_dir(
        tmp_path / "b",
        name="slow",
        policy="random",
        seed=4,
        rounds=5,
        accuracy=acc_b,
        round_durations=[100] * 5,
    )
    out = tmp_path / "cmp"
    df = compare_runs([a, b], out, target_accuracy=0.7)
    fa, sb = df.iloc[0], df.iloc[1]
    assert fa["name"] == "fast" and fa["policy"] == "fitness" and sb["policy"] == "random"
    assert fa["seed"] == 3
    assert fa["final_accuracy"] == pytest.approx(0.79)
    assert fa["best_accuracy"] == pytest.approx(0.81)
    assert fa["rounds_to_target"] == 3  # round 2 (0-based) reaches 0.72
    assert fa["sim_s_to_target"] == pytest.approx(60.0)  # 10 + 20 + 30
    assert fa["sim_s_total"] == pytest.approx(150.0)
    assert math.isnan(sb["rounds_to_target"]) and math.isnan(sb["sim_s_to_target"])
    assert sb["best_accuracy"] == pytest.approx(0.6)
    rounds_a = pd.read_parquet(a / "rounds.parquet")
    assert fa["stragglers"] == rounds_a["stragglers"].sum()
    assert fa["ooms"] == rounds_a["ooms"].sum()
    assert fa["bytes_total"] == pytest.approx(
        rounds_a["bytes_up"].sum() + rounds_a["bytes_down"].sum()
    )
    for f in ("summary.csv", "summary.md", "accuracy_vs_round.png", "accuracy_vs_time.png"):
        assert (out / f).is_file(), f
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv["name"]) == ["fast", "slow"]
    md = (out / "summary.md").read_text()
    assert "| fast |" in md and "rounds_to_target" in md
    assert_readable_png(out / "accuracy_vs_time.png")


def test_rounds_to_target_skips_unevaluated_rounds(tmp_path: Path) -> None:
    # evaluated rounds: 0, 3, 5 (last); round 1 and 2 would exceed the target but are NaN
    a = make_run_dir(
        tmp_path / "a",
        rounds=6,
        eval_every=3,
        accuracy=[0.1, 0.9, 0.9, 0.95, 0.2, 0.5],
        round_durations=[1.0] * 6,
    )
    s = run_summary(a, target_accuracy=0.9)
    assert s["rounds_to_target"] == 4
    assert s["sim_s_to_target"] == pytest.approx(4.0)
    assert s["final_accuracy"] == pytest.approx(0.5)
    assert math.isnan(run_summary(a)["rounds_to_target"])


def test_aggregate_cells_ci_matches_hand_computation() -> None:
    df = pd.DataFrame(
        {
            "policy": ["a", "a", "a", "b", "b", "c"],
            "clients": [10, 10, 10, 10, 10, 10],
            "acc": [0.70, 0.74, 0.78, 0.5, float("nan"), 0.9],
        }
    )
    agg = aggregate_cells(df, ["policy", "clients"], ["acc"]).set_index("policy")
    # a: mean 0.74, s = 0.04, n = 3, t_{0.975,2} = 4.302652729911275
    assert agg.loc["a", "acc_mean"] == pytest.approx(0.74)
    assert agg.loc["a", "acc_std"] == pytest.approx(0.04)
    assert agg.loc["a", "acc_n"] == 3
    half = 4.302652729911275 * 0.04 / math.sqrt(3)
    assert agg.loc["a", "acc_ci95"] == pytest.approx(half)
    assert agg.loc["a", "acc_lo"] == pytest.approx(0.74 - half)
    assert agg.loc["a", "acc_hi"] == pytest.approx(0.74 + half)
    # NaN left out: b has n = 1, no interval
    assert agg.loc["b", "acc_n"] == 1 and agg.loc["b", "acc_mean"] == pytest.approx(0.5)
    assert math.isnan(agg.loc["b", "acc_ci95"])
    assert agg.loc["c", "acc_n"] == 1
    with pytest.raises(KeyError, match="nope"):
        aggregate_cells(df, ["nope"], ["acc"])


def test_plot_metric_vs_param(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        dict(
            policy=p,
            n_clients=n,
            seed=s,
            final_accuracy=0.6 + 0.02 * k + 0.01 * np.log(n) + rng.normal(0, 0.01),
        )
        for k, p in enumerate(["random", "fitness", "capacity"])
        for n in (10, 100, 1000)
        for s in range(4)
    ]
    df = pd.DataFrame(rows)
    paths = plot_metric_vs_param(df, "n_clients", "final_accuracy", out=tmp_path)
    assert {p.name for p in paths} == {
        "final_accuracy_vs_n_clients.png",
        "final_accuracy_vs_n_clients.svg",
    }
    assert_readable_png(paths[0])
    # categorical parameter, pre-aggregated input, explicit file name
    df["mobility"] = df["n_clients"].map({10: "static", 100: "walk", 1000: "vehicle"})
    agg = aggregate_cells(df, ["policy", "mobility"], ["final_accuracy"])
    paths = plot_metric_vs_param(agg, "mobility", "final_accuracy", out=tmp_path / "mob.png")
    assert paths[0] == tmp_path / "mob.png"
    assert_readable_png(paths[0])


# ---------------------------------------------------------------------------
# info


def test_summary_table(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "r", rounds=5, seed=7, omit=["clients", "links"])
    rows = summary_table(path)
    d = dict(rows)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rows)
    assert d["scenario"] == "synthetic"
    assert d["protocol"] == "fedmoe" and d["policy"] == "fitness"
    assert d["seed"] == "7" and d["rounds"] == "5" and d["status"] == "completed"
    r = pd.read_parquet(path / "rounds.parquet")
    assert d["final accuracy"] == f"{r['accuracy'].iloc[-1]:.4f}"
    assert d["stragglers"] == f"{int(r['stragglers'].sum()):,}"
    assert "GB" in d["bytes moved"] or "MB" in d["bytes moved"]
    assert "min" in d["simulated time"]


def test_summary_table_nmoe_running(tmp_path: Path) -> None:
    path = make_run_dir(tmp_path / "n", protocol="nmoe", rounds=3, status="running")
    man = json.loads((path / "manifest.json").read_text())
    man["scenario"]["run"]["rounds"] = 10
    # a real nmoe manifest holds the default fedmoe section, alignment included
    man["scenario"].setdefault("protocol", {}).setdefault("fedmoe", {})["alignment"] = {"policy": "load_balanced"}
    (path / "manifest.json").write_text(json.dumps(man))
    d = dict(summary_table(path))
    assert d["policy"] == "-" and d["protocol"] == "nmoe"
    assert d["rounds"] == "3 / 10" and d["status"] == "running"


def test_failed_run_with_no_rounds(tmp_path: Path) -> None:
    """A run that failed before its first round: nothing to plot, info still works."""
    path = make_run_dir(tmp_path / "f", rounds=3, status="failed")
    r = pd.read_parquet(path / "rounds.parquet")
    r.iloc[0:0].to_parquet(path / "rounds.parquet", index=False)
    for name in ("clients", "experts", "assignments", "events"):
        (path / f"{name}.parquet").unlink()
    assert plot_accuracy(path, tmp_path / "o") == []
    written = plot_run(path, tmp_path / "o")
    assert {p.stem for p in written} <= {"link_utilisation", "topology", "coverage"}
    d = dict(summary_table(path))
    assert d["status"] == "failed" and d["final accuracy"] == "—"
    s = run_summary(path, target_accuracy=0.5)
    assert s["rounds"] == 0 and math.isnan(s["rounds_to_target"])


def test_time_unit_and_ecdf_helpers() -> None:
    from analysis._style import ecdf, time_unit

    assert time_unit(90) == (1.0, "s")
    assert time_unit(1800) == (60.0, "min")
    assert time_unit(5 * 3600) == (3600.0, "h")
    assert time_unit(10 * 86400) == (86400.0, "days")
    assert time_unit(float("nan")) == (1.0, "s")
    x, p = ecdf([3.0, 1.0, float("nan"), 2.0])
    assert list(x) == [1.0, 2.0, 3.0] and list(p) == pytest.approx([1 / 3, 2 / 3, 1.0])
    x, p = ecdf(np.arange(100_000), max_points=1000)
    assert x.size <= 1000 and x[0] == 0 and x[-1] == 99_999 and p[-1] == 1.0


def test_binned_rate_spreads_each_transfer_over_its_interval() -> None:
    """Hand-computed: 16 bits over [0, 2) and 8 bits over [1, 3), plus 4 bits at t = 2.5 (issue 30)."""
    from analysis.plots_links import binned_rate

    r = binned_rate(np.array([0.0, 1.0, 2.5]), np.array([2.0, 3.0, 2.5]), np.array([16.0, 8.0, 4.0]),
                    np.array([0.0, 1.0, 2.0, 3.0]))
    assert r == pytest.approx([8.0, 12.0, 8.0])
    # bins finer than the run: the bytes are conserved
    edges = np.linspace(0.0, 3.0, 31)
    assert (binned_rate(np.array([0.0, 1.0]), np.array([2.0, 3.0]), np.array([16.0, 8.0]), edges)
            * np.diff(edges)).sum() == pytest.approx(24.0)


def test_link_figure_lists_idle_cells_and_never_online_clients_are_marked(tmp_path: Path) -> None:
    """Idle cells are named under the cell panels; never-online clients get a row in the timeline
    and a labelled row in the heatmap (issue 30)."""
    path = make_run_dir(tmp_path / "r", rounds=4, n_clients=12, n_bs=3)
    nodes = pd.read_parquet(path / "nodes.parquet")
    idle_bs = nodes[nodes["kind"].astype(str).str.startswith("bs_")].iloc[:1].assign(node="bs9")
    offline = nodes[nodes["kind"] == "client"].iloc[:2].assign(node=["c900", "c901"])
    pd.concat([nodes, idle_bs, offline]).to_parquet(path / "nodes.parquet", index=False)
    man = json.loads((path / "manifest.json").read_text())
    man["clients"] = {"offline_whole_run_ids": ["c900", "c901"]}
    (path / "manifest.json").write_text(json.dumps(man))

    from matplotlib.figure import Figure
    from matplotlib.text import Text

    seen: dict[str, list[str]] = {}
    real = Figure.savefig

    def spy(fig, fname, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen[Path(fname).stem] = [t.get_text() for t in fig.findobj(Text)]
        return real(fig, fname, *a, **k)

    Figure.savefig = spy
    try:
        for fn in (plot_link_utilisation, plot_client_timeline, plot_assignment_heatmap):
            assert fn(path, tmp_path / "o", formats=("png",))
    finally:
        Figure.savefig = real
    assert any("Idle cells (carried nothing): bs9" in t for t in seen["link_utilisation"])
    assert "c900" in seen["client_timeline"] and any("never online (2)" in t for t in seen["client_timeline"])
    assert "c901 (never online)" in seen["assignment_heatmap"]


def test_compare_groups_seeds_into_bands_and_draws_no_staleness_for_sync(tmp_path: Path) -> None:
    """fedsim compare: seeds of one label form a band; trade-off and straggler share per group with
    hand-checkable numbers; no staleness histogram for sync runs (issue 30)."""
    from analysis.plots_sweep import _on_grid, per_run_table, runs_by_label

    runs = [make_run_dir(tmp_path / f"{pol}{s}", name="x", policy=pol, seed=s, rounds=4,
                         accuracy=[0.2, 0.4, 0.6, 0.7 + 0.01 * s], round_durations=[10, 10, 10, 10])
            for pol in ("greedy", "random") for s in (0, 1)]
    out = tmp_path / "cmp"
    compare_runs(runs, out, target_accuracy=0.5)
    for stem in ("accuracy_vs_time_by_cell", "accuracy_vs_bytes_by_cell", "tradeoff", "straggler_share"):
        assert_readable_png(out / f"{stem}.png")
    assert not (out / "staleness_hist.png").exists()
    groups = runs_by_label([RunDir(r) for r in runs])
    assert list(groups) == ["x (greedy)", "x (random)"] and all(len(v) == 2 for v in groups.values())
    t = per_run_table(groups, 0.5)
    assert t["sim_s_to_target"].tolist() == [30.0] * 4  # third round, 10 s each
    r0 = pd.read_parquet(runs[0] / "rounds.parquet")
    assert t["straggler_share"].iloc[0] == pytest.approx(r0["stragglers"].sum() / r0["selected"].sum())
    # a seed's accuracy at x is its last evaluation at or before x; it keeps its final value after its end
    curve = pd.DataFrame({"t_s": [10.0, 20.0], "bytes": [1.0, 2.0], "accuracy": [0.3, 0.5]})
    m = _on_grid([curve], "t_s", np.array([5.0, 10.0, 15.0, 25.0]))
    assert np.isnan(m[0, 0]) and m[0, 1:].tolist() == [0.3, 0.3, 0.5]


def test_link_figure_falls_back_on_link_samples_without_cell_transfers(tmp_path: Path) -> None:
    """No transfer names its cell (no events, or nmoe's exchanges): the sampled loads of links.parquet."""
    from analysis.plots_links import sampled_throughput

    path = make_run_dir(tmp_path / "r", rounds=4, omit=["events"])
    edges, rates = sampled_throughput(RunDir(path))
    lk = pd.read_parquet(path / "links.parquet")
    lk = lk[lk["t_s"] > 0]  # a sample's t_s ends its interval: one at 0 covers nothing
    up = lk[(lk["node"] == "bs0") & (lk["kind"] == "uplink")]
    assert edges[0] == 0.0 and edges[1:].tolist() == sorted(lk["t_s"].unique().tolist())
    assert rates[("bs0", "up")].sum() == pytest.approx(up["load_bps"].sum())
    assert plot_link_utilisation(path, tmp_path / "o", formats=("png",))
