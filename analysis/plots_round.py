"""One round as it happened: each selected client's download, compute and upload,
the cell it used, and the flows sharing that cell (``fedsim plot RUN --round N``).

Intervals come from the ``transfer`` and ``compute`` events of the round
(``t_s`` is the end, ``seconds`` the duration); the cell of a transfer is the
event's ``dst_bs`` (download) / ``src_bs`` (upload) when recorded, else the
client's ``bs`` in ``clients.parquet``. Flows sharing a cell at time t are the
transfers of the same direction through that cell whose intervals contain t,
from any round (processor sharing: each gets a share of the cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    OKABE_ITO,
    STATUS_COLOURS,
    colours,
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

__all__ = ["round_intervals", "cell_flow_counts", "plot_round"]

_PHASE_COLOURS = {"download": OKABE_ITO[0], "compute": OKABE_ITO[1], "upload": OKABE_ITO[2]}


def _transfers(run: RunDir) -> pd.DataFrame:
    """All transfers: client, direction, cell, start, end (s), round, bytes."""
    ev = run.maybe("events")
    cols = ["round", "client", "direction", "cell", "t0", "t1", "bytes"]
    if ev is None or not {"kind", "tag", "node", "dst", "seconds"} <= set(ev.columns):
        return pd.DataFrame(columns=cols)
    tr = ev[(ev["kind"] == "transfer") & ev["tag"].isin(["download", "upload"])].copy()
    down = tr["tag"] == "download"
    tr["client"] = np.where(down, tr["dst"].astype(str), tr["node"].astype(str))
    tr["direction"] = np.where(down, "down", "up")
    tr["cell"] = np.nan
    if "dst_bs" in tr.columns and "src_bs" in tr.columns:
        tr["cell"] = np.where(down, tr["dst_bs"], tr["src_bs"])
    if run.has("clients") and "bs" in run.clients.columns:
        m = run.clients.assign(client=run.clients["client"].astype(str)).set_index(
            ["round", "client"])["bs"]
        m = m[~m.index.duplicated()]
        fallback = pd.Series(list(zip(tr["round"], tr["client"]))).map(m.to_dict()).to_numpy()
        tr["cell"] = tr["cell"].where(tr["cell"].notna(), fallback)
    tr["t1"] = tr["t_s"].astype(float)
    tr["t0"] = tr["t1"] - tr["seconds"].astype(float)
    tr["bytes"] = tr["bytes"].astype(float).fillna(0.0) if "bytes" in tr.columns else 0.0
    tr["cell"] = tr["cell"].astype(object).where(tr["cell"].notna(), None)
    return tr[cols].reset_index(drop=True)


def round_intervals(run: RunLike, rnd: int) -> pd.DataFrame:
    """The phases of round ``rnd``: one row per (client, phase) with its interval.

    Columns ``client, phase ("download" / "compute" / "upload"), t0, t1 (s),
    cell`` (transfers only). Without events, phases are rebuilt back to back
    from ``clients.parquet``'s per-phase durations.

    Raises:
        ValueError: if the run has no round ``rnd`` in ``clients.parquet``.
    """
    run = as_rundir(run)
    cl = run.clients
    sel = cl[cl["round"] == rnd]
    if sel.empty:
        raise ValueError(f"round {rnd} has no selected clients in {run.path / 'clients.parquet'}"
                         f" (rounds {int(cl['round'].min())}..{int(cl['round'].max())})")
    rows: list[dict[str, Any]] = []
    tr = _transfers(run)
    tr = tr[tr["round"] == rnd]
    ev = run.maybe("events")
    if not tr.empty:
        for r in tr.itertuples():
            rows.append(dict(client=r.client, phase="download" if r.direction == "down"
                             else "upload", t0=r.t0, t1=r.t1, cell=r.cell))
        if ev is not None and "seconds" in ev.columns:
            cp = ev[(ev["kind"] == "compute") & (ev["round"] == rnd)]
            for r in cp.itertuples():
                rows.append(dict(client=str(r.node), phase="compute",
                                 t0=float(r.t_s) - float(r.seconds), t1=float(r.t_s), cell=None))
    else:
        for r in sel.itertuples():
            t = float(r.t_dispatch_s)
            for ph in ("download", "compute", "upload"):
                d = float(getattr(r, f"t_{ph}_s", 0.0) or 0.0)
                if d > 0:
                    rows.append(dict(client=str(r.client), phase=ph, t0=t, t1=t + d,
                                     cell=getattr(r, "bs", None) if ph != "compute" else None))
                t += d
    return pd.DataFrame(rows, columns=["client", "phase", "t0", "t1", "cell"])


def cell_flow_counts(transfers: pd.DataFrame, cell: str, direction: str,
                     t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Step function of the number of ``direction`` flows in ``cell`` over [t0, t1].

    Returns:
        ``(t, n)``: change times (s) and the count from each time on
        (``where="post"`` steps), both shape ``(k,)``.
    """
    d = transfers[(transfers["cell"] == cell) & (transfers["direction"] == direction)]
    d = d[(d["t1"] > t0) & (d["t0"] < t1)]
    ts = np.concatenate([[t0], d["t0"].clip(lower=t0).to_numpy(float),
                         d["t1"].clip(upper=t1).to_numpy(float), [t1]])
    ts = np.unique(ts)
    s0 = d["t0"].to_numpy(float)
    s1 = d["t1"].to_numpy(float)
    n = ((s0[None, :] <= ts[:, None]) & (s1[None, :] > ts[:, None])).sum(axis=1)
    return ts, n


