"""Figures of saved runs.

Every function reads :class:`~analysis.rundir.RunDir` objects (or paths),
writes PNG (130 dpi) and SVG files into ``out_dir`` and returns the written
paths. When a figure's inputs are absent from the run directory the function
logs why and returns an empty list; it never raises for a missing optional
table. Figures aggregate rather than draw one artist per client, so runs with
thousands of clients still render quickly.

:func:`plot_run` writes every applicable figure of one run into
``RUN_DIR/figures``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    OKABE_ITO,
    STATUS_COLOURS,
    colours,
    ecdf,
    log,
    new_figure,
    save,
    style,
    time_unit,
    unique_labels,
)
from analysis.rundir import RunDir, as_rundir

if TYPE_CHECKING:
    from matplotlib.axes import Axes

RunLike = RunDir | str | Path

__all__ = [
    "plot_accuracy",
    "plot_round_breakdown",
    "plot_latency_cdf",
    "plot_client_timeline",
    "plot_link_utilisation",
    "plot_topology",
    "plot_assignment_heatmap",
    "plot_expert_load",
    "plot_request_latency",
    "plot_gating_heatmap",
    "plot_run",
]


def _natural_key(v: object) -> list:
    """Sort key that orders ``c9`` before ``c10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(v))]


def _skip(run: RunDir, what: str, why: str) -> list[Path]:
    log.info("skipping %s for %s: %s", what, run.path, why)
    return []


def _need(run: RunDir, what: str, *tables: str) -> bool:
    missing = [t for t in tables if not run.has(t)]
    if missing:
        _skip(run, what, "missing " + ", ".join(f"{t}.parquet" for t in missing))
        return False
    return True


def _run_labels(runs: Sequence[RunDir]) -> list[str]:
    return unique_labels([r.label for r in runs], [f"seed {r.seed}" for r in runs])


# ---------------------------------------------------------------------------
# accuracy


