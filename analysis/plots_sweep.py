"""Figures that compare groups of runs: one group per sweep grid cell (or per label in ``fedsim compare``).

For a network engineer the question is what accuracy costs in time and bytes,
and how sure we are; each figure answers one part:

- ``accuracy_vs_time_by_cell`` / ``accuracy_vs_bytes_by_cell``: accuracy against
  simulated time and against cumulative bytes moved (up + down), per cell: the
  mean over seeds (a seed's accuracy at x is its last evaluation at or before x,
  so a finished run keeps its final accuracy; drawn from where every seed has
  been evaluated once) and a band from the lowest to the highest seed. Up to 4 cells share one axes;
  more get one small panel each, the other cells in grey behind.
- ``tradeoff``: per cell, final accuracy against simulated time to the target
  accuracy and against bytes moved, mean ± 95 % Student-t CI over seeds in both
  directions (:func:`analysis.compare.aggregate_cells`).
- ``straggler_share``: per cell, the share of selected client-rounds that
  straggled (stragglers / selected, per run), mean ± 95 % CI.

Input: ``groups``, an ordered ``{cell label: [RunDir, ...]}``. :func:`per_run_table`
reads what the figures need from each run directory (never the simulator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis._style import FORMATS, OKABE_ITO, colours, new_figure, save, style, time_unit
from analysis.rundir import RunDir

__all__ = ["runs_by_label", "shared_target", "per_run_table", "plot_curves_by_cell", "plot_tradeoff", "plot_straggler_share", "group_figures"]

_GRID_POINTS = 200
_MAX_SHARED = 4  # more cells: small multiples (overlapping seed bands turn grey)


def _curve(run: RunDir) -> pd.DataFrame:
    """Evaluated rounds of ``run``: ``t_s`` (round end), ``bytes`` (cumulative up + down), ``accuracy``."""
    r = run.rounds.sort_values("round")
    if "accuracy" not in r.columns or "t_end_s" not in r.columns:
        return pd.DataFrame(columns=["t_s", "bytes", "accuracy"])
    b = pd.Series(0.0, index=r.index)
    for c in ("bytes_up", "bytes_down"):
        if c in r.columns:
            b = b + r[c].astype(float).fillna(0.0)
    out = pd.DataFrame({"t_s": r["t_end_s"].astype(float), "bytes": b.cumsum(), "accuracy": r["accuracy"].astype(float)})
    return out[np.isfinite(out["accuracy"])]


def per_run_table(groups: dict[str, list[RunDir]], target: float | None) -> pd.DataFrame:
    """One row per run: ``cell``, ``seed``, ``final_accuracy``, ``sim_s_to_target``, ``bytes_total``,
    ``straggler_share`` (stragglers / selected client-rounds), from each run directory.

    ``target``: the accuracy for ``sim_s_to_target`` (None: each run's own
    ``evaluation.target_accuracy``). Runs that never reach it have NaN there.
    """
    from analysis.compare import run_summary

    rows = []
    for cell, runs in groups.items():
        for run in runs:
            s = run_summary(run, target_accuracy=target)
            r = run.rounds
            sel = float(r["selected"].sum()) if "selected" in r else 0.0
            share = float(r["stragglers"].sum()) / sel if sel > 0 and "stragglers" in r else math.nan
            rows.append({"cell": cell, "seed": run.seed, "final_accuracy": s["final_accuracy"],
                         "sim_s_to_target": s["sim_s_to_target"], "bytes_total": s["bytes_total"],
                         "straggler_share": share})
    return pd.DataFrame(rows, columns=["cell", "seed", "final_accuracy", "sim_s_to_target", "bytes_total",
                                       "straggler_share"])


def _on_grid(curves: list[pd.DataFrame], xcol: str, grid: np.ndarray) -> np.ndarray:
    """Seeds x grid: each seed's last evaluated accuracy at or before each x (NaN before its first)."""
    out = np.full((len(curves), grid.size), np.nan)
    for i, c in enumerate(curves):
        x, y = c[xcol].to_numpy(float), c["accuracy"].to_numpy(float)
        if not x.size:
            continue
        idx = np.searchsorted(x, grid, side="right") - 1
        ok = idx >= 0  # after its run ends a seed keeps its final accuracy
        out[i, ok] = y[idx[ok]]
    return out


def _cell_colours(n: int) -> list:
    return list(OKABE_ITO[:n]) if n <= len(OKABE_ITO) else colours(n)


