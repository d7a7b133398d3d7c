"""Fairness measures of one fedmoe run, from the run's own tables (issue 33).

The design paper (Section IV-D) warns that "without equitable scheduling, clients with
limited resources could be neglected, leading to under-trained experts and biased
outcomes". From ``clients`` (who completed which round), ``personal`` (each client's
accuracy on its own test split at the end) and ``nodes`` (each client's device class):

- participation ``x_c``: completed client-rounds (aggregated updates) of client ``c``
  over the run; the population is every client with training data (``personal`` with
  ``num_train > 0``; without ``personal``: the ``nodes`` clients, else those in
  ``clients``), so a client never selected counts with ``x_c = 0``;
- ``participation_jain``: Jain's fairness index ``(sum x)^2 / (n sum x^2)`` (Jain, Chiu
  and Hawe, DEC-TR-301, 1984): 1 when every client participated equally, ``1/n`` when
  one client did all; ``participation_min_share`` / ``participation_max_share``: the
  smallest / largest ``x_c / sum x``; ``never_participated``: clients with ``x_c = 0``;
  ``participation_jain_selected``: Jain's index over the clients selected at least once
  (what the round's choices, not availability, made unequal);
- per device class ``k``: ``class_participation[k]`` = mean ``x_c`` over the class's
  clients (client-rounds per client); ``class_participation_jain`` over those means;
  ``class_min_share`` / ``class_max_share``: the smallest / largest mean over their sum;
- per-client accuracy ``a_c`` (``personal.accuracy``, clients with a test split):
  ``client_acc_mean``, ``client_acc_worst10`` (mean of the ``ceil(n / 10)`` lowest),
  ``client_acc_spread`` (max - min), ``client_acc_std`` (population standard deviation);
- ``weakest_class``: the class with the lowest nominal training speed among the classes
  present (``class_speed``: FLOP/s per class, e.g. :func:`nominal_class_speeds`; without
  it: None), and ``weakest_class_accuracy``: the mean ``a_c`` of its clients.

Every scalar is a float (NaN when its input is missing). Imports only numpy and pandas
(:func:`nominal_class_speeds` imports the device defaults when called).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FAIRNESS_MEASURES", "fairness_measures", "jain_index", "nominal_class_speeds", "worst_fraction_mean"]

#: Scalar measures of :func:`fairness_measures`, in order.
FAIRNESS_MEASURES: tuple[str, ...] = (
    "participation_jain", "participation_min_share", "participation_max_share", "never_participated",
    "participation_jain_selected",
    "class_participation_jain", "class_min_share", "class_max_share",
    "client_acc_mean", "client_acc_worst10", "client_acc_spread", "client_acc_std", "weakest_class_accuracy",
)


def jain_index(x: Any) -> float:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)`` of non-negative amounts ``x`` (shape ``(n,)``),
    in ``[1/n, 1]``; NaN when ``x`` is empty or all zero."""
    v = np.asarray(x, dtype=float)
    if v.size == 0 or not np.isfinite(v).all() or (v ** 2).sum() == 0:
        return math.nan
    return float(v.sum() ** 2 / (v.size * (v ** 2).sum()))


def worst_fraction_mean(a: Any, fraction: float = 0.1) -> float:
    """Mean of the ``ceil(fraction * n)`` smallest finite values of ``a`` (at least one); NaN if none."""
    v = np.sort(np.asarray(a, dtype=float)[np.isfinite(np.asarray(a, dtype=float))])
    if v.size == 0:
        return math.nan
    return float(v[: max(1, math.ceil(fraction * v.size))].mean())


