"""Compact terminal tables (rich) for ``fedsim compare``: units, no NaN, few columns.

The files written by :mod:`analysis.compare` and :mod:`analysis.sweep` keep every
column; these tables show what a person compares at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.table import Table

from analysis.info import format_bytes
from fedsim.engine.headline import short_seconds


def _fail(v: Any) -> str:
    return "/".join("—" if x != x else f"{x:,.0f}" for x in v)

__all__ = ["runs_table", "cells_table", "format_value"]

#: metric -> (column title, formatter)
_COLUMNS: dict[str, tuple[str, Any]] = {
    "final_accuracy": ("final acc.", lambda v: f"{v:.3f}"),
    "rounds_to_target": ("rounds to target", lambda v: f"{v:.0f}"),
    "sim_s_to_target": ("sim. time to target", short_seconds),
    "sim_s_total": ("sim. time", short_seconds),
    "bytes_total": ("bytes moved", format_bytes),
    "accuracy_macro": ("group-macro acc.", lambda v: f"{v:.3f}"),
    "routed_entropy": ("routed entropy", lambda v: f"{v:.2f}"),
    "max_share": ("max expert share", lambda v: f"{v:.2f}"),
}
_FAILURES = ("stragglers", "dropouts", "ooms")
_NOT_IN_RUNS_TABLE = ("routed_entropy", "max_share")


def format_value(metric: str, v: Any) -> str:
    """``v`` formatted with the unit of ``metric``; ``—`` for missing values."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    fmt = _COLUMNS.get(metric, (metric, lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)))[1]
    try:
        return fmt(float(v))
    except (TypeError, ValueError):
        return str(v)


def runs_table(df: pd.DataFrame, title: str = "runs") -> Table:
    """One row per run (the frame of :func:`analysis.compare.compare_runs`)."""
    t = Table(title=title)
    head = [c for c in ("name", "policy", "seed") if c in df.columns]
    # the terminal keeps few columns: the routing measures are in summary.csv / .md and `fedsim info`,
    # and group-macro accuracy shows only where some run has groups
    mets = [m for m in _COLUMNS if m in df.columns and m not in _NOT_IN_RUNS_TABLE
            and (m != "accuracy_macro" or pd.to_numeric(df[m], errors="coerce").notna().any())]
    for c in head:
        t.add_column(c)
    for m in mets:
        t.add_column(_COLUMNS[m][0], justify="right", no_wrap=True)
    fails = all(c in df.columns for c in _FAILURES)
    if fails:
        t.add_column("stragglers/dropouts/OOMs", justify="right", no_wrap=True)
    if "status" in df.columns:
        t.add_column("status")
    for _, row in df.iterrows():
        cells = [str(row[c]) if row[c] is not None else "—" for c in head]
        cells += [format_value(m, row[m]) for m in mets]
        if fails:
            cells.append(_fail([float(row[c]) for c in _FAILURES]))
        if "status" in df.columns:
            cells.append(str(row["status"]))
        t.add_row(*cells)
    return t


def cells_table(cells: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], title: str = "sweep cells") -> Table:
    """One row per grid cell: the swept values, runs, and ``mean ± 95 % CI`` per metric."""
    t = Table(title=title, caption="mean ± half-width of the 95 % Student-t interval over the cell's completed runs")
    for k in keys:
        t.add_column(k.rsplit(".", 1)[-1])
    t.add_column("runs", justify="right")
    mets = [m for m in metrics if f"{m}_mean" in cells.columns]
    for m in mets:
        t.add_column(_COLUMNS.get(m, (m,))[0], justify="right", no_wrap=True)
    for _, row in cells.iterrows():
        out = [str(row[k]) for k in keys]
        runs = row.get("runs", math.nan)
        failed = row.get("failed", 0)
        out.append(f"{int(runs)}" + (f" ({int(failed)} failed)" if failed and failed == failed else "")
                   if runs == runs else "0")
        for m in mets:
            mean, ci = row.get(f"{m}_mean"), row.get(f"{m}_ci95")
            txt = format_value(m, mean)
            if txt != "—" and ci is not None and ci == ci and ci > 0:
                txt += f" ± {format_value(m, ci)}"
            out.append(txt)
        t.add_row(*out)
    return t
