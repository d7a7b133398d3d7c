"""The design paper's alignment and fairness measures of a fedmoe run, for ``fedsim info`` / ``compare`` / the report.

Computed from the run's own tables (``experts``, ``rounds``; ``clients``, ``personal``,
``nodes``) by :func:`fedsim.alignment.measures.alignment_measures` and
:func:`fedsim.alignment.fairness.fairness_measures`, so runs written before
``alignment.json`` existed read alike. Runs without an ``experts`` table (nmoe)
get no alignment measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.plots import RunLike
from analysis.rundir import as_rundir
from fedsim.alignment.fairness import fairness_measures, nominal_class_speeds
from fedsim.alignment.measures import alignment_measures

__all__ = ["ALIGNMENT_COLUMNS", "run_alignment", "alignment_rows", "add_alignment_columns"]

#: Alignment measures added to ``fedsim compare``'s summary (fedmoe runs), in order.
ALIGNMENT_COLUMNS: tuple[str, ...] = (
    "accuracy_macro", "routed_entropy", "max_share", "starved_experts", "bytes_to_target",
    "participation_jain", "client_acc_worst10", "weakest_class_accuracy",
)


def run_alignment(run: RunLike, target_accuracy: float | None = None) -> dict[str, Any]:
    """The measures of :mod:`fedsim.alignment.measures` for ``run`` ({} without an ``experts``
    table). ``target_accuracy`` defaults to the run's ``evaluation.target_accuracy``."""
    from analysis.compare import run_target

    run = as_rundir(run)
    ex = run.maybe("experts")
    if ex is None or ex.empty:
        return {}
    tgt = run_target(run) if target_accuracy is None else target_accuracy
    out = alignment_measures({"experts": ex, "rounds": run.rounds}, tgt)
    frames = {t: f for t in ("clients", "personal", "nodes") if (f := run.maybe(t)) is not None}
    speeds = nominal_class_speeds(((run.scenario or {}).get("devices") or {}).get("classes") or {})
    out.update(fairness_measures(frames, speeds))
    return out


def _f(v: Any, fmt: str) -> str:
    return "—" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))


def alignment_rows(run: RunLike) -> list[tuple[str, str]]:
    """``(key, value)`` rows for ``fedsim info`` and the report ([] for runs without experts)."""
    m = run_alignment(run)
    if not m:
        return []
    from analysis.info import format_bytes

    share = m["share_cum"]
    E = len(share)
    return [
        ("group-macro accuracy", _f(m["accuracy_macro"], "{:.4f}")),
        ("per-client accuracy", _f(m["accuracy_client"], "{:.4f}")),
        ("routed-sample entropy", _f(m["routed_entropy"], "{:.3f}") + " (1 = samples spread evenly over experts)"),
        ("expert sample share", f"max {_f(m['max_share'], '{:.3f}')}, min {_f(m['min_share'], '{:.3f}')}, "
                                f"starved (< 1/(4E)) {_f(m['starved_experts'], '{:.0f}')} of {E}"),
        ("bytes to target", "—" if not math.isfinite(m["bytes_to_target"]) else format_bytes(m["bytes_to_target"])),
        ("participation (completed client-rounds)",
         f"Jain {_f(m['participation_jain'], '{:.3f}')} (1 = equal), share min {_f(m['participation_min_share'], '{:.3f}')} "
         f"max {_f(m['participation_max_share'], '{:.3f}')}, never {_f(m['never_participated'], '{:.0f}')} clients"),
        ("participation per device class", ", ".join(f"{k} {v:.1f}" for k, v in m["class_participation"].items()) or "—"),
        ("per-client accuracy (own test split)",
         f"worst 10 % {_f(m['client_acc_worst10'], '{:.3f}')}, spread {_f(m['client_acc_spread'], '{:.3f}')}, "
         f"mean {_f(m['client_acc_mean'], '{:.3f}')}"),
        ("weakest device class accuracy",
         "—" if m["weakest_class"] is None else f"{m['weakest_class']} {_f(m['weakest_class_accuracy'], '{:.3f}')}"),
    ]


def add_alignment_columns(df: pd.DataFrame, runs: Sequence[RunLike], target_accuracy: float | None = None) -> pd.DataFrame:
    """``df`` (one row per run, in ``runs`` order) with :data:`ALIGNMENT_COLUMNS` appended
    when any run has alignment measures; unchanged otherwise."""
    ms = [run_alignment(r, target_accuracy) for r in runs]
    if not any(ms):
        return df
    out = df.copy()
    for c in ALIGNMENT_COLUMNS:
        out[c] = [float(m.get(c, math.nan)) if m else math.nan for m in ms]
    return out