def plot_curves_by_cell(
    groups: dict[str, list[RunDir]], out_dir: str | Path, *, target: float | None = None,
    what: str = "cell", formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write ``accuracy_vs_time_by_cell`` and ``accuracy_vs_bytes_by_cell`` (see the module docstring)."""
    curves = {c: [_curve(r) for r in runs] for c, runs in groups.items()}
    curves = {c: [d for d in v if len(d)] for c, v in curves.items()}
    curves = {c: v for c, v in curves.items() if v}
    if not curves:
        return []
    written: list[Path] = []
    for xcol, stem in (("t_s", "accuracy_vs_time_by_cell"), ("bytes", "accuracy_vs_bytes_by_cell")):
        xmax = max(float(d[xcol].max()) for v in curves.values() for d in v)
        grid = np.linspace(0.0, xmax, _GRID_POINTS)
        if xcol == "t_s":
            div, unit = time_unit(xmax)
            xlabel = f"Simulated time [{unit}]"
        else:
            div, unit = (1e9, "GB") if xmax >= 1e9 else (1e6, "MB")
            xlabel = f"Bytes moved, up + down [{unit}]"
        lines = {}
        for c, v in curves.items():
            m = _on_grid(v, xcol, grid)
            m[:, ~np.isfinite(m).all(axis=0)] = np.nan  # drawn from where every seed has been evaluated
            lines[c] = (m.mean(axis=0), m.min(axis=0), m.max(axis=0), len(v))
        with style():
            fig = _draw_curves(lines, grid / div, xlabel, target)
            xname = "simulated time" if xcol == "t_s" else "bytes moved"
            fig.suptitle(f"Accuracy vs {xname}, per {what}\nline: mean over seeds; band: lowest to highest seed "
                         "(a finished run keeps its final accuracy)", fontsize=12)
            written += save(fig, out_dir, stem, formats)
    return written


def _draw_curves(lines: dict, x: np.ndarray, xlabel: str, target: float | None) -> object:
    cells = list(lines)
    cols = _cell_colours(len(cells))
    if len(cells) <= _MAX_SHARED:
        fig = new_figure(9.0, 5.2)
        ax = fig.add_subplot()
        for (c, (mean, lo, hi, n)), col in zip(lines.items(), cols):
            ax.fill_between(x, lo, hi, color=col, alpha=0.18, linewidth=0)
            ax.plot(x, mean, color=col, lw=1.8, label=f"{c} (n={n})")
        if target is not None:
            ax.axhline(target, ls="--", color="0.4", lw=1, label=f"target {target:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Test accuracy")
        ax.set_xlim(left=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        return fig
    ncols = 4 if len(cells) > 9 else 3
    nrows = math.ceil(len(cells) / ncols)
    fig = new_figure(min(16.0, 3.6 * ncols), min(22.0, 1.4 + 2.4 * nrows))
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, c in zip(axes, cells):
        for other, (mean, *_rest) in lines.items():
            if other != c:
                ax.plot(x, mean, color="0.8", lw=0.8)
        mean, lo, hi, n = lines[c]
        ax.fill_between(x, lo, hi, color=OKABE_ITO[0], alpha=0.25, linewidth=0)
        ax.plot(x, mean, color=OKABE_ITO[0], lw=1.8)
        if target is not None:
            ax.axhline(target, ls="--", color="0.4", lw=0.8)
        ax.set_title(f"{c} (n={n})", fontsize=9)
        ax.set_xlim(left=0)
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    fig.supxlabel(xlabel)
    fig.supylabel("Test accuracy" + ("" if target is None else f" (dashed: target {target:g})"))
    return fig


def _ci(agg: pd.DataFrame, m: str) -> np.ndarray:
    return agg[f"{m}_ci95"].fillna(0.0).to_numpy(float)


def plot_tradeoff(
    per_run: pd.DataFrame, out_dir: str | Path, *, target: float | None = None, what: str = "cell",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write ``tradeoff``: per cell, final accuracy vs time to target (left) and vs bytes (right), 95 % CIs."""
    from analysis.compare import aggregate_cells

    if per_run.empty:
        return []
    order = list(dict.fromkeys(per_run["cell"]))
    agg = aggregate_cells(per_run, ["cell"], ["final_accuracy", "sim_s_to_target", "bytes_total"])
    agg = agg.set_index("cell").loc[order].reset_index()
    cols = _cell_colours(len(agg))
    tmax = float(np.nanmax(agg["sim_s_to_target_mean"])) if agg["sim_s_to_target_mean"].notna().any() else 0.0
    div, unit = time_unit(tmax)
    bdiv, bunit = (1e9, "GB") if float(np.nanmax(agg["bytes_total_mean"])) >= 1e9 else (1e6, "MB")
    with style():
        fig = new_figure(12.0, 5.4)
        axes = fig.subplots(1, 2, sharey=True)
        panels = ((axes[0], "sim_s_to_target", div, f"Simulated time to target [{unit}]"),
                  (axes[1], "bytes_total", bdiv, f"Bytes moved per run [{bunit}]"))
        y, ci_y = agg["final_accuracy_mean"].to_numpy(float), _ci(agg, "final_accuracy")
        ye = np.vstack([np.minimum(ci_y, np.maximum(y, 0.0)), np.minimum(ci_y, np.maximum(1.0 - y, 0.0))])
        for ax, m, d, xlabel in panels:
            x, xe = agg[f"{m}_mean"].to_numpy(float) / d, _ci(agg, m) / d
            for i, c in enumerate(agg["cell"]):
                if not (np.isfinite(x[i]) and np.isfinite(y[i])):
                    continue
                ax.errorbar(x[i], y[i], xerr=xe[i], yerr=ye[:, i:i + 1], fmt="o", ms=6, color=cols[i], capsize=3,
                            lw=1.2, label=c)
                ax.annotate(str(i + 1), (x[i], y[i]), textcoords="offset points", xytext=(5, 4), fontsize=8)
            ax.set_xlabel(xlabel)
            ax.set_xlim(left=0)
        axes[0].set_ylabel("Final accuracy")
        missing = agg.loc[agg["sim_s_to_target_mean"].isna(), "cell"].tolist()
        if missing:
            import textwrap

            txt = (f"no {what} reached the target" if len(missing) == len(agg) else
                   "never reached the target: " + "; ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
            axes[0].text(0.5, 0.5 if len(missing) == len(agg) else 0.03, textwrap.fill(txt, 45),
                         transform=axes[0].transAxes, fontsize=9, color="0.35", ha="center",
                         va="center" if len(missing) == len(agg) else "bottom")
        handles, labels = axes[1].get_legend_handles_labels()
        num = {c: i + 1 for i, c in enumerate(agg["cell"])}
        fig.legend(handles, [f"{num[lab]}: {lab}" for lab in labels], loc="outside right upper", fontsize=8)
        tgt = "" if target is None else f" {target:g}"
        fig.suptitle(f"Trade-off per {what}: final accuracy vs time to target{tgt} and vs bytes\n"
                     "mean ± 95 % CI over seeds (time to target: seeds that reached it)", fontsize=12)
        return save(fig, out_dir, "tradeoff", formats)


def plot_straggler_share(
    per_run: pd.DataFrame, out_dir: str | Path, *, what: str = "cell", formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write ``straggler_share``: per cell, stragglers / selected client-rounds, mean ± 95 % CI over seeds."""
    from analysis.compare import aggregate_cells

    if per_run.empty or not per_run["straggler_share"].notna().any():
        return []
    order = list(dict.fromkeys(per_run["cell"]))
    agg = aggregate_cells(per_run, ["cell"], ["straggler_share"]).set_index("cell").loc[order].reset_index()
    n = len(agg)
    mean = 100 * agg["straggler_share_mean"].to_numpy(float)
    ci = 100 * _ci(agg, "straggler_share")
    lo = np.minimum(ci, np.maximum(mean, 0.0))  # clipped to [0, 100] %
    hi = np.minimum(ci, np.maximum(100.0 - mean, 0.0))
    with style():
        fig = new_figure(9.0, max(3.0, 1.4 + 0.38 * n))
        ax = fig.add_subplot()
        ypos = np.arange(n)
        ax.barh(ypos, mean, xerr=np.vstack([lo, hi]), color=OKABE_ITO[1], capsize=3, height=0.6)
        for yi, m in zip(ypos, mean):
            if np.isfinite(m):
                ax.text(m, yi, f" {m:.1f} %", va="center", ha="left", fontsize=8)
        ax.set_yticks(ypos)
        ax.set_yticklabels(agg["cell"].tolist(), fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, min(100.0, max(5.0, float(np.nanmax(mean + hi)) * 1.2)))
        ax.set_xlabel("Stragglers / selected client-rounds [%]")
        ax.grid(axis="y", visible=False)
        ax.set_title(f"Straggler share per {what} (mean ± 95 % CI over seeds)", fontsize=12)
        return save(fig, out_dir, "straggler_share", formats)


def runs_by_label(runs: Sequence[RunDir]) -> dict[str, list[RunDir]]:
    """Runs grouped by :attr:`RunDir.label` (name, policy, aggregation), in first-seen order: the seeds
    of one setting form one group."""
    out: dict[str, list[RunDir]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def shared_target(runs: Sequence[RunDir]) -> float | None:
    """The runs' common ``evaluation.target_accuracy`` (None when absent or when they differ)."""
    from analysis.compare import run_target

    ts = {run_target(r) for r in runs}
    return ts.pop() if len(ts) == 1 else None


def group_figures(
    groups: dict[str, list[RunDir]], out_dir: str | Path, *, target: float | None = None,
    what: str = "cell", formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Every figure of this module for ``groups`` (cells with at least one run); return the paths.

    ``what`` names a group in the titles: ``"cell"`` (a sweep's grid cell) or ``"setting"``
    (``fedsim compare``'s runs of one label)."""
    groups = {c: v for c, v in groups.items() if v}
    if not groups:
        return []
    per_run = per_run_table(groups, target)
    return (plot_curves_by_cell(groups, out_dir, target=target, what=what, formats=formats)
            + plot_tradeoff(per_run, out_dir, target=target, what=what, formats=formats)
            + plot_straggler_share(per_run, out_dir, what=what, formats=formats))
