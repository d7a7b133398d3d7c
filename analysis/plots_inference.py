"""nmoe inference figures: request latency and the gating pattern.

Re-exported by :mod:`analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    OKABE_ITO,
    ecdf,
    natural_key,
    need,
    new_figure,
    save,
    skip,
    style,
)
from analysis.plots_experts import binned_heatmap
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

__all__ = ["plot_request_latency", "plot_gating_heatmap"]


# ---------------------------------------------------------------------------
# nmoe inference


def plot_request_latency(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """nmoe inference: latency CDF (all / local / remote) and mean latency breakdown.

    Reads ``requests.parquet``; latencies in ms (or s when large).
    """
    run = as_rundir(run)
    if not need(run, "request latency", "requests"):
        return []
    rq = run.requests
    if rq.empty:
        return skip(run, "request latency", "requests.parquet is empty")
    lat = rq["latency_s"].to_numpy(float)
    big = float(np.nanmax(lat)) >= 5.0
    div, unit = (1.0, "s") if big else (1e-3, "ms")
    local = rq["local"].astype(bool) if "local" in rq.columns else pd.Series(False, index=rq.index)
    with style():
        fig = new_figure(12.0, 4.8)
        ax, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
        for sel, name, col, ls in (
            (slice(None), "all", OKABE_ITO[7], "-"),
            (local, "local expert", OKABE_ITO[2], "--"),
            (~local, "remote expert", OKABE_ITO[3], "-."),
        ):
            v = rq.loc[sel, "latency_s"].to_numpy(float)
            if v.size == 0:
                continue
            x, p = ecdf(v)
            ax.step(
                x / div, p, where="post", color=col, ls=ls, lw=2, label=f"{name} (n={v.size:,})"
            )
        ax.set_xlabel(f"Request latency [{unit}]")
        ax.set_ylabel("Fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.set_title("Inference latency CDF")
        ax.legend(loc="lower right")
        parts = [
            (c, n)
            for c, n in (
                ("t_extract_s", "feature extraction"),
                ("t_network_s", "network"),
                ("t_queue_s", "queueing"),
                ("t_expert_s", "expert"),
            )
            if c in rq.columns
        ]
        groups = [("local", local), ("remote", ~local)]
        groups = [(g, m) for g, m in groups if m.any()]
        if parts and groups:
            bottom = np.zeros(len(groups))
            pc = [OKABE_ITO[0], OKABE_ITO[1], "#BBBBBB", OKABE_ITO[2]]
            for (c, n), col in zip(parts, pc):
                v = np.array([rq.loc[m, c].mean() for _, m in groups]) / div
                ax2.bar([g for g, _ in groups], v, bottom=bottom, color=col, label=n, width=0.6)
                bottom += v
            ax2.set_ylabel(f"Mean latency [{unit}]")
            ax2.set_title("Mean latency breakdown")
            ax2.legend(loc="upper left", fontsize=9)
            ax2.grid(axis="x", visible=False)
        else:
            ax2.set_axis_off()
        fig.suptitle(f"nmoe inference — {run.label}")
        return save(fig, out_dir, "request_latency", formats)


def plot_gating_heatmap(
    run: RunLike,
    out_dir: str | Path,
    *,
    max_cells: int = 80,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """nmoe gating pattern: requests from each origin client routed to each expert.

    In nmoe the expert id is the id of the client holding it. Counts are
    sum-pooled into at most ``max_cells`` x ``max_cells`` blocks for large
    networks; colour is on a log scale when counts span more than two decades.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    run = as_rundir(run)
    if not need(run, "gating heatmap", "requests"):
        return []
    rq = run.requests
    if rq.empty or "experts" not in rq.columns:
        return skip(run, "gating heatmap", "no request expert choices")
    p = rq[["client", "experts"]].copy()
    p["expert"] = p["experts"].fillna("").astype(str).str.split(",")
    p = p.explode("expert")
    p["expert"] = p["expert"].str.strip()
    p = p[p["expert"] != ""]
    if p.empty:
        return skip(run, "gating heatmap", "no request expert choices")
    p["client"] = p["client"].astype(str)
    ids = sorted(set(p["client"]) | set(p["expert"]), key=natural_key)
    if run.has("nodes"):
        nd = run.nodes
        ids = sorted(
            set(ids) | set(nd.loc[nd["kind"] == "client", "node"].astype(str)), key=natural_key
        )
    piv = p.groupby(["client", "expert"]).size().unstack(fill_value=0)
    piv = piv.reindex(index=ids, columns=ids, fill_value=0)
    mat, r, c = binned_heatmap(piv.to_numpy(float), max_cells, max_cells)
    n = len(ids)
    with style():
        fig = new_figure(8.4, 7.0)
        ax = fig.add_subplot()
        pos = mat[mat > 0]
        norm = (
            LogNorm(vmin=max(1.0, pos.min()), vmax=pos.max())
            if (pos.size and pos.max() / max(pos.min(), 1.0) > 100)
            else None
        )
        shown = np.ma.masked_equal(mat, 0)
        im = ax.imshow(shown, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        ax.set_facecolor("#f2f2f2")
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("Requests routed")
        if norm is None:
            cb.locator = MaxNLocator(integer=True)
            cb.update_ticks()
        if r == 1 and n <= 40:
            ax.set_xticks(range(n))
            ax.set_xticklabels(ids, rotation=90, fontsize=8)
            ax.set_yticks(range(n))
            ax.set_yticklabels(ids, fontsize=8)
            ax.set_xlabel("Chosen expert (holding client)")
            ax.set_ylabel("Origin client")
        else:
            ax.set_xlabel(f"Chosen expert: client group ({c} clients per column, id order)")
            ax.set_ylabel(f"Origin client group ({r} clients per row, id order)")
        ax.set_title(f"Gating pattern — {run.label}")
        return save(fig, out_dir, "gating_heatmap", formats)
