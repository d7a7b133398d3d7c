"""Cell load over the whole run: carried throughput per base station, at the run's own time scale.

``links.parquet`` samples every ``output.link_sample_s`` (5 s by default), so a
6-second run has two samples. This figure is drawn from the transfers instead
(``events.parquet``: each transfer's start, end, bytes and cell, the change
points of the flow model), binned to the run's length (:data:`BINS` bins), so
a short run is as readable as a long one. Each transfer's bytes are spread
evenly over its duration (its mean rate); the sums are exact per bin in bytes.
The dashed line is the link's mean capacity from ``links.parquet`` (the
capacity changes with fading and with the flows' spectral efficiency). When no
transfer names its cell (nmoe's exchanges), the figure falls back on the sampled
loads of ``links.parquet``.

Re-exported by :mod:`analysis.plots` as :func:`plot_link_utilisation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    OKABE_ITO,
    natural_key,
    need,
    new_figure,
    save,
    skip,
    style,
    time_unit,
)
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

__all__ = ["BINS", "binned_rate", "cell_throughput", "sampled_throughput", "plot_link_utilisation"]

#: Time bins over the run's length.
BINS = 150
_DIR_COLOUR = {"up": OKABE_ITO[0], "down": OKABE_ITO[1]}
_DIR_NAME = {"up": "uplink", "down": "downlink"}


def binned_rate(t0: np.ndarray, t1: np.ndarray, bits: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean rate (bit/s) in each bin of ``edges`` of transfers ``[t0, t1)`` carrying ``bits``.

    Each transfer's bits are spread evenly over its interval (zero-length
    transfers count at their instant). The total rate is piecewise constant
    between the transfers' start and end points; it is integrated exactly
    over each bin. Shapes: ``t0``, ``t1``, ``bits`` ``(n,)``; ``edges`` ``(m + 1,)``
    increasing; returns ``(m,)``.
    """
    t0, t1, bits = (np.asarray(a, dtype=float) for a in (t0, t1, bits))
    width = np.diff(edges)
    out = np.zeros(width.size)
    inst = t1 <= t0
    if inst.any():  # instantaneous transfers: all their bits in their bin
        idx = np.clip(np.searchsorted(edges, t1[inst], side="right") - 1, 0, width.size - 1)
        np.add.at(out, idx, bits[inst])
    t0, t1, bits = t0[~inst], t1[~inst], bits[~inst]
    if t0.size:
        rate = bits / (t1 - t0)
        ts = np.concatenate([t0, t1])
        dr = np.concatenate([rate, -rate])
        order = np.argsort(ts, kind="stable")
        ts, level = ts[order], np.cumsum(dr[order])  # total rate from ts[i] on
        cum = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(ts))])  # bits delivered by ts[i]

        def delivered(t: np.ndarray) -> np.ndarray:
            i = np.searchsorted(ts, t, side="right") - 1
            ok = i >= 0
            res = np.zeros(t.size)
            res[ok] = cum[i[ok]] + level[i[ok]] * (t[ok] - ts[i[ok]])
            return res

        out += np.diff(delivered(np.asarray(edges, dtype=float)))
    return out / np.where(width > 0, width, 1.0)


def cell_throughput(run: RunLike, bins: int = BINS) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """Carried throughput per (cell, direction) in ``bins`` bins over the run.

    Returns:
        ``(edges, rates)``: bin edges in s, shape ``(bins + 1,)``, and
        ``{(cell, "up" | "down"): bit/s per bin}``; only cells that carried a transfer.
    """
    from analysis.plots_round import _transfers

    run = as_rundir(run)
    tr = _transfers(run)
    tr = tr[tr["cell"].notna()].assign(bits=lambda d: 8.0 * d["bytes"].astype(float))
    t_end = float(run.manifest.get("sim_end_s") or 0.0)
    t_end = max(t_end, float(tr["t1"].max()) if len(tr) else 0.0, 1e-9)
    edges = np.linspace(0.0, t_end, bins + 1)
    rates = {}
    for (cell, d), g in tr.groupby(["cell", "direction"]):
        rates[(str(cell), str(d))] = binned_rate(g["t0"].to_numpy(), g["t1"].to_numpy(), g["bits"].to_numpy(), edges)
    return edges, rates


def sampled_throughput(run: RunDir) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """The fallback when no transfer names its cell (e.g. nmoe's exchanges): ``links.parquet``'s
    mean load per sampling interval, as ``(edges, {(cell, "up" | "down"): bit/s per bin})``."""
    lk = run.maybe("links")
    if lk is None or lk.empty:
        return np.zeros(1), {}
    lk = lk[lk["kind"].isin(["uplink", "downlink"])]
    ends = np.unique(lk["t_s"].to_numpy(float))
    edges = np.r_[0.0, ends] if ends.size and ends[0] > 0 else ends
    rates = {}
    for (node, kind), g in lk.groupby(["node", "kind"]):
        per = g.groupby("t_s")["load_bps"].sum().reindex(edges[1:], fill_value=0.0)
        if per.to_numpy(float).any():
            rates[(str(node), "up" if kind == "uplink" else "down")] = per.to_numpy(float)
    return edges, rates


