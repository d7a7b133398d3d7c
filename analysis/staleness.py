"""Staleness histogram of the folded updates (``updates.parquet``), one panel per run, side by side.

Drawn by ``fedsim plot`` for one run and by ``fedsim compare`` for several
(next to the accuracy-vs-time overlay): sync shows a single bar at 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis._style import FORMATS, new_figure, save, style, unique_labels
from analysis.rundir import RunDir, as_rundir

RunLike = RunDir | str | Path

log = logging.getLogger(__name__)

__all__ = ["plot_staleness"]


def plot_staleness(
    runs: RunLike | Sequence[RunLike], out_dir: str | Path, *, formats: Sequence[str] = FORMATS, max_panels: int = 6,
) -> list[Path]:
    """Write ``staleness_hist``: for each run (up to ``max_panels``), the share of
    folded updates by staleness, per expert (in the expert's own versions) and for
    the shared backbone and gate (in shared versions). Runs without an
    ``updates`` table are skipped; nothing is written if none has one."""
    if isinstance(runs, (RunDir, str, Path)):
        runs = [runs]
    rds = [r for r in (as_rundir(x) for x in runs) if r.has("updates") and len(r.table("updates"))]
    if not rds:
        log.info("skipping staleness histogram: no run has updates.parquet rows")
        return []
    rds = rds[:max_panels]
    labels = unique_labels([r.label if r.aggregation != "sync" else f"{r.label} [sync]" for r in rds], [f"seed {r.seed}" for r in rds])
    top = max(int(r.table("updates")["staleness"].max()) for r in rds)
    bins = np.arange(top + 2)
    with style():
        fig = new_figure(min(4.0 * len(rds), 16.0), 3.8)
        axes = fig.subplots(1, len(rds), sharey=True, squeeze=False)[0]
        for ax, r, lab in zip(axes, rds, labels):
            u = r.table("updates")
            for sel, name, off, colour in ((u["expert"] >= 0, "experts", -0.2, "#0072B2"), (u["expert"] < 0, "backbone + gate", 0.2, "#E69F00")):
                v = u.loc[sel, "staleness"].to_numpy()
                if not len(v):
                    continue
                counts = np.bincount(v.astype(int), minlength=len(bins) - 1)[: len(bins) - 1]
                ax.bar(bins[:-1] + off, counts / counts.sum(), width=0.4, label=name, color=colour)
            ax.set_title(lab, fontsize=9)
            ax.set_xlabel("Staleness [versions]")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].set_ylabel("Share of folded updates")
        axes[0].legend(loc="upper right", fontsize=8)
        fig.suptitle("Staleness of folded updates (expert: own versions; backbone + gate: shared versions)", fontsize=10)
        return save(fig, out_dir, "staleness_hist", formats)
