"""Sweep reports: mean and 95 % CI per grid cell, and metric-vs-parameter plots.

Reads a sweep directory written by ``fedsim sweep`` (``sweep.parquet``, the
index, and ``sweep.json``, which names the grid keys); never the simulator.

::

    from analysis.sweep import compare_sweep
    cells = compare_sweep("sweeps/policy", "sweeps/policy/report")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.compare import aggregate_cells, plot_metric_vs_param, to_markdown
from fedsim.engine.headline import HEADLINE_METRICS

__all__ = [
    "DEFAULT_METRICS",
    "PLOT_METRICS",
    "POLICY_KEY",
    "is_sweep_dir",
    "read_sweep",
    "compare_sweep",
    "cell_label",
]

#: Metrics tabulated by default (the headline metrics of ``sweep.parquet``).
DEFAULT_METRICS: tuple[str, ...] = HEADLINE_METRICS
#: Metrics plotted against each swept parameter by default.
PLOT_METRICS: tuple[str, ...] = ("final_accuracy", "sim_s_to_target")
#: The grid key whose values become the lines (hue) of the plots.
POLICY_KEY = "protocol.fedmoe.alignment.policy"

_NON_GRID = {"run_dir", "seed", "status", "error", "wall_s", *DEFAULT_METRICS}


def is_sweep_dir(path: str | Path) -> bool:
    """True if ``path`` is a sweep directory (holds ``sweep.parquet``)."""
    return (Path(path) / "sweep.parquet").is_file()


def read_sweep(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The sweep index (one row per run) and its grid keys, in grid order.

    Grid keys come from ``sweep.json``; without it, every column that is not
    a known index column is taken as a grid key.

    Raises:
        FileNotFoundError: ``sweep_dir`` has no ``sweep.parquet``.
    """
    d = Path(sweep_dir)
    if not is_sweep_dir(d):
        raise FileNotFoundError(f"{d}: not a sweep directory (no sweep.parquet)")
    df = pd.read_parquet(d / "sweep.parquet")
    keys: list[str] | None = None
    meta = d / "sweep.json"
    if meta.is_file():
        try:
            keys = list(json.loads(meta.read_text(encoding="utf-8")).get("grid_keys", []))
        except (OSError, ValueError):
            keys = None
    if keys is None:
        keys = [c for c in df.columns if c not in _NON_GRID]
    return df, [k for k in keys if k in df.columns]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def cell_label(row: dict, keys: Sequence[str]) -> str:
    """A grid cell's label: its values, ``w_u=0.5`` style (the policy by its name alone)."""
    parts = [str(row[k]) if k == POLICY_KEY else f"{_short(k)}={row[k]}" for k in keys]
    return ", ".join(parts) or "all runs"


def _cell_figures(sweep_dir: Path, ok: pd.DataFrame, keys: list[str], out: Path, formats: Sequence[str]) -> None:
    """Accuracy vs time and vs bytes with seed bands, the trade-off scatter and the straggler
    share, one group per grid cell (:func:`analysis.plots_sweep.group_figures`)."""
    from analysis.plots_sweep import group_figures, shared_target
    from analysis.rundir import RunDir

    groups: dict[str, list[RunDir]] = {}
    for row in ok.to_dict("records"):
        d = sweep_dir / str(row["run_dir"])
        if (d / "rounds.parquet").is_file():
            groups.setdefault(cell_label(row, keys), []).append(RunDir(d))
    runs = [r for v in groups.values() for r in v]
    group_figures(groups, out, target=shared_target(runs), formats=formats)


