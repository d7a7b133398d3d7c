"""Comparing runs and aggregating sweeps.

- :func:`run_summary` / :func:`compare_runs`: one summary row per run
  (accuracy, time to a target accuracy, failures, bytes) plus overlaid
  accuracy curves and ``summary.csv`` / ``summary.md``.
- :func:`aggregate_cells`: mean and 95 % Student-t confidence interval of
  metrics per grid cell of a sweep (one row per run in, one per cell out).
- :func:`plot_metric_vs_param`: a metric against a swept parameter, one line
  per policy, with the confidence intervals as error bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis._style import FORMATS, colours, new_figure, save, style
from analysis.plots import RunLike, plot_accuracy
from analysis.rundir import RunDir, as_rundir
from fedsim.engine.headline import headline_metrics

__all__ = [
    "SUMMARY_COLUMNS",
    "run_summary",
    "compare_runs",
    "aggregate_cells",
    "plot_metric_vs_param",
]

#: Columns of the summary table, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "name",
    "protocol",
    "policy",
    "seed",
    "rounds",
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "sim_s_to_target",
    "stragglers",
    "dropouts",
    "ooms",
    "bytes_total",
    "sim_s_total",
    "wall_s",
    "status",
    "path",
)


def run_target(run: RunLike) -> float | None:
    """The run's ``evaluation.target_accuracy`` from its manifest (None if absent)."""
    ev = (as_rundir(run).scenario or {}).get("evaluation") or {}
    t = ev.get("target_accuracy")
    return float(t) if t is not None else None


