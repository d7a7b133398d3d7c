"""Coverage map of a run: where the radio is good, and which clients suffered from it.

Three panels over the street grid (:func:`plot_coverage`):

1. downlink SINR (dB) from the serving cell of a reference device (1.5 m) anywhere, with the
   cell borders and the outage threshold;
2. the achievable uplink rate (Mbit/s) of that device alone in its cell;
3. every client at its start position, joined to the cell that served it
   by a line coloured by its mean realised uplink rate over the run (bytes
   over seconds of all its uploads, sharing included), with the clients that
   straggled or dropped out marked.

Panels 1 and 2 come from :mod:`analysis.coverage` (the simulator's radio model,
:mod:`fedsim.net.radio`, at the mean path loss and shadowing, no fast fading). Base stations, edge
servers and the cloud are marked on every panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis._style import FORMATS, STATUS_COLOURS, new_figure, save, skip, style
from analysis.coverage import Radio, coverage_at, radio_of
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

__all__ = ["plot_coverage", "client_uplink_summary"]

_BS_STYLE = {"bs_macro": ("^", 150, "#D55E00"), "bs_small": ("^", 80, "#E69F00")}


def client_uplink_summary(run: RunDir) -> pd.DataFrame:
    """Per client: start position, serving cell, mean uplink rate, straggler / dropout rounds.

    Columns ``client, x, y, z, bs, rate_up_bps, stragglers, dropouts``. ``bs``
    is the cell recorded at the client's first selection (``clients.bs``),
    NaN for a client never selected; ``rate_up_bps`` is 8 x bytes / seconds
    over all its ``upload`` transfer events (NaN without any).
    """
    nd = run.nodes
    cl = nd[nd["kind"] == "client"][["node", "x", "y", "z"]].rename(columns={"node": "client"})
    cl = cl.assign(client=cl["client"].astype(str)).set_index("client")
    out = cl.copy()
    out["bs"] = np.nan
    out["stragglers"] = 0
    out["dropouts"] = 0
    out["rate_up_bps"] = np.nan
    if run.has("clients") and not run.clients.empty:
        c = run.clients.assign(client=run.clients["client"].astype(str)).sort_values(["round"])
        c = c if "status" in c.columns else c.assign(status="completed")
        if "bs" in c.columns:
            first = c.dropna(subset=["bs"]).groupby("client")["bs"].first().astype(str)
            out["bs"] = first.reindex(out.index)
        flags = pd.DataFrame({"client": c["client"].to_numpy(),
                              "stragglers": (c["status"] == "straggler").to_numpy(int),
                              "dropouts": (c["status"] == "dropout").to_numpy(int)})
        per = flags.groupby("client")[["stragglers", "dropouts"]].sum()
        out["stragglers"] = per["stragglers"].reindex(out.index).fillna(0).astype(int)
        out["dropouts"] = per["dropouts"].reindex(out.index).fillna(0).astype(int)
    ev = run.maybe("events")
    if ev is not None and {"kind", "tag", "node", "bytes", "seconds"} <= set(ev.columns):
        up = ev[(ev["kind"] == "transfer") & (ev["tag"] == "upload")]
        if not up.empty:
            g = up.assign(node=up["node"].astype(str)).groupby("node")
            secs = g["seconds"].sum()
            rate = (8.0 * g["bytes"].sum() / secs.where(secs > 0)).reindex(out.index)
            out["rate_up_bps"] = rate
    return out.reset_index()


def _mhz(bw_hz: np.ndarray) -> str:
    """Cell bandwidths in MHz for a title: one value, or the range when cells differ."""
    lo, hi = float(bw_hz.min()) / 1e6, float(bw_hz.max()) / 1e6
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def _log_tick(v: float, _pos: Any = None) -> str:
    """Label 1, 2 and 5 times a power of ten on a log colour bar, nothing else."""
    if not v > 0:
        return ""
    m = v / 10 ** np.floor(np.log10(v) + 1e-9)
    return f"{v:g}" if any(abs(m - k) < 1e-6 for k in (1, 2, 5)) else ""


def _extent(run: RunDir, nodes: pd.DataFrame) -> tuple[float, float, float, float]:
    """The map area (x0, x1, y0, y1) in m: the street grid, else the nodes' bounding box."""
    grid = ((run.scenario.get("topology") or {}).get("grid")) or {}
    kind = (run.scenario.get("topology") or {}).get("kind")
    pts = nodes[nodes["kind"] != "cloud"]
    x0, x1 = float(pts["x"].min()), float(pts["x"].max())
    y0, y1 = float(pts["y"].min()), float(pts["y"].max())
    if kind == "manhattan_grid" and grid:
        b = float(grid.get("block_m", 0.0))
        x0, x1 = min(x0, 0.0), max(x1, b * int(grid.get("blocks_x", 0)))
        y0, y1 = min(y0, 0.0), max(y1, b * int(grid.get("blocks_y", 0)))
    pad = 0.04 * max(x1 - x0, y1 - y0, 50.0)
    return x0 - pad, x1 + pad, y0 - pad, y1 + pad


