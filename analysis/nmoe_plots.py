"""nmoe training cost figure: simulated seconds and bytes of each training stage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis._style import FORMATS, OKABE_ITO, new_figure, save, style, time_unit
from analysis.rundir import as_rundir

__all__ = ["plot_nmoe_stages"]

STAGE_NAMES = {"extractor": "1: extractor", "experts": "2: experts", "gate": "3: gate"}


def plot_nmoe_stages(run: object, out_dir: str | Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """nmoe runs: per training stage, the simulated seconds (left) and the MB
    moved up / down (right), from ``rounds.parquet`` (columns ``stage``,
    ``duration_s``, ``bytes_up``, ``bytes_down``); the title gives the trained
    model's accuracy (last row). Returns ``[]`` for other runs."""
    run = as_rundir(run)
    if run.protocol != "nmoe" or not run.has("rounds"):
        return []
    r = run.rounds
    if r.empty or "stage" not in r.columns:
        return []
    stages = [s for s in STAGE_NAMES if (r["stage"] == s).any()]
    secs = np.array([float(r.loc[r["stage"] == s, "duration_s"].sum()) for s in stages])
    up = np.array([float(r.loc[r["stage"] == s, "bytes_up"].sum()) for s in stages]) / 1e6
    down = np.array([float(r.loc[r["stage"] == s, "bytes_down"].sum()) for s in stages]) / 1e6
    div, unit = time_unit(float(secs.max()) if secs.size else 0.0)
    labels = [STAGE_NAMES[s] for s in stages]
    acc = float(r["accuracy"].dropna().iloc[-1]) if "accuracy" in r.columns and r["accuracy"].notna().any() else math.nan
    with style():
        fig = new_figure(11.0, 4.4)
        ax, ax2 = fig.subplots(1, 2)
        y = np.arange(len(stages))
        ax.barh(y, secs / div, color=OKABE_ITO[0])
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"Simulated time [{unit}]")
        ax.set_title("Training time per stage")
        ax2.barh(y - 0.2, up, height=0.4, color=OKABE_ITO[1], label="up (to aggregator / next hop)")
        ax2.barh(y + 0.2, down, height=0.4, color=OKABE_ITO[2], label="down (to clients)")
        ax2.set_yticks(y, labels)
        ax2.invert_yaxis()
        ax2.set_xlabel("Bytes moved [MB]")
        ax2.set_title("Training traffic per stage")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        sub = f"total {secs.sum() / div:.3g} {unit}, {(up + down).sum():.3g} MB"
        fig.suptitle(f"nmoe training — {run.label} ({sub}; model accuracy {acc:.3f})")
        return save(fig, out_dir, "nmoe_stages", formats)