def run_summary(run: RunLike, *, target_accuracy: float | None = None) -> dict[str, Any]:
    """Summary numbers of one run.

    The headline metrics (``final_accuracy``, ``best_accuracy``,
    ``rounds_to_target``, ``sim_s_to_target``, ``stragglers``, ``dropouts``,
    ``ooms``, ``bytes_total``, ``sim_s_total``) are
    :func:`fedsim.engine.headline.headline_metrics`, the same function as the
    sweep index's, so run and sweep tables read alike.
    Without ``target_accuracy`` the run's own ``evaluation.target_accuracy`` is used.
    """
    run = as_rundir(run)
    r = run.rounds
    if target_accuracy is None:  # the run's own evaluation.target_accuracy (schema default 0.8)
        target_accuracy = run_target(run)
    man = run.manifest
    h = headline_metrics(r, target_accuracy, man.get("sim_end_s"))
    return {
        "name": run.name,
        "protocol": run.protocol,
        "policy": run.policy,
        "seed": run.seed,
        "rounds": int(len(r)),
        **{k: h[k] for k in SUMMARY_COLUMNS if k in h},
        "wall_s": float(man["wall_s"]) if man.get("wall_s") is not None else math.nan,
        "status": str(man.get("status", "?")),
        "path": str(run.path),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no external dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(
    run_dirs: Sequence[RunLike],
    out_dir: str | Path,
    *,
    target_accuracy: float | None = None,
    formats: Sequence[str] = FORMATS,
) -> pd.DataFrame:
    """Overlay accuracy curves of several runs and tabulate their summaries.

    Writes into ``out_dir``: ``accuracy_vs_round``, ``accuracy_vs_time``,
    ``staleness_hist`` (one panel per run, when an async or semi-async run is
    among them), the per-group figures of :mod:`analysis.plots_sweep` (runs
    grouped by label, so seeds of one setting form a band; PNG and SVG),
    ``summary.csv`` and ``summary.md``.

    Args:
        run_dirs: run directories (paths or :class:`RunDir`).
        target_accuracy: accuracy level for ``rounds_to_target`` and
            ``sim_s_to_target`` (see :func:`run_summary`).

    Returns:
        One row per run with the columns :data:`SUMMARY_COLUMNS`.
    """
    runs: list[RunDir] = [as_rundir(r) for r in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        [run_summary(r, target_accuracy=target_accuracy) for r in runs],
        columns=list(SUMMARY_COLUMNS),
    )
    from analysis.alignment_measures import add_alignment_columns

    df = add_alignment_columns(df, runs, target_accuracy)  # fedmoe: the paper's alignment measures
    if runs:
        from analysis.plots_sweep import group_figures, runs_by_label
        from analysis.staleness import plot_staleness

        tgt = target_accuracy
        if tgt is None:  # one shared run target is drawn; differing ones are not
            ts = {run_target(r) for r in runs}
            tgt = ts.pop() if len(ts) == 1 else None
        plot_accuracy(runs, out, target=tgt, formats=formats)
        if any(r.aggregation not in ("-", "sync") for r in runs):  # sync: every update at staleness 0; "-": not fedmoe
            plot_staleness(runs, out, formats=formats)  # sync and async side by side
        group_figures(runs_by_label(runs), out, target=tgt, what="setting", formats=formats)
    df.to_csv(out / "summary.csv", index=False)
    md = df.drop(columns=["path"])
    header = "# Run comparison\n\n"
    if target_accuracy is not None:
        header += f"Target accuracy: {target_accuracy:g}\n\n"
    else:
        targets = sorted({t for t in (run_target(r) for r in runs) if t is not None})
        header += f"Target accuracy: each run's evaluation.target_accuracy ({', '.join(f'{t:g}' for t in targets)})\n\n"
    (out / "summary.md").write_text(header + to_markdown(md), encoding="utf-8")
    return df


def aggregate_cells(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and 95 % confidence interval of ``metrics`` per cell of ``by``.

    The interval is the two-sided Student-t interval of the mean,
    ``mean ± t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1). NaN values of a metric (e.g. a target never reached)
    are left out of that metric's ``n``. With ``n < 2`` the half-width is NaN.

    Returns:
        One row per cell: the ``by`` columns, then for each metric ``m``:
        ``m_mean``, ``m_std``, ``m_n``, ``m_ci95`` (half-width), ``m_lo``, ``m_hi``.

    Raises:
        KeyError: a ``by`` or ``metrics`` column is not in ``df``.
    """
    from scipy.stats import t as student_t

    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"aggregate_cells: columns not in DataFrame: {missing}")
    rows = []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            n = int(v.size)
            mean = float(v.mean()) if n else math.nan
            std = float(v.std(ddof=1)) if n >= 2 else math.nan
            half = float(student_t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n >= 2 else math.nan
            row.update(
                {
                    f"{m}_mean": mean,
                    f"{m}_std": std,
                    f"{m}_n": n,
                    f"{m}_ci95": half,
                    f"{m}_lo": mean - half,
                    f"{m}_hi": mean + half,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


_PRETTY = {
    "final_accuracy": "Final accuracy",
    "best_accuracy": "Best accuracy",
    "rounds_to_target": "Rounds to target",
    "sim_s_to_target": "Simulated time to target [s]",
    "bytes_total": "Bytes moved [B]",
    "sim_s_total": "Simulated time [s]",
    "stragglers": "Stragglers",
    "dropouts": "Dropouts",
    "ooms": "OOMs",
}


def _metric_range(metric: str) -> tuple[float, float]:
    """Range a metric can take: [0, 1] for accuracy, F1 and AUC; >= 0 for the others
    (seconds, bytes, rounds, counts)."""
    if any(k in metric for k in ("accuracy", "f1", "auc")) and "to_target" not in metric:
        return 0.0, 1.0
    return 0.0, math.inf


def plot_metric_vs_param(
    df: pd.DataFrame,
    param: str,
    metric: str,
    hue: str = "policy",
    out: str | Path = ".",
    *,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Plot ``metric`` against swept ``param``, one line per ``hue`` value, 95 % CI bars.

    ``df`` is either one row per run (it is aggregated with
    :func:`aggregate_cells` by ``[hue, param]``) or already aggregated (has
    ``{metric}_mean`` and ``{metric}_ci95``). A numeric ``param`` is drawn on a
    numeric axis, anything else as categories in order of appearance.

    Args:
        out: a directory (the file stem is ``{metric}_vs_{param}``) or a file
            path whose suffix is dropped and replaced by each format.

    Returns:
        The written paths.
    """
    mean_c, ci_c = f"{metric}_mean", f"{metric}_ci95"
    if mean_c in df.columns:
        agg = df.copy()
        if ci_c not in agg.columns:
            agg[ci_c] = math.nan
    else:
        by = [hue, param] if hue in df.columns else [param]
        agg = aggregate_cells(df, by, [metric])
    out = Path(out)
    if out.suffix:
        out_dir, stem = out.parent, out.stem
    else:
        out_dir, stem = out, f"{metric}_vs_{param}"
    numeric = pd.api.types.is_numeric_dtype(agg[param])
    cats = list(dict.fromkeys(agg[param].tolist()))
    hues = list(dict.fromkeys(agg[hue].tolist())) if hue in agg.columns else [None]
    cols = colours(len(hues))
    n_h = len(hues)
    with style():
        fig = new_figure(8.0, 4.8)
        ax = fig.add_subplot()
        for i, (h, c) in enumerate(zip(hues, cols)):
            g = agg if h is None else agg[agg[hue] == h]
            if numeric:
                g = g.sort_values(param)
                x = g[param].to_numpy(float)
            else:
                # dodge categories so error bars of different policies do not overlap
                off = (i - (n_h - 1) / 2) * 0.08
                x = np.array([cats.index(v) for v in g[param]], dtype=float) + off
            ci = g[ci_c].to_numpy(float)
            ci = np.where(np.isfinite(ci), ci, 0.0)
            y = g[mean_c].to_numpy(float)
            lo_v, hi_v = _metric_range(metric)
            # the interval is clipped to the metric's range (few seeds give wide t intervals)
            yerr = np.vstack([np.minimum(ci, np.maximum(y - lo_v, 0.0)), np.minimum(ci, np.maximum(hi_v - y, 0.0))])
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                color=c,
                marker="o",
                ms=5,
                lw=1.8,
                ls="-" if numeric else "none",  # categories are not ordered: no connecting line
                capsize=4,
                label=str(h) if h is not None else metric,
            )
        if numeric:
            xs = np.asarray(sorted(set(agg[param].astype(float))), dtype=float)
            if xs.size and xs.min() > 0 and xs.max() / xs.min() >= 100:
                ax.set_xscale("log")
            if xs.size <= 12:
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{v:g}" for v in xs])
                ax.minorticks_off()
        else:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels([str(v) for v in cats])
        ax.set_xlabel(param)
        ax.set_ylabel(_PRETTY.get(metric, metric))
        n_c = f"{metric}_n"
        ns = sorted({int(v) for v in agg[n_c].dropna()}) if n_c in agg.columns else []
        n_txt = "" if not ns else (f", n = {ns[0]} runs per point" if len(ns) == 1 else f", n = {ns[0]}-{ns[-1]} runs per point")
        ax.set_title(f"{_PRETTY.get(metric, metric)} vs {param}\nmean ± 95 % CI, clipped to range{n_txt}",
                     fontsize=12)  # two lines: one did not fit the figure

        if hues != [None]:
            ax.legend(title=hue)
        return save(fig, out_dir, stem, formats)