def plot_accuracy(
    runs: RunLike | Sequence[RunLike],
    out_dir: str | Path,
    *,
    metric: str = "accuracy",
    stem: str = "accuracy",
    target: float | None = None,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Accuracy vs round and vs simulated time, one line per run.

    Writes ``{stem}_vs_round`` and ``{stem}_vs_time``. Rounds without an
    evaluation (NaN ``metric``) are skipped and the evaluated points joined.
    The time axis is the round end time (``t_end_s``) in s / min / h / days,
    whichever reads best.

    Args:
        runs: one run or several (overlaid; labels from run name and policy).
        metric: column of ``rounds.parquet`` (``accuracy``, ``f1``, ``auc``).
        target: optional target level drawn as a dashed horizontal line.
    """
    if isinstance(runs, (RunDir, str, Path)):
        runs = [runs]
    rds = [as_rundir(r) for r in runs]
    curves = []
    for r in rds:
        df = r.rounds
        if metric not in df.columns:
            _skip(r, f"{metric} curve", f"rounds.parquet has no '{metric}' column")
            continue
        df = df[np.isfinite(df[metric].astype(float))]
        if df.empty:
            _skip(r, f"{metric} curve", "no evaluated rounds")
            continue
        curves.append((r, df))
    if not curves:
        return []
    labels = _run_labels([r for r, _ in curves])
    tmax = max(float(df["t_end_s"].max()) for _, df in curves)
    div, unit = time_unit(tmax)
    cols = colours(len(curves))
    pretty = {"accuracy": "Accuracy", "f1": "F1 score", "auc": "AUC"}.get(metric, metric)
    ylabel = f"Test {pretty.lower() if metric != 'auc' else pretty}"
    written: list[Path] = []
    for xkind in ("round", "time"):
        with style():
            fig = new_figure(8.0, 4.8)
            ax = fig.add_subplot()
            for (_r, df), lab, c in zip(curves, labels, cols):
                x = df["round"] if xkind == "round" else df["t_end_s"] / div
                marker = "o" if len(df) <= 40 else None
                ax.plot(x, df[metric], label=lab, color=c, marker=marker, ms=4, lw=1.8)
            if target is not None:
                ax.axhline(target, ls="--", color="0.4", lw=1, label=f"target {target:g}")
            if xkind == "round":
                ax.set_xlabel("Round")
                ax.set_title(f"{pretty} vs round")
                ax.xaxis.get_major_locator().set_params(integer=True)
            else:
                ax.set_xlabel(f"Simulated time [{unit}]")
                ax.set_title(f"{pretty} vs simulated time")
            ax.set_ylabel(ylabel)
            if len(curves) > 1 or target is not None:
                ax.legend(loc="lower right", ncol=1 if len(curves) <= 8 else 2)
            written += save(fig, out_dir, f"{stem}_vs_{xkind}", formats)
    return written


# ---------------------------------------------------------------------------
# rounds


def plot_round_breakdown(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Stacked mean per-client phase times per round (download, compute, upload, waiting, server).

    Bars are the means over the round's completed clients (seconds); black
    dots mark the round duration. Beyond 200 rounds the bars become a stacked
    area.
    """
    run = as_rundir(run)
    df = run.rounds
    if df.empty:
        return _skip(run, "round breakdown", "rounds.parquet is empty")
    phases = [
        ("t_download_s", "download"),
        ("t_compute_s", "compute"),
        ("t_upload_s", "upload"),
        ("t_wait_s", "waiting"),
        ("t_server_s", "server (aggregation, idle)"),
    ]
    have = [(c, n) for c, n in phases if c in df.columns]
    if not have:
        return _skip(run, "round breakdown", "rounds.parquet has no phase columns")
    vals = [df[c].fillna(0.0).to_numpy(float) for c, _ in have]
    dur = df["duration_s"].to_numpy(float) if "duration_s" in df.columns else None
    tmax = max(
        float(np.nanmax(np.sum(vals, axis=0))), float(np.nanmax(dur)) if dur is not None else 0.0
    )
    div, unit = time_unit(tmax)
    palette = {"t_download_s": OKABE_ITO[0], "t_compute_s": OKABE_ITO[1], "t_upload_s": OKABE_ITO[2],
               "t_wait_s": "#BBBBBB", "t_server_s": "#555555"}
    cols = [palette[c] for c, _ in have]  # by name: a missing phase must not shift the colours
    x = df["round"].to_numpy()
    with style():
        fig = new_figure(max(8.0, min(14.0, 4 + 0.12 * len(x))), 4.8)
        ax = fig.add_subplot()
        if len(x) <= 200:
            bottom = np.zeros(len(x))
            for v, (_, n), c in zip(vals, have, cols):
                ax.bar(x, v / div, bottom=bottom, color=c, label=n, width=0.8, linewidth=0)
                bottom += v / div
        else:
            ax.stackplot(x, *[v / div for v in vals], labels=[n for _, n in have], colors=cols)
        if dur is not None:
            ax.plot(
                x,
                dur / div,
                ls="none",
                marker="o" if len(x) <= 60 else ".",
                ms=4,
                color="black",
                label="round duration",
            )
        ax.set_xlabel("Round")
        ax.set_ylabel(f"Mean time per completed client [{unit}]")
        ax.set_title(f"Round time breakdown — {run.label}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save(fig, out_dir, "round_breakdown", formats)


def plot_latency_cdf(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """CDF of per-client round latency (``latency_s``) of completed clients.

    Stragglers (clients that finished after the round closed) are drawn as a
    separate dashed CDF; the dotted vertical line is the median round duration.
    """
    run = as_rundir(run)
    if not _need(run, "latency CDF", "clients"):
        return []
    cl = run.clients
    comp = cl.loc[cl["status"] == "completed", "latency_s"].to_numpy(float)
    strag = cl.loc[cl["status"] == "straggler", "latency_s"].to_numpy(float)
    if comp.size == 0 and strag.size == 0:
        return _skip(run, "latency CDF", "no completed or straggler clients")
    both = np.concatenate([comp, strag])
    div, unit = time_unit(float(np.nanmax(both)))
    with style():
        fig = new_figure(8.0, 4.8)
        ax = fig.add_subplot()
        if comp.size:
            x, p = ecdf(comp)
            ax.step(
                x / div,
                p,
                where="post",
                color=STATUS_COLOURS["completed"],
                lw=2,
                label=f"completed (n={comp.size:,})",
            )
        if strag.size:
            x, p = ecdf(strag)
            ax.step(
                x / div,
                p,
                where="post",
                color=STATUS_COLOURS["straggler"],
                lw=2,
                ls="--",
                label=f"stragglers (n={strag.size:,})",
            )
            ax.plot(
                strag / div,
                np.zeros_like(strag),
                "|",
                color=STATUS_COLOURS["straggler"],
                ms=12,
                mew=1.2,
                clip_on=False,
            )
        med = float(run.rounds["duration_s"].median()) if "duration_s" in run.rounds else np.nan
        if np.isfinite(med):
            ax.axvline(med / div, color="0.3", ls=":", lw=1.2, label="median round duration (incl. server time)")
        ax.set_xlabel(f"Client round latency (dispatch to finish) [{unit}]")
        ax.set_ylabel("Fraction of clients")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Per-client round latency — {run.label}")
        ax.legend(loc="lower right")
        return save(fig, out_dir, "latency_cdf", formats)


def plot_client_timeline(
    run: RunLike,
    out_dir: str | Path,
    *,
    max_clients: int = 60,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Gantt chart of client participation: one bar per (round, client) from dispatch to end.

    Bars are coloured by status (completed, straggler, dropout, oom, skipped).
    With more than ``max_clients`` clients only those with the most failures
    (then most participations) are shown. Light vertical lines mark round ends.
    """
    run = as_rundir(run)
    if not _need(run, "client timeline", "clients"):
        return []
    cl = run.clients
    if cl.empty:
        return _skip(run, "client timeline", "clients.parquet is empty")
    n_all = cl["client"].nunique()
    fails = (cl["status"] != "completed").groupby(cl["client"]).sum()
    parts = cl.groupby("client").size()
    rank = pd.DataFrame({"fails": fails, "parts": parts}).sort_values(
        ["fails", "parts"], ascending=False
    )
    shown = list(rank.index[:max_clients])
    shown.sort(key=_natural_key)
    ypos = {c: i for i, c in enumerate(shown)}
    sub = cl[cl["client"].isin(ypos)]
    tmax = float(sub["t_end_s"].max())
    div, unit = time_unit(tmax)
    n = len(shown)
    with style():
        fig = new_figure(11.0, max(3.5, min(16.0, 1.5 + 0.2 * n)))
        ax = fig.add_subplot()
        min_w = tmax / div / 600.0
        for st, col in STATUS_COLOURS.items():
            s = sub[sub["status"] == st]
            if s.empty:
                continue
            y = s["client"].map(ypos).to_numpy()
            left = s["t_dispatch_s"].to_numpy(float) / div
            width = np.maximum((s["t_end_s"] - s["t_dispatch_s"]).to_numpy(float) / div, min_w)
            ax.barh(
                y, width, left=left, height=0.7, color=col, linewidth=0, label=f"{st} ({len(s):,})"
            )
        rounds = run.rounds
        if "t_end_s" in rounds.columns and len(rounds) <= 150:
            for t in rounds["t_end_s"].to_numpy(float):
                ax.axvline(t / div, color="0.6", lw=0.5, zorder=0)
        ax.set_yticks(range(n))
        fs = 9 if n <= 40 else 7
        ax.set_yticklabels([str(c) for c in shown], fontsize=fs)
        ax.set_ylim(-0.7, n - 0.3)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"Simulated time [{unit}]")
        ax.set_ylabel("Client")
        extra = "" if n_all <= max_clients else f" ({n} of {n_all:,} clients, most failures)"
        ax.set_title(f"Client timeline by status — {run.label}{extra}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="status (bars shown)")
        return save(fig, out_dir, "client_timeline", formats)


# ---------------------------------------------------------------------------
# network


def plot_link_utilisation(
    run: RunLike,
    out_dir: str | Path,
    *,
    max_lines: int = 12,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Uplink and downlink utilisation over time per base station (two panels).

    One line per base station (mean over its links at each sample time). With
    more than ``max_lines`` stations each is a thin grey line and the mean
    across stations plus the 10-90 % band are drawn on top.
    """
    run = as_rundir(run)
    if not _need(run, "link utilisation", "links"):
        return []
    lk = run.links
    lk = lk[lk["kind"].isin(["uplink", "downlink"])]
    if lk.empty:
        return _skip(run, "link utilisation", "no uplink/downlink samples")
    div, unit = time_unit(float(lk["t_s"].max()))
    with style():
        fig = new_figure(10.0, 6.4)
        axes = fig.subplots(2, 1, sharex=True)
        stations = sorted(lk["node"].astype(str).unique())
        cols = dict(zip(stations, colours(len(stations))))
        many = len(stations) > max_lines
        for ax, kind in zip(axes, ("uplink", "downlink")):
            d = lk[lk["kind"] == kind]
            if d.empty:
                ax.text(0.5, 0.5, f"no {kind} samples", transform=ax.transAxes, ha="center")
                continue
            piv = d.pivot_table(index="t_s", columns="node", values="utilisation", aggfunc="mean")
            piv.columns = piv.columns.astype(str)
            t = piv.index.to_numpy(float) / div
            if many:
                ax.plot(t, piv.to_numpy() * 100, color="0.75", lw=0.5)
                q10, q90 = np.nanpercentile(piv.to_numpy(), [10, 90], axis=1) * 100
                ax.fill_between(
                    t, q10, q90, color=OKABE_ITO[5], alpha=0.4, label="10-90 % of stations"
                )
                ax.plot(
                    t,
                    piv.mean(axis=1) * 100,
                    color=OKABE_ITO[0],
                    lw=2,
                    label=f"mean of {len(stations)} stations",
                )
                ax.legend(loc="upper right")
            else:
                for bs in piv.columns:
                    ax.plot(t, piv[bs] * 100, color=cols[bs], lw=1.5, label=bs)
            ax.set_ylabel(f"{kind.capitalize()} util. [%]")
            ax.set_ylim(0, 105)
            ax.set_title(f"{kind.capitalize()} utilisation per base station")
        if not many:
            axes[0].legend(
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                title="base station",
                ncol=1 if len(stations) <= 12 else 2,
            )
        axes[1].set_xlabel(f"Simulated time [{unit}]")
        fig.suptitle(f"Wireless link utilisation — {run.label}")
        return save(fig, out_dir, "link_utilisation", formats)


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
# experts


def _assignment_pairs(run: RunDir) -> pd.DataFrame | None:
    """(round, client, expert) from assignments.parquet, else from clients.experts."""
    if run.has("assignments"):
        a = run.assignments
        if not a.empty:
            return a[["round", "client", "expert"]]
    if run.protocol != "nmoe" and run.has("clients") and "experts" in run.clients.columns:
        c = run.clients[["round", "client", "experts"]].copy()
        c["expert"] = c["experts"].fillna("").astype(str).str.split(",")
        c = c.explode("expert")
        c = c[c["expert"].str.strip() != ""]
        if c.empty:
            return None
        c["expert"] = pd.to_numeric(c["expert"], errors="coerce")
        c = c.dropna(subset=["expert"])
        c["expert"] = c["expert"].astype(int)
        return c[["round", "client", "expert"]]
    return None


def _binned_heatmap(mat: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, int, int]:
    """Sum-pool ``mat`` into at most ``max_rows`` x ``max_cols`` cells; return pool sizes."""
    r = max(1, int(np.ceil(mat.shape[0] / max_rows)))
    c = max(1, int(np.ceil(mat.shape[1] / max_cols)))
    if r == 1 and c == 1:
        return mat, 1, 1
    pr = (-mat.shape[0]) % r
    pc = (-mat.shape[1]) % c
    m = np.pad(mat, ((0, pr), (0, pc)))
    m = m.reshape(m.shape[0] // r, r, m.shape[1] // c, c).sum(axis=(1, 3))
    return m, r, c


def plot_assignment_heatmap(
    run: RunLike,
    out_dir: str | Path,
    *,
    max_rows: int = 80,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Heatmap of the number of rounds each client was assigned each expert.

    Rows are clients (pooled into groups, mean per client, beyond ``max_rows``),
    columns are experts. Reads ``assignments.parquet``, or falls back on the
    ``experts`` column of ``clients.parquet``.
    """
    from matplotlib.ticker import MaxNLocator

    run = as_rundir(run)
    pairs = _assignment_pairs(run)
    if pairs is None or pairs.empty:
        return _skip(run, "assignment heatmap", "no assignments recorded")
    piv = pairs.groupby(["client", "expert"]).size().unstack(fill_value=0)
    piv = piv.reindex(columns=range(int(piv.columns.max()) + 1), fill_value=0)
    ids = set(piv.index.astype(str))
    if run.has("nodes"):  # clients never assigned anything get an empty row
        nd = run.nodes
        ids |= set(nd.loc[nd["kind"] == "client", "node"].astype(str))
    piv.index = piv.index.astype(str)
    piv = piv.reindex(sorted(ids, key=_natural_key), fill_value=0)
    mat = piv.to_numpy(float)
    m, r, _ = _binned_heatmap(mat, max_rows, 10**9)
    if r > 1:
        counts = np.bincount(np.arange(mat.shape[0]) // r).astype(float)
        m = m / counts[:, None]
    n_rows, n_exp = m.shape
    with style():
        fig = new_figure(
            max(6.0, min(14.0, 3.5 + 0.35 * n_exp)), max(4.0, min(14.0, 1.8 + 0.16 * n_rows))
        )
        ax = fig.add_subplot()
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("Rounds assigned" + (" (mean per client)" if r > 1 else ""))
        if r == 1:
            cb.locator = MaxNLocator(integer=True)
            cb.update_ticks()
        ax.set_xlabel("Expert")
        if n_exp <= 40:
            ax.set_xticks(range(n_exp))
        if r == 1:
            ax.set_ylabel("Client")
            if n_rows <= 60:
                ax.set_yticks(range(n_rows))
                ax.set_yticklabels([str(c) for c in piv.index], fontsize=8 if n_rows > 30 else 9)
        else:
            ax.set_ylabel(f"Clients ({r} per row, in id order)")
            _label_class_blocks(ax, run, list(piv.index), r, n_exp)
        ax.set_title(f"Client-expert assignments — {run.label}")
        return save(fig, out_dir, "assignment_heatmap", formats)


def _label_class_blocks(ax: Axes, run: RunDir, clients: list[str], r: int, n_exp: int) -> None:
    """Label the row blocks of a binned client heatmap by device class, with separators."""
    if not run.has("nodes"):
        return
    nd = run.nodes
    cls = dict(zip(nd["node"].astype(str), nd["device_class"].astype(str)))
    row_cls = [cls.get(clients[i], "?") for i in range(0, len(clients), r)]
    starts = [i for i in range(len(row_cls)) if i == 0 or row_cls[i] != row_cls[i - 1]]
    ends = starts[1:] + [len(row_cls)]
    counts = {c: sum(1 for x in clients if cls.get(x) == c) for c in set(row_cls)}
    ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, ends)])
    ax.set_yticklabels([f"{row_cls[a]} ({counts[row_cls[a]]})" for a in starts])
    for a in starts[1:]:
        ax.axhline(a - 0.5, color="white", lw=1.2)
    ax.set_xlim(-0.5, n_exp - 0.5)


def plot_expert_load(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Expert load over rounds: clients per expert (stacked area) and usage score (lines).

    Reads ``experts.parquet``; falls back on assignment counts (top panel only).
    """
    run = as_rundir(run)
    ex = run.maybe("experts")
    if ex is None or ex.empty:
        pairs = _assignment_pairs(run)
        if pairs is None or pairs.empty:
            return _skip(run, "expert load", "missing experts.parquet and assignments")
        ex = pairs.groupby(["round", "expert"]).size().rename("clients").reset_index()
    load = ex.pivot_table(
        index="round", columns="expert", values="clients", aggfunc="sum", fill_value=0
    ).sort_index()
    has_usage = "usage" in ex.columns
    n_exp = load.shape[1]
    cols = colours(n_exp)
    with style():
        fig = new_figure(10.0, 6.8 if has_usage else 4.6)
        axes = fig.subplots(2 if has_usage else 1, 1, sharex=True, squeeze=False)[:, 0]
        x = load.index.to_numpy()
        axes[0].stackplot(
            x,
            *[load[c].to_numpy(float) for c in load.columns],
            colors=cols,
            labels=[f"expert {c}" for c in load.columns],
            edgecolor="white",
            linewidth=0.3,
        )
        axes[0].set_ylabel("Clients assigned")
        axes[0].set_title("Clients per expert (stacked)")
        if has_usage:
            us = ex.pivot_table(
                index="round", columns="expert", values="usage", aggfunc="mean"
            ).sort_index()
            for c, col in zip(us.columns, cols):
                axes[1].plot(us.index, us[c], color=col, lw=1.5 if n_exp <= 16 else 0.8)
            axes[1].set_ylabel("Usage score")
            axes[1].set_title("Expert usage score after each round")
        axes[-1].set_xlabel("Round")
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
        if n_exp <= 20:
            axes[0].legend(
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                ncol=1 if n_exp <= 12 else 2,
                fontsize=9,
            )
        else:  # colours come from viridis (see colours()): a colour bar names them
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import ListedColormap, Normalize

            sm = ScalarMappable(norm=Normalize(-0.5, n_exp - 0.5), cmap=ListedColormap(cols))
            cb = fig.colorbar(sm, ax=list(axes), shrink=0.8)
            cb.set_label("Expert")
        fig.suptitle(f"Expert load — {run.label}")
        return save(fig, out_dir, "expert_load", formats)


# ---------------------------------------------------------------------------
# nmoe inference


def plot_request_latency(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """nmoe inference: latency CDF (all / local / remote) and mean latency breakdown.

    Reads ``requests.parquet``; latencies in ms (or s when large).
    """
    run = as_rundir(run)
    if not _need(run, "request latency", "requests"):
        return []
    rq = run.requests
    if rq.empty:
        return _skip(run, "request latency", "requests.parquet is empty")
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
    if not _need(run, "gating heatmap", "requests"):
        return []
    rq = run.requests
    if rq.empty or "experts" not in rq.columns:
        return _skip(run, "gating heatmap", "no request expert choices")
    p = rq[["client", "experts"]].copy()
    p["expert"] = p["experts"].fillna("").astype(str).str.split(",")
    p = p.explode("expert")
    p["expert"] = p["expert"].str.strip()
    p = p[p["expert"] != ""]
    if p.empty:
        return _skip(run, "gating heatmap", "no request expert choices")
    p["client"] = p["client"].astype(str)
    ids = sorted(set(p["client"]) | set(p["expert"]), key=_natural_key)
    if run.has("nodes"):
        nd = run.nodes
        ids = sorted(
            set(ids) | set(nd.loc[nd["kind"] == "client", "node"].astype(str)), key=_natural_key
        )
    piv = p.groupby(["client", "expert"]).size().unstack(fill_value=0)
    piv = piv.reindex(index=ids, columns=ids, fill_value=0)
    mat, r, c = _binned_heatmap(piv.to_numpy(float), max_cells, max_cells)
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


# ---------------------------------------------------------------------------


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
        ("accuracy", lambda: plot_accuracy([run], out, formats=formats)),
        ("round breakdown", lambda: plot_round_breakdown(run, out, formats=formats)),
        ("latency CDF", lambda: plot_latency_cdf(run, out, formats=formats)),
        ("client timeline", lambda: plot_client_timeline(run, out, formats=formats)),
        ("link utilisation", lambda: plot_link_utilisation(run, out, formats=formats)),
        ("topology", lambda: plot_topology(run, out, formats=formats)),
        ("assignment heatmap", lambda: plot_assignment_heatmap(run, out, formats=formats)),
        ("expert load", lambda: plot_expert_load(run, out, formats=formats)),
        ("request latency", lambda: plot_request_latency(run, out, formats=formats)),
        ("gating heatmap", lambda: plot_gating_heatmap(run, out, formats=formats)),
        ("staleness histogram", lambda: plot_staleness(run, out, formats=formats)),
    ]
    for what, job in jobs:
        try:
            written += job()
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            log.warning("figure %s failed for %s: %r", what, run.path, exc, exc_info=True)
    return written
