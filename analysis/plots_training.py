"""Training figures of a run: accuracy curves, round time breakdown, client latency and timeline.

Each function writes PNG and SVG into ``out_dir`` and returns the paths (none when
its inputs are absent). Re-exported by :mod:`analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    OKABE_ITO,
    STATUS_COLOURS,
    colours,
    ecdf,
    natural_key,
    need,
    never_online,
    new_figure,
    run_labels,
    save,
    skip,
    style,
    time_unit,
)
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

__all__ = ["plot_accuracy", "plot_round_breakdown", "plot_latency_cdf", "plot_client_timeline"]


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
            skip(r, f"{metric} curve", f"rounds.parquet has no '{metric}' column")
            continue
        df = df[np.isfinite(df[metric].astype(float))]
        if df.empty:
            skip(r, f"{metric} curve", "no evaluated rounds")
            continue
        curves.append((r, df))
    if not curves:
        return []
    labels = run_labels([r for r, _ in curves])
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
        return skip(run, "round breakdown", "rounds.parquet is empty")
    phases = [
        ("t_download_s", "download"),
        ("t_compute_s", "compute"),
        ("t_upload_s", "upload"),
        ("t_wait_s", "waiting"),
        ("t_server_s", "server (aggregation, idle)"),
    ]
    have = [(c, n) for c, n in phases if c in df.columns]
    if not have:
        return skip(run, "round breakdown", "rounds.parquet has no phase columns")
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
    if not need(run, "latency CDF", "clients"):
        return []
    cl = run.clients
    comp = cl.loc[cl["status"] == "completed", "latency_s"].to_numpy(float)
    strag = cl.loc[cl["status"] == "straggler", "latency_s"].to_numpy(float)
    if comp.size == 0 and strag.size == 0:
        return skip(run, "latency CDF", "no completed or straggler clients")
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
    Clients offline for the whole run (never selectable) get a hatched row each
    when there are at most 20 of them, else a count in the title.
    """
    run = as_rundir(run)
    if not need(run, "client timeline", "clients"):
        return []
    cl = run.clients
    if cl.empty:
        return skip(run, "client timeline", "clients.parquet is empty")
    n_all = cl["client"].nunique()
    fails = (cl["status"] != "completed").groupby(cl["client"]).sum()
    parts = cl.groupby("client").size()
    rank = pd.DataFrame({"fails": fails, "parts": parts}).sort_values(
        ["fails", "parts"], ascending=False
    )
    shown = list(rank.index[:max_clients])
    off = [c for c in never_online(run) if c not in set(shown)]
    off_rows = off if len(off) <= 20 else []  # a few get a row each; many, a note in the title
    shown = sorted(shown + off_rows, key=natural_key)
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
        if off_rows:
            ax.barh([ypos[c] for c in off_rows], tmax / div, left=0.0, height=0.7, color="none",
                    edgecolor="0.6", hatch="///", linewidth=0, label=f"never online ({len(off_rows)})")
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
        extra = "" if n_all <= max_clients else f" ({n - len(off_rows)} of {n_all:,} selected clients, most failures)"
        if off and not off_rows:
            extra += f"; {len(off):,} clients never online (not shown)"
        # the qualifiers go on a second line: one line was wider than the figure at city scale
        ax.set_title(f"Client timeline by status — {run.label}" + (f"\n{extra.strip(' ;')}" if extra else ""))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="status (bars shown)")
        return save(fig, out_dir, "client_timeline", formats)
