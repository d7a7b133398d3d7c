"""The headline metrics of a run: one definition, used by the sweep index
(``fedsim.sweep``) and by ``fedsim compare`` / ``fedsim info`` (``analysis.compare``).

Imports only pandas and numpy, so the analysis layer can read it without the simulator.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["HEADLINE_METRICS", "headline_metrics", "short_seconds"]

#: Headline metrics, in order (see :func:`headline_metrics`).
HEADLINE_METRICS: tuple[str, ...] = (
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "sim_s_to_target",
    "sim_s_total",
    "stragglers",
    "dropouts",
    "ooms",
    "bytes_total",
)


def headline_metrics(rounds: pd.DataFrame, target_accuracy: float | None = None, sim_end_s: float | None = None) -> dict[str, float]:
    """Headline metrics of a run from its ``rounds`` table (columns of
    :data:`fedsim.engine.tables.TABLES` ``["rounds"]``; any may be missing).

    - ``final_accuracy``: accuracy of the last evaluated round (finite
      accuracy, in ``round`` order); ``best_accuracy``: the maximum.
    - ``rounds_to_target``: rounds run until the first evaluated round with
      accuracy >= ``target_accuracy`` (``round + 1``, rounds numbered from 0);
      ``sim_s_to_target``: simulated seconds (s) at the end of that round.
      NaN if never reached or no target.
    - ``sim_s_total``: simulated seconds at the end of the last round
      (``sim_end_s``, the manifest's, if there are no rounds).
    - ``stragglers``, ``dropouts``, ``ooms``: totals over rounds;
      ``bytes_total``: ``bytes_up + bytes_down`` summed over rounds (bytes).

    Missing columns give NaN, never an error; every value is a float.
    """
    out = dict.fromkeys(HEADLINE_METRICS, math.nan)
    r = rounds.sort_values("round", kind="stable") if "round" in rounds.columns else rounds
    if "accuracy" in r.columns:
        acc = pd.to_numeric(r["accuracy"], errors="coerce").astype(float)
        keep = np.isfinite(acc.to_numpy())
        ev, evacc = r[keep], acc[keep]
        if len(ev):
            out["final_accuracy"] = float(evacc.iloc[-1])
            out["best_accuracy"] = float(evacc.max())
            if target_accuracy is not None:
                hit = ev[(evacc >= target_accuracy).to_numpy()]
                if len(hit):
                    first = hit.iloc[0]
                    if "round" in hit.columns:
                        out["rounds_to_target"] = float(int(first["round"]) + 1)
                    if "t_end_s" in hit.columns:
                        out["sim_s_to_target"] = float(first["t_end_s"])
    for col in ("stragglers", "dropouts", "ooms"):
        if col in r.columns:
            out[col] = float(r[col].sum())
    if "bytes_up" in r.columns or "bytes_down" in r.columns:
        out["bytes_total"] = float(sum(r[c].sum() for c in ("bytes_up", "bytes_down") if c in r.columns))
    if "t_end_s" in r.columns and len(r):
        out["sim_s_total"] = float(r["t_end_s"].max())
    elif sim_end_s is not None:
        out["sim_s_total"] = float(sim_end_s)
    return out


def short_seconds(s: float) -> str:
    """Seconds in the largest readable unit: ``"42.0 s"``, ``"3.5 min"``, ``"2.10 h"``
    (below 120 s, below 2 h, else). Used by the run's progress line and ``fedsim compare``."""
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