def compare_sweep(
    sweep_dir: str | Path,
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    plot_metrics: Sequence[str] | None = None,
    formats: Sequence[str] = ("png",),
) -> pd.DataFrame:
    """Aggregate a sweep per grid cell and plot metrics against swept parameters.

    Only runs with status ``completed`` count. Per cell (one combination of
    grid values) and metric ``m``: ``m_mean``, ``m_std``, ``m_n``, ``m_ci95``
    (half-width of the two-sided 95 % Student-t interval), ``m_lo``, ``m_hi``
    (see :func:`analysis.compare.aggregate_cells`); plus ``runs`` (completed
    runs in the cell) and ``failed``. Rows are in grid order.

    Writes into ``out_dir``: ``cells.csv``, ``cells.md``, the per-cell figures of
    :mod:`analysis.plots_sweep` (``accuracy_vs_time_by_cell``,
    ``accuracy_vs_bytes_by_cell``, ``tradeoff``, ``straggler_share``) and, for each plot
    metric and each swept parameter other than ``protocol.fedmoe.alignment.policy``,
    ``{metric}_vs_{param}.png`` with one line per policy (when the policy is
    swept; other swept keys are pooled). If the policy is the only swept key,
    ``{metric}_vs_policy.png`` shows it as categories.

    Args:
        metrics: metrics to tabulate (default :data:`DEFAULT_METRICS` present in the index).
        plot_metrics: metrics to plot (default :data:`PLOT_METRICS`, among ``metrics``).

    Returns:
        The per-cell table written to ``cells.csv``.
    """
    df, keys = read_sweep(sweep_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ms = [m for m in (metrics or DEFAULT_METRICS) if m in df.columns]
    missing = [m for m in (metrics or []) if m not in df.columns]
    if missing:
        raise KeyError(f"compare_sweep: metrics not in sweep.parquet: {missing}")
    ok = df[df["status"] == "completed"].copy()
    cells = aggregate_cells(ok, keys, ms) if len(ok) else pd.DataFrame(columns=keys)
    if keys:
        counts = (
            df.groupby(keys, dropna=False, sort=True)["status"]
            .agg(
                runs=lambda s: int((s == "completed").sum()),
                failed=lambda s: int((s == "failed").sum()),
            )
            .reset_index()
        )
        cells = counts.merge(cells, on=keys, how="left") if len(cells) else counts
        # cells in grid order (the index is ordered by cell then seed), not sorted
        order = df[keys].drop_duplicates()
        cells = order.merge(cells, on=keys, how="left").reset_index(drop=True)
    else:
        cells.insert(0, "runs", int((df["status"] == "completed").sum()))
        cells.insert(1, "failed", int((df["status"] == "failed").sum()))
    cells.to_csv(out / "cells.csv", index=False)
    show = [*keys, "runs", "failed"] + [
        c for m in ms for c in (f"{m}_mean", f"{m}_ci95") if c in cells.columns
    ]
    header = f"# Sweep {Path(sweep_dir)}\n\nMean and 95 % Student-t CI half-width per grid cell ({len(ok)} completed runs).\n\n"
    (out / "cells.md").write_text(header + to_markdown(cells[show]), encoding="utf-8")

    if len(ok):
        _cell_figures(Path(sweep_dir), ok, keys, out, formats)
    pms = [m for m in (plot_metrics or PLOT_METRICS) if m in ms]
    hue = POLICY_KEY if POLICY_KEY in keys else "policy"
    params = [k for k in keys if k != POLICY_KEY] or ([POLICY_KEY] if POLICY_KEY in keys else [])
    if len(ok):
        for m in pms:
            if not pd.to_numeric(ok[m], errors="coerce").notna().any():
                continue
            for p in params:
                by = [POLICY_KEY, p] if POLICY_KEY in keys and p != POLICY_KEY else [p]
                # pre-aggregate so lines and categories keep grid order (other swept keys pooled)
                agg = (
                    ok[by].drop_duplicates().merge(aggregate_cells(ok, by, [m]), on=by, how="left")
                )
                name = _short(p) if p != POLICY_KEY else "policy"
                plot_metric_vs_param(
                    agg,
                    p,
                    m,
                    hue=hue if p != POLICY_KEY else "_none_",
                    out=out / f"{m}_vs_{name}.png",
                    formats=formats,
                )
    return cells
