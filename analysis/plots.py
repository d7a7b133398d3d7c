"""Figures of saved runs.

Every function reads :class:`~analysis.rundir.RunDir` objects (or paths),
writes PNG (130 dpi) and SVG files into ``out_dir`` and returns the written
paths. When a figure's inputs are absent from the run directory the function
logs why and returns an empty list; it never raises for a missing optional
table. Figures aggregate rather than draw one artist per client, so runs with
thousands of clients still render quickly.

:func:`plot_run` writes every applicable figure of one run into
``RUN_DIR/figures``. The figure families live in their own modules and are
re-exported here: :mod:`analysis.plots_training` (accuracy, round breakdown,
latency, client timeline), :mod:`analysis.plots_experts`,
:mod:`analysis.plots_inference`, :mod:`analysis.plots_coverage`; this module holds the network figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis._style import (
    FORMATS,
    colours,
    log,
    new_figure,
    save,
    style,
)
from analysis._style import need as _need
from analysis._style import skip as _skip
from analysis.plots_coverage import plot_coverage
from analysis.plots_experts import plot_assignment_heatmap, plot_expert_load
from analysis.plots_inference import plot_gating_heatmap, plot_request_latency
from analysis.plots_links import plot_link_utilisation
from analysis.plots_training import (
    plot_accuracy,
    plot_client_timeline,
    plot_latency_cdf,
    plot_round_breakdown,
)
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

__all__ = [
    "plot_accuracy",
    "plot_round_breakdown",
    "plot_latency_cdf",
    "plot_client_timeline",
    "plot_link_utilisation",
    "plot_topology",
    "plot_coverage",
    "plot_assignment_heatmap",
    "plot_expert_load",
    "plot_request_latency",
    "plot_gating_heatmap",
    "plot_run",
]


# ---------------------------------------------------------------------------
# network


#: device-class colours, distinct from the infrastructure marker colours
_CLIENT_COLOURS: tuple[str, ...] = (
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#882255",
    "#999933",
    "#44AA99",
)

_NODE_STYLE: dict[str, dict] = {
    "cloud": dict(marker="*", s=320, color="#000000", label="cloud"),
    "edge": dict(marker="s", s=150, color="#0072B2", label="edge server"),
    "bs_macro": dict(marker="^", s=190, color="#D55E00", label="macro BS"),
    "bs_small": dict(marker="^", s=90, color="#E69F00", label="small-cell BS"),
}


def plot_topology(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Map of the topology (x, y positions in m or km).

    Infrastructure nodes have distinct markers; wired links are drawn with a
    width proportional to the bytes they carried; clients are dots coloured by
    device class, joined to their final serving base station by thin lines.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    run = as_rundir(run)
    if not _need(run, "topology", "nodes"):
        return []
    nodes = run.nodes.dropna(subset=["x", "y"]).copy()
    if nodes.empty:
        return _skip(run, "topology", "no node positions")
    nodes["node"] = nodes["node"].astype(str)
    extent = float(max(np.ptp(nodes["x"]), np.ptp(nodes["y"]), 1.0))
    scale, unit = (1000.0, "km") if extent > 5000 else (1.0, "m")
    pos = {n: (x / scale, y / scale) for n, x, y in zip(nodes["node"], nodes["x"], nodes["y"])}
    clients = nodes[nodes["kind"] == "client"]
    n_cl = len(clients)
    with style():
        fig = new_figure(9.0, 7.5)
        ax = fig.add_subplot()
        handles: list = []
        edges = run.maybe("edges")
        if edges is not None and not edges.empty:
            e = edges.copy()
            e["src"], e["dst"] = e["src"].astype(str), e["dst"].astype(str)
            e = e[e["src"].isin(pos) & e["dst"].isin(pos)]
            wl = e[e["kind"] == "wireless"]
            if not wl.empty:
                segs = [(pos[a], pos[b]) for a, b in zip(wl["src"], wl["dst"])]
                alpha = 0.35 if n_cl <= 500 else 0.12
                ax.add_collection(
                    LineCollection(segs, colors="0.55", linewidths=0.4, alpha=alpha, zorder=1)
                )
                handles.append(Line2D([], [], color="0.55", lw=0.8, label="client-BS association"))
            wd = e[e["kind"] == "wired"]
            if not wd.empty:
                b = wd["bytes_carried"].fillna(0.0).to_numpy(float)
                bmax = float(b.max()) if b.size and b.max() > 0 else 1.0
                widths = 0.8 + 6.0 * np.sqrt(b / bmax)
                segs = [(pos[a], pos[c]) for a, c in zip(wd["src"], wd["dst"])]
                ax.add_collection(
                    LineCollection(
                        segs,
                        colors="#56B4E9",
                        linewidths=widths,
                        alpha=0.9,
                        zorder=2,
                        capstyle="round",
                    )
                )
                handles.append(
                    Line2D(
                        [],
                        [],
                        color="#56B4E9",
                        lw=4,
                        label=f"wired link (width ∝ √bytes, max {bmax / 1e9:.3g} GB)",
                    )
                )
        if n_cl:
            dc = clients["device_class"].fillna("unknown").astype(str)
            classes = sorted(dc.unique())
            palette = (
                _CLIENT_COLOURS if len(classes) <= len(_CLIENT_COLOURS) else colours(len(classes))
            )
            ccols = dict(zip(classes, palette))
            size = 18 if n_cl <= 200 else (8 if n_cl <= 2000 else 3)
            # one scatter in a fixed shuffled order so no class hides the others
            order = np.random.default_rng(0).permutation(n_cl)
            ax.scatter(
                clients["x"].to_numpy(float)[order] / scale,
                clients["y"].to_numpy(float)[order] / scale,
                s=size,
                c=[ccols[v] for v in dc.to_numpy()[order]],
                zorder=3,
                linewidths=0,
            )
            counts = dc.value_counts()
            for cls in classes:
                handles.insert(
                    0,
                    Line2D(
                        [],
                        [],
                        ls="none",
                        marker="o",
                        ms=6,
                        color=ccols[cls],
                        label=f"client: {cls} ({counts[cls]:,})",
                    ),
                )
        for kind, st in _NODE_STYLE.items():
            sel = nodes[nodes["kind"] == kind]
            if sel.empty:
                continue
            ax.scatter(
                sel["x"] / scale,
                sel["y"] / scale,
                marker=st["marker"],
                s=st["s"],
                color=st["color"],
                edgecolors="white",
                linewidths=0.8,
                zorder=4,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="none",
                    marker=st["marker"],
                    ms=min(14.0, 0.8 * float(np.sqrt(st["s"]))),
                    color=st["color"],
                    label=f"{st['label']} ({len(sel):,})",
                )
            )
        ax.set_aspect("equal", adjustable="datalim")
        ax.autoscale_view()
        ax.set_xlabel(f"x [{unit}]")
        ax.set_ylabel(f"y [{unit}]")
        ax.set_title(f"Topology — {run.label}")
        n_dc = sum(1 for h in handles if h.get_label().startswith("client:"))
        links = [h for h in handles if h.get_marker() in ("None", None, "")]
        points = [h for h in handles if h not in links]
        ax.legend(
            handles=points[:n_dc][::-1] + points[n_dc:] + links,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=9,
        )
        return save(fig, out_dir, "topology", formats)


# ---------------------------------------------------------------------------


def _nmoe_stages(run: RunLike, out: Path, formats: Sequence[str]) -> list[Path]:
    """nmoe: the per-stage training cost figure (its accuracy is one number, on the last round)."""
    from analysis.nmoe_plots import plot_nmoe_stages

    return plot_nmoe_stages(run, out, formats=formats)


def plot_run(
    run_dir: RunLike,
    out_dir: str | Path | None = None,
    *,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write every applicable figure of one run; return the written paths.

    Figures go to ``out_dir`` (default ``RUN_DIR/figures``). A figure whose
    inputs are missing is skipped (logged); a figure that fails for another
    reason is logged with its traceback and the others are still written.
    """
    from analysis.staleness import plot_staleness

    run = as_rundir(run_dir)
    out = Path(out_dir) if out_dir is not None else run.figures_dir
    written: list[Path] = []
    jobs = [
        ("accuracy", lambda: plot_accuracy([run], out, formats=formats) if run.protocol != "nmoe" else _nmoe_stages(run, out, formats)),
        ("round breakdown", lambda: plot_round_breakdown(run, out, formats=formats)),
        ("latency CDF", lambda: plot_latency_cdf(run, out, formats=formats)),
        ("client timeline", lambda: plot_client_timeline(run, out, formats=formats)),
        ("link utilisation", lambda: plot_link_utilisation(run, out, formats=formats)),
        ("topology", lambda: plot_topology(run, out, formats=formats)),
        ("coverage map", lambda: plot_coverage(run, out, formats=formats)),
        ("assignment heatmap", lambda: plot_assignment_heatmap(run, out, formats=formats)),
        ("expert load", lambda: plot_expert_load(run, out, formats=formats)),
        ("request latency", lambda: plot_request_latency(run, out, formats=formats)),
        ("gating heatmap", lambda: plot_gating_heatmap(run, out, formats=formats)),
        # async modes only: in sync every update has staleness 0
        ("staleness histogram", lambda: plot_staleness(run, out, formats=formats) if run.aggregation not in ("sync", "-") else []),
    ]
    for what, job in jobs:
        try:
            written += job()
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            log.warning("figure %s failed for %s: %r", what, run.path, exc, exc_info=True)
    return written
