"""The design paper's alignment measures of one fedmoe run, from the run's own tables.

"Efficient Training of Large-Scale AI Models through Federated Mixture-of-Experts:
A System-Level Approach" judges an alignment policy by how the *training samples*
are spread over the experts (its usage quantity) and by accuracy and rounds to a
target. From ``experts`` (samples routed to each expert per round), ``rounds``
and ``personal``:

- ``share_cum``: each expert's share of all routed training samples, shape (E,);
- ``routed_entropy``: normalised entropy ``H(share_cum) / ln E`` in [0, 1]
  (1 = every expert got the same number of samples; 0 = one expert got all);
  ``routed_entropy_round``: the same per round, averaged over rounds that routed
  samples;
- ``max_share``, ``min_share``: the largest and smallest entry of ``share_cum``;
  ``starved_experts``: experts with ``share_cum < 1 / (4 E)``;
- ``accuracy`` (global gate, global test set), ``accuracy_macro`` (the same as the
  unweighted mean over data groups), ``accuracy_client`` (per-client inference):
  the last evaluated round's;
- ``rounds_to_target``, ``t_target_s`` (simulated s at the end of that round) and
  ``bytes_to_target`` (bytes up + down of all rounds up to and including it):
  the first evaluated round whose global-gate accuracy reaches the target; NaN if
  never reached.

Imports only numpy and pandas (the analysis layer reads it without the simulator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["MEASURES", "alignment_measures", "normalised_entropy", "routed_shares"]

#: Scalar measures of :func:`alignment_measures`, in order.
MEASURES: tuple[str, ...] = (
    "accuracy", "accuracy_macro", "accuracy_client", "routed_entropy", "routed_entropy_round",
    "max_share", "min_share", "starved_experts", "rounds_to_target", "t_target_s", "bytes_to_target",
)


def normalised_entropy(share: np.ndarray) -> float:
    """``-sum p ln p / ln E`` of a share vector ``(E,)`` (zeros count as 0); NaN if empty or E = 1."""
    p = np.asarray(share, dtype=float)
    if p.size < 2 or not np.isfinite(p).all() or p.sum() <= 0:
        return math.nan
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


def routed_shares(experts: pd.DataFrame) -> pd.DataFrame:
    """Per-round routed-sample share of each expert: frame indexed by round, one column per
    expert (NaN rows for rounds that routed nothing), from the ``experts`` table."""
    wide = experts.pivot_table(index="round", columns="expert", values="samples", aggfunc="sum").sort_index()
    tot = wide.sum(axis=1)
    return wide.div(tot.where(tot > 0), axis=0)


def _last(r: pd.DataFrame, col: str) -> float:
    if col not in r.columns:
        return math.nan
    v = pd.to_numeric(r[col], errors="coerce").dropna()
    return float(v.iloc[-1]) if len(v) else math.nan


def alignment_measures(frames: Mapping[str, pd.DataFrame], target_accuracy: float | None) -> dict[str, object]:
    """The measures of the module docstring from a run's ``rounds`` and ``experts`` frames
    (``frames`` maps table name to frame, as the run writes them). Every scalar is a float
    (NaN when its input is missing); ``share_cum`` is a list of E floats."""
    r = frames.get("rounds", pd.DataFrame())
    r = r.sort_values("round", kind="stable") if "round" in r.columns else r
    ex = frames.get("experts", pd.DataFrame())
    out: dict[str, object] = dict.fromkeys(MEASURES, math.nan)
    out["share_cum"] = []
    if len(ex) and {"round", "expert", "samples"} <= set(ex.columns):
        tot = ex.groupby("expert")["samples"].sum().sort_index()
        E = len(tot)
        if tot.sum() > 0:
            share = (tot / tot.sum()).to_numpy()
            out["share_cum"] = [float(x) for x in share]
            out["routed_entropy"] = normalised_entropy(share)
            out["max_share"] = float(share.max())
            out["min_share"] = float(share.min())
            out["starved_experts"] = float((share < 1.0 / (4 * E)).sum())
            per = routed_shares(ex).dropna(how="all")
            ents = [normalised_entropy(row) for row in per.to_numpy()]
            out["routed_entropy_round"] = float(np.nanmean(ents)) if ents else math.nan
    for col in ("accuracy", "accuracy_macro", "accuracy_client"):
        out[col] = _last(r, col)
    if target_accuracy is not None and "accuracy" in r.columns and len(r):
        acc = pd.to_numeric(r["accuracy"], errors="coerce").to_numpy(dtype=float)
        hit = np.flatnonzero(np.isfinite(acc) & (acc >= target_accuracy))
        if hit.size:
            i = int(hit[0])
            out["rounds_to_target"] = float(int(r["round"].iloc[i]) + 1)
            if "t_end_s" in r.columns:
                out["t_target_s"] = float(r["t_end_s"].iloc[i])
            cols = [c for c in ("bytes_up", "bytes_down") if c in r.columns]
            if cols:
                out["bytes_to_target"] = float(r[cols].iloc[: i + 1].to_numpy(dtype=float).sum())
    return out