def plot_round(
    run: RunLike,
    rnd: int,
    out_dir: str | Path,
    *,
    max_clients: int = 80,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Timeline of round ``rnd`` (``round_<rnd>``): why each selected client finished when it did.

    Top: one row per selected client, bars for download, compute and upload
    (the gaps are waiting), the row label names the cell and, at the right,
    the most flows that shared the cell during its upload; stragglers and
    dropouts are marked at the time the round gave up on them. Bottom: the
    number of concurrent uplink (solid) and downlink (dashed) flows per cell.
    Beyond ``max_clients`` selected clients only the latest finishers are
    rows (the flow counts still include every transfer).

    Raises:
        ValueError: if round ``rnd`` has no selected clients.
    """
    run = as_rundir(run)
    if not need(run, f"round {rnd} timeline", "clients"):
        return []
    iv = round_intervals(run, rnd)
    cl = run.clients
    sel = cl[cl["round"] == rnd].assign(client=lambda d: d["client"].astype(str))
    rr = run.rounds[run.rounds["round"] == rnd]
    t_start = float(rr["t_start_s"].iloc[0]) if len(rr) and "t_start_s" in rr else float(
        sel["t_dispatch_s"].min())
    t_end = float(rr["t_end_s"].iloc[0]) if len(rr) else float(sel["t_end_s"].max())
    tr = _transfers(run)
    if iv.empty:
        return skip(run, f"round {rnd} timeline", "no phase intervals recorded")
    cell_of = {}
    for c, g in iv[iv["cell"].notna()].groupby("client"):
        cells = [str(x) for x in g.sort_values("t0")["cell"].unique()]
        cell_of[c] = "→".join(cells)
    end_of = dict(zip(sel["client"], sel["t_end_s"].astype(float)))
    order = sorted(sel["client"], key=lambda c: (end_of.get(c, 0.0), natural_key(c)))
    n_sel = len(order)
    order = order[-max_clients:]  # the latest finishers: the ones a reader asks about
    iv = iv[iv["client"].isin(order)]
    ypos = {c: i for i, c in enumerate(order)}
    n = len(order)
    span = max(t_end - t_start, 1e-9)
    div, unit = time_unit(span)

    def rel(t: Any) -> Any:
        return (np.asarray(t, dtype=float) - t_start) / div

    cells = sorted({str(x) for x in iv["cell"].dropna()}, key=natural_key)
    ccol = dict(zip(cells, colours(len(cells)))) if cells else {}
    with style():
        fig = new_figure(12.0, max(5.5, min(18.0, 3.2 + 0.24 * n)))
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[max(2.0, 0.2 * n), 2.0])
        for ph, col in _PHASE_COLOURS.items():
            d = iv[iv["phase"] == ph]
            if d.empty:
                continue
            w = np.maximum(rel(d["t1"]) - rel(d["t0"]), span / div / 800)
            ax.barh(d["client"].map(ypos), w, left=rel(d["t0"]), height=0.65, color=col,
                    linewidth=0, label=ph)
        up_share = []
        for c in order:
            u = iv[(iv["client"] == c) & (iv["phase"] == "upload")]
            peak = 0
            for r in u.itertuples():
                if r.cell is None:
                    continue
                _, k = cell_flow_counts(tr, str(r.cell), "up", float(r.t0), float(r.t1))
                peak = max(peak, int(k.max()) if k.size else 0)
            up_share.append(peak)
        for c, peak in zip(order, up_share):
            if peak:
                ax.annotate(f"{peak} up", (1.0, ypos[c]), xycoords=("axes fraction", "data"),
                            xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=8, color="0.3")
        for st in ("straggler", "dropout", "oom"):
            s = sel[sel["status"] == st]
            if len(s):
                ax.scatter(rel(s["t_end_s"]), s["client"].map(ypos), marker="X", s=70,
                           color=STATUS_COLOURS[st], edgecolors="black", linewidths=0.5,
                           zorder=5, label=f"{st} ({len(s)}): cut off here")
        ax.axvline(rel(t_end), color="0.3", ls=":", lw=1.2, label="round end (after server time)")
        ax.set_yticks(range(n))
        fs = 9 if n <= 30 else 7
        ax.set_yticklabels([f"{c} ({cell_of.get(c, '?')})" for c in order], fontsize=fs)
        ax.set_ylim(n - 0.4, -0.6)
        ax.grid(axis="y", visible=False)
        ax.set_ylabel("Client (cell)")
        ax.set_title("Phases per selected client; right: most uplink flows sharing its cell "
                     "during its upload", fontsize=11)
        ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize=9)
        for cell in cells:
            for direction, ls in (("up", "-"), ("down", "--")):
                t, k = cell_flow_counts(tr, cell, direction, t_start, t_end)
                if k.max(initial=0) == 0:
                    continue
                ax2.step(rel(t), k, where="post", color=ccol[cell], ls=ls, lw=1.6,
                         label=f"{cell} {direction}link" if len(cells) <= 8 else None)
        ax2.set_ylabel("Concurrent flows")
        ax2.set_xlabel(f"Time since round start [{unit}] (round {rnd} began at "
                       f"{t_start:.4g} s simulated)")
        ax2.set_title("Flows sharing each cell (solid: uplink, dashed: downlink)", fontsize=11)
        ax2.yaxis.get_major_locator().set_params(integer=True)
        ax2.set_ylim(bottom=0)
        if cells and len(cells) <= 8:
            ax2.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize=9, ncol=1)
        ax2.set_xlim(0, max(rel(t_end), float(rel(iv["t1"].max()))) * 1.01)
        counts = sel["status"].value_counts()
        summ = ", ".join(f"{counts[s]} {s}" for s in counts.index)
        shown = "" if n == n_sel else f"; rows: the {n} latest to finish"
        fig.suptitle(f"Round {rnd} as it happened — {run.label}\n{n_sel} selected ({summ}){shown}")
        return save(fig, out_dir, f"round_{rnd}", formats)