def _streets(ax: Any, run: RunDir, scale: float, colour: str, lw: float) -> None:
    topo = run.scenario.get("topology") or {}
    grid = topo.get("grid") or {}
    if topo.get("kind") != "manhattan_grid" or not grid:
        return
    b, bx, by = float(grid["block_m"]), int(grid["blocks_x"]), int(grid["blocks_y"])
    for i in range(bx + 1):
        ax.plot([i * b / scale] * 2, [0, by * b / scale], color=colour, lw=lw, zorder=2,
                solid_capstyle="butt")
    for j in range(by + 1):
        ax.plot([0, bx * b / scale], [j * b / scale] * 2, color=colour, lw=lw, zorder=2,
                solid_capstyle="butt")


def _infrastructure(ax: Any, nodes: pd.DataFrame, radio: Radio, scale: float,
                    label_bs: bool, top: float, bottom: float) -> list[Any]:
    """Markers of cloud, edge servers and base stations; returns legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    edge = nodes[nodes["kind"] == "edge"]
    if not edge.empty:
        ax.scatter(edge["x"] / scale, edge["y"] / scale, marker="s", s=120, color="#0072B2",
                   edgecolors="white", linewidths=0.8, zorder=6)
        handles.append(Line2D([], [], ls="none", marker="s", ms=8, color="#0072B2",
                              label=f"edge server ({len(edge)}; at its BS or the core)"))
    for kind, (mk, s, col) in _BS_STYLE.items():
        sel = [j for j, k in enumerate(radio.bs_kinds) if k == kind]
        if not sel:
            continue
        xy = radio.bs_xyz_m[sel, :2] / scale
        ax.scatter(xy[:, 0], xy[:, 1], marker=mk, s=s, color=col, edgecolors="black",
                   linewidths=0.7, zorder=7)
        name = "macro BS" if kind == "bs_macro" else "small-cell BS"
        handles.append(Line2D([], [], ls="none", marker=mk, ms=9 if kind == "bs_macro" else 7,
                              color=col, markeredgecolor="black", label=f"{name} ({len(sel)})"))
    if label_bs:
        for b, (x, y, _) in zip(radio.bs_ids, radio.bs_xyz_m):
            ax.annotate(b, (x / scale, y / scale), xytext=(5, 5), textcoords="offset points",
                        fontsize=8, zorder=8, color="black",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    cloud = nodes[nodes["kind"] == "cloud"]
    if not cloud.empty:
        # the cloud is reached over the WAN: off the map, it is pinned to the top edge
        x = cloud["x"].to_numpy(float) / scale
        y = np.minimum(cloud["y"].to_numpy(float) / scale, top - 0.04 * (top - bottom))
        ax.scatter(x, y, marker="*", s=320, color="black", edgecolors="white", zorder=7,
                   clip_on=False)
        handles.append(Line2D([], [], ls="none", marker="*", ms=13, color="black",
                              label="cloud (via the WAN; off-map: pinned to the top edge)"))
    return handles


def plot_coverage(
    run: RunLike,
    out_dir: str | Path,
    *,
    resolution: int = 240,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Coverage map (``coverage``): DL SINR, UL rate and the clients' realised uplink.

    Args:
        run: a run directory with ``nodes.parquet`` and a manifest with the
            resolved scenario; ``clients`` / ``events`` add the client panel's
            serving cells, rates, stragglers and dropouts.
        resolution: heat-map samples along the longer side of the area.

    Returns:
        The written paths (none when the run has no positions or no BS).
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    run = as_rundir(run)
    if not run.has("nodes"):
        return skip(run, "coverage map", "missing nodes.parquet")
    nodes = run.nodes.dropna(subset=["x", "y"])
    nodes = nodes.assign(node=nodes["node"].astype(str))
    try:
        radio = radio_of(run)
    except ValueError as e:
        return skip(run, "coverage map", str(e))
    cp = radio.channel
    x0, x1, y0, y1 = _extent(run, nodes)
    big = max(x1 - x0, y1 - y0)
    step = big / max(resolution, 10)
    gx = np.arange(x0, x1 + step / 2, step)
    gy = np.arange(y0, y1 + step / 2, step)
    X, Y = np.meshgrid(gx, gy)
    cov = coverage_at(radio, np.column_stack([X.ravel(), Y.ravel()]), 1.5)
    sinr = cov.sinr_down_db.reshape(X.shape)
    rate = cov.rate_up_bps.reshape(X.shape) / 1e6
    serving = cov.serving.reshape(X.shape)
    scale, unit = (1000.0, "km") if big > 5000 else (1.0, "m")
    ext = (x0 / scale, x1 / scale, y0 / scale, y1 / scale)
    cl = client_uplink_summary(run)
    n_cl = len(cl)
    outage = float(cp["outage_sinr_db"])
    wide = (x1 - x0) > 1.8 * (y1 - y0)
    lo = float(np.floor(min(np.nanpercentile(sinr, 1), outage - 5.0)))
    hi = float(np.ceil(np.nanpercentile(sinr, 99)))
    rmax = float(radio.cells.bw_up_hz.max()) * float(cp["max_spectral_efficiency_bps_hz"]) / 1e6
    cl_rate = cl["rate_up_bps"].to_numpy(float) / 1e6
    rnorm = Normalize(0.0, rmax)
    fin = cl_rate[np.isfinite(cl_rate) & (cl_rate > 0)]
    if fin.size and fin.max() / fin.min() > 30:
        lnorm: Any = LogNorm(fin.min(), fin.max())
    else:
        lnorm = Normalize(0.0, float(fin.max()) if fin.size else rmax)
    with style():
        if wide:
            panel_h = max(2.2, 13.0 * (y1 - y0) / (x1 - x0) + 2.0)
            fig = new_figure(14.0, 3 * panel_h + 1.0)
            axes = fig.subplots(3, 1)
        else:
            fig = new_figure(20.0, 7.6)
            axes = fig.subplots(1, 3)
        cb_kw = dict(orientation="horizontal", pad=0.02, shrink=0.5 if wide else 0.85,
                     aspect=40 if wide else 30)
        # 1: downlink SINR
        ax = axes[0]
        im = ax.imshow(sinr, origin="lower", extent=ext, cmap="viridis", vmin=lo, vmax=hi,
                       interpolation="bilinear", zorder=1)
        cb = fig.colorbar(im, ax=ax, extend="both", **cb_kw)
        cb.set_label("Downlink SINR from the serving cell [dB] (reference device, 1.5 m)")
        cb.ax.axvline(outage, color="red", lw=2)
        if np.nanmin(sinr) < outage < np.nanmax(sinr):
            ax.contour(X / scale, Y / scale, sinr, levels=[outage], colors="red",
                       linewidths=1.2, linestyles="--", zorder=3)
        ax.set_title("Downlink: SINR (mean path loss + shadowing, no fading)")
        # 2: uplink rate
        ax = axes[1]
        cmap = colormaps["cividis"].with_extremes(under="#bbbbbb")
        shown = np.where(rate > 0, rate, -1.0)
        im = ax.imshow(shown, origin="lower", extent=ext, cmap=cmap, norm=rnorm,
                       interpolation="nearest", zorder=1)
        cb = fig.colorbar(im, ax=ax, **cb_kw)
        cb.set_label(f"Achievable uplink rate alone in the cell [Mbit/s] ({radio.ue_power_dbm:g} dBm)")
        ax.set_title("Uplink: rate of one device using the whole cell (grey: outage)")
        for a in axes[:2]:
            m = len(radio.bs_ids)
            if m > 1:
                a.contour(X / scale, Y / scale, serving, levels=np.arange(m - 1) + 0.5,
                          colors="white", linewidths=0.9, zorder=3)
            _streets(a, run, scale, "white", 0.6)
        # 3: clients
        ax = axes[2]
        ax.set_facecolor("#f4f4f4")
        _streets(ax, run, scale, "#d0d0d0", 3.0 if n_cl <= 400 else 1.5)
        bs_pos = dict(zip(radio.bs_ids, radio.bs_xyz_m[:, :2]))
        has_bs = cl["bs"].astype(str).isin(bs_pos).to_numpy()
        segs, cols = [], []
        lcmap = colormaps["plasma"]
        order = np.argsort(-np.nan_to_num(cl_rate, nan=np.inf))  # slow links drawn on top
        no_rate = 0
        for i in order:
            if not has_bs[i]:
                continue
            b = bs_pos[str(cl["bs"].iloc[i])]
            segs.append(((cl["x"].iloc[i] / scale, cl["y"].iloc[i] / scale),
                         (b[0] / scale, b[1] / scale)))
            r = cl_rate[i]
            if np.isfinite(r):
                cols.append(lcmap(lnorm(r)))
            else:
                cols.append((0.6, 0.6, 0.6, 0.6))
                no_rate += 1
        lw = 1.3 if n_cl <= 200 else (0.7 if n_cl <= 2000 else 0.3)
        if segs:
            ax.add_collection(LineCollection(segs, colors=cols, linewidths=lw, zorder=3))
        sm = colormaps["plasma"]
        from matplotlib.cm import ScalarMappable

        cb = fig.colorbar(ScalarMappable(norm=lnorm, cmap=sm), ax=ax, **cb_kw)
        cb.set_label("Client's mean uplink rate over the run [Mbit/s] (shared cell)")
        if isinstance(lnorm, LogNorm):  # plain numbers, not 6x10^0
            fmt = FuncFormatter(_log_tick)
            cb.ax.xaxis.set_major_formatter(fmt)
            cb.ax.xaxis.set_minor_formatter(fmt)
        ms = 14 if n_cl <= 200 else (6 if n_cl <= 2000 else 2)
        ax.scatter(cl["x"] / scale, cl["y"] / scale, s=ms, color="black", zorder=4,
                   linewidths=0)
        handles: list[Any] = [Line2D([], [], ls="none", marker="o", ms=4, color="black",
                                    label=f"client at start ({n_cl:,})")]
        if no_rate:
            handles.append(Line2D([], [], color="0.6", lw=1.5,
                                  label=f"served, no upload recorded ({no_rate})"))
        never = int((~has_bs).sum())
        if never:
            handles.append(Line2D([], [], ls="none", marker="o", ms=4, color="black",
                                  label=f"never selected: no line ({never})"))
        st = cl[cl["stragglers"] > 0]
        if len(st):
            ax.scatter(st["x"] / scale, st["y"] / scale, s=ms * 5 + 30, facecolors="none",
                       edgecolors=STATUS_COLOURS["straggler"], linewidths=1.6, zorder=5)
            handles.append(Line2D([], [], ls="none", marker="o", ms=9, mfc="none", mew=1.6,
                                  color=STATUS_COLOURS["straggler"],
                                  label=f"straggled in >= 1 round ({len(st)})"))
        dr = cl[cl["dropouts"] > 0]
        if len(dr):
            ax.scatter(dr["x"] / scale, dr["y"] / scale, s=ms * 4 + 30, marker="x",
                       color=STATUS_COLOURS["dropout"], linewidths=1.6, zorder=5)
            handles.append(Line2D([], [], ls="none", marker="x", ms=8, mew=1.6,
                                  color=STATUS_COLOURS["dropout"],
                                  label=f"dropped out in >= 1 round ({len(dr)})"))
        ax.set_title("Clients at start, line to the cell that served them")
        infra: list[Any] = []
        for a in axes:
            infra = _infrastructure(a, nodes, radio, scale, len(radio.bs_ids) <= 24, ext[3],
                                   ext[2])
            a.set_aspect("equal")
            a.set_xlim(ext[0], ext[1])
            a.set_ylim(ext[2], ext[3])
            a.set_xlabel(f"x [{unit}]")
            a.set_ylabel(f"y [{unit}]")
            a.grid(False)
        outage_h = Line2D([], [], color="red", ls="--", lw=1.2,
                          label=f"DL outage threshold ({outage:g} dB SINR)")
        border_h = Line2D([], [], color="white", lw=2, label=f"cell border (attachment by {cp['attachment']})")
        leg = handles + infra + [outage_h, border_h]
        fig.legend(handles=leg, loc="outside lower center", ncol=min(5, len(leg)), fontsize=9,
                   facecolor="#dddddd")
        from fedsim.net.channel import channel_model
        from fedsim.net.radio import shadowing_std_db

        sl, sn = shadowing_std_db(channel_model(radio.params.model), radio.params)
        sig = f"{sl:g} dB" if sl == sn else f"{sl:g} / {sn:g} dB (LOS / NLOS)"
        fig.suptitle(f"Coverage map — {run.label}: channel {cp['model']} at {cp['fc_ghz']:g} GHz, "
                     f"UL {_mhz(radio.cells.bw_up_hz)} MHz, "
                     f"DL {_mhz(radio.cells.bw_down_hz)} MHz; maps at the mean "
                     f"shadowing (0 dB), a client's own differs by σ = {sig}")
        return save(fig, out_dir, "coverage", formats)