def _mean_capacity(run: RunDir) -> dict[tuple[str, str], float]:
    """Time-weighted mean capacity (bit/s) of each cell's uplink / downlink in ``links.parquet``."""
    lk = run.maybe("links")
    if lk is None or lk.empty or "capacity_bps" not in lk.columns:
        return {}
    lk = lk[lk["kind"].isin(["uplink", "downlink"])]
    w = lk["interval_s"].astype(float) if "interval_s" in lk.columns else pd.Series(1.0, index=lk.index)
    out = {}
    for (node, kind), g in lk.assign(w=w).groupby(["node", "kind"]):
        cap = g["capacity_bps"].astype(float)
        if g["w"].sum() > 0 and cap.notna().any():
            out[(str(node), "up" if kind == "uplink" else "down")] = float((cap * g["w"]).sum() / g["w"].sum())
    return out


def plot_link_utilisation(
    run: RunLike, out_dir: str | Path, *, max_panels: int = 24, formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Uplink and downlink throughput per base station over the run, one small panel per cell.

    Drawn from the transfers at the run's own time scale (see the module
    docstring), with each link's mean capacity dashed and its peak bin's share
    of that capacity in the panel title. Base stations that carried nothing are
    listed under the figure. With more than ``max_panels`` busy cells, two
    panels (uplink, downlink) show the mean over cells and the 10-90 % band.
    """
    run = as_rundir(run)
    edges, rates = cell_throughput(run) if run.has("events") else (np.zeros(1), {})
    source = "bins of {w:.3g} s; each transfer's bytes spread over its duration"
    if not rates:  # no transfer names its cell: the sampled link loads
        edges, rates = sampled_throughput(run)
        source = "mean load per output.link_sample_s interval ({w:.3g} s)"
    if not rates:
        need(run, "link utilisation", "events", "links")
        return skip(run, "link utilisation", "no transfer with a known cell and no link samples")
    cells = sorted({c for c, _ in rates}, key=natural_key)
    idle: list[str] = []
    if run.has("nodes"):
        nd = run.nodes
        all_bs = nd.loc[nd["kind"].astype(str).str.startswith("bs_"), "node"].astype(str)
        idle = sorted(set(all_bs) - set(cells), key=natural_key)
    cap = _mean_capacity(run)
    div, unit = time_unit(float(edges[-1]))
    t = edges / div
    width_s = float(edges[1] - edges[0])
    with style():
        if len(cells) > max_panels:
            fig = _many_cells(t, cells, rates)
        else:
            fig = _panels(t, cells, rates, cap)
        note = source.format(w=width_s)
        if idle:
            shown = ", ".join(idle[:12]) + (f" and {len(idle) - 12} more" if len(idle) > 12 else "")
            note += f". Idle cells (carried nothing): {shown}"
        fig.supxlabel(f"Simulated time [{unit}]\n{note}", fontsize=10)
        fig.suptitle(f"Cell throughput per base station — {run.label}")
        return save(fig, out_dir, "link_utilisation", formats)


def _panels(t: np.ndarray, cells: list[str], rates: dict, cap: dict) -> object:
    n = len(cells)
    ncols = 1 if n == 1 else (2 if n <= 4 else (3 if n <= 9 else 4))
    nrows = math.ceil(n / ncols)
    fig = new_figure(min(16.0, 4.2 * ncols + 1.0), min(18.0, 1.2 + 2.3 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, cell in zip(axes, cells):
        peaks: list[str] = []
        for d in ("down", "up"):  # uplink, usually the bottleneck, drawn on top
            r = rates.get((cell, d))
            if r is None:
                continue
            ax.stairs(r / 1e6, t, color=_DIR_COLOUR[d], lw=1.4, label=_DIR_NAME[d])
            c = cap.get((cell, d))
            if c:
                ax.axhline(c / 1e6, color=_DIR_COLOUR[d], ls="--", lw=0.9)
                peaks.append(f"{d} peak {100 * float(r.max()) / c:.0f} %")
        ax.set_title(f"{cell}" + (f" ({', '.join(sorted(peaks, reverse=True))} of mean capacity)" if peaks else ""),
                     fontsize=9)
        ax.set_xlim(t[0], t[-1])
        ax.set_ylim(bottom=0)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("Mbit/s")
    axes[0].legend(loc="upper right", fontsize=8, title="solid: carried\ndashed: mean capacity", title_fontsize=8)
    return fig


def _many_cells(t: np.ndarray, cells: list[str], rates: dict) -> object:
    fig = new_figure(10.0, 6.0)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, d in zip(axes, ("up", "down")):
        m = np.array([rates[(c, d)] for c in cells if (c, d) in rates]) / 1e6
        if not m.size:
            continue
        q10, q90 = np.percentile(m, [10, 90], axis=0)
        ax.stairs(q90, t, baseline=q10, fill=True, color=_DIR_COLOUR[d], alpha=0.3, label="10-90 % of cells")
        ax.stairs(m.mean(axis=0), t, color=_DIR_COLOUR[d], lw=1.8, label=f"mean of {len(m)} busy cells")
        ax.set_ylabel(f"{_DIR_NAME[d].capitalize()} [Mbit/s]")
        ax.legend(loc="upper right", fontsize=9)
        ax.set_ylim(bottom=0)
    return fig