def nominal_class_speeds(overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Nominal training speed (FLOP/s) of each device class: the defaults of
    :func:`fedsim.devices.params.default_device_classes`, with ``flops_mean`` from
    ``overrides`` (the scenario's ``devices.classes``: class -> mapping or model with
    ``flops_mean``) where set. A capacity trace's per-client speeds are not seen here."""
    from fedsim.devices.params import default_device_classes

    out = {k: float(p.flops_mean) for k, p in default_device_classes().items()}
    for k, v in (overrides or {}).items():
        f = v.get("flops_mean") if isinstance(v, Mapping) else getattr(v, "flops_mean", None)
        if f is not None:
            out[k] = float(f)
    return out


def _population(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    p = frames.get("personal")
    if p is not None and len(p) and "client" in p.columns:
        keep = p["num_train"] > 0 if "num_train" in p.columns else pd.Series(True, index=p.index)
        return [str(c) for c in p.loc[keep, "client"]]
    n = frames.get("nodes")
    if n is not None and len(n) and {"node", "kind"} <= set(n.columns):
        return [str(c) for c in n.loc[n["kind"] == "client", "node"]]
    c = frames.get("clients")
    return sorted({str(x) for x in c["client"]}) if c is not None and len(c) else []


def _classes(frames: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    out: dict[str, str] = {}
    c = frames.get("clients")
    if c is not None and len(c) and "device_class" in c.columns:
        out.update({str(k): str(v) for k, v in zip(c["client"], c["device_class"])})
    n = frames.get("nodes")
    if n is not None and len(n) and {"node", "device_class"} <= set(n.columns):
        out.update({str(k): str(v) for k, v in zip(n["node"], n["device_class"]) if isinstance(v, str) and v})
    return out


def fairness_measures(frames: Mapping[str, pd.DataFrame], class_speed: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The measures of the module docstring from a run's ``clients``, ``personal`` and ``nodes``
    frames (``frames`` maps table name to frame, as the run writes them); also
    ``class_participation`` (class -> client-rounds per client) and ``weakest_class``."""
    out: dict[str, Any] = dict.fromkeys(FAIRNESS_MEASURES, math.nan)
    out["class_participation"], out["weakest_class"] = {}, None
    pop = _population(frames)
    cl = frames.get("clients")
    if pop and cl is not None and len(cl) and {"client", "status"} <= set(cl.columns):
        done = cl.loc[cl["status"] == "completed", "client"].astype(str).value_counts()
        x = np.array([float(done.get(c, 0)) for c in pop])
        out["never_participated"] = float((x == 0).sum())
        if x.sum() > 0:
            out["participation_jain"] = jain_index(x)
            out["participation_min_share"] = float(x.min() / x.sum())
            out["participation_max_share"] = float(x.max() / x.sum())
            seen = set(cl["client"].astype(str))
            out["participation_jain_selected"] = jain_index([v for c, v in zip(pop, x) if c in seen])
        cls = _classes(frames)
        per = pd.Series(x, index=pop).groupby([cls.get(c, "?") for c in pop]).mean()
        out["class_participation"] = {str(k): float(v) for k, v in per.items()}
        if per.sum() > 0:
            out["class_participation_jain"] = jain_index(per.to_numpy())
            out["class_min_share"] = float(per.min() / per.sum())
            out["class_max_share"] = float(per.max() / per.sum())
    p = frames.get("personal")
    if p is not None and len(p) and {"client", "accuracy"} <= set(p.columns):
        p = p[p["num_test"] > 0] if "num_test" in p.columns else p
        acc = pd.to_numeric(p["accuracy"], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(acc)
        if ok.any():
            out["client_acc_mean"] = float(acc[ok].mean())
            out["client_acc_worst10"] = worst_fraction_mean(acc)
            out["client_acc_spread"] = float(acc[ok].max() - acc[ok].min())
            out["client_acc_std"] = float(acc[ok].std())
        cls = _classes(frames)
        present = sorted({cls[c] for c in pop if c in cls})
        speeds = {k: float(class_speed[k]) for k in present if class_speed is not None and k in class_speed}
        if speeds:
            weakest = min(speeds, key=lambda k: (speeds[k], k))
            out["weakest_class"] = weakest
            mine = [a for c, a in zip(p["client"].astype(str), acc) if cls.get(c) == weakest and math.isfinite(a)]
            if mine:
                out["weakest_class_accuracy"] = float(np.mean(mine))
    return out
