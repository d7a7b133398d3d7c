"""Assignment leakage: how much a client's expert-assignment history reveals about its data group.

The design paper (Section IV-D) warns that "patterns of expert usage and assignment may
leak client information, such as data similarity and membership". An observer who sees
the ``assignments`` table (round, client, expert) and wants a client's data group:

- a client's **assignment pattern** is its share of assignments per expert over the run,
  shape ``(E,)`` (clients never assigned have no history and are left out);
- ``mi_bits``: plug-in mutual information (bits) between the client's most assigned expert
  (ties: the lowest index) and its group, over the clients; biased upwards on few clients,
  so also ``ami``: scikit-learn's adjusted mutual information of the same two labelings
  (0 = what chance gives, 1 = the modal expert gives the group exactly; Vinh, Epps and
  Bailey, JMLR 11, 2010);
- ``clf_accuracy``: cross-validated accuracy of a logistic-regression classifier from the
  pattern to the group (stratified k-fold, k = ``min(folds, smallest group size)``,
  shuffled with ``seed``), against ``chance`` = the largest group's share; ``clf_p`` its
  permutation-test p-value (``permutations`` label shuffles, Ojala and Garriga, JMLR 11,
  2010; NaN when ``permutations`` is 0);
- ``n_clients`` (clients with a history), ``n_groups``.

Imports scikit-learn when called (the analysis layer only).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LEAKAGE_MEASURES", "assignment_patterns", "leakage_measures", "mutual_information_bits"]

#: Scalar measures of :func:`leakage_measures`, in order.
LEAKAGE_MEASURES: tuple[str, ...] = ("mi_bits", "ami", "clf_accuracy", "chance", "clf_p", "n_clients", "n_groups")


def assignment_patterns(assignments: pd.DataFrame, num_experts: int) -> pd.DataFrame:
    """Per client (index, sorted) its share of assignments to each expert ``0..E-1`` (columns),
    from an ``assignments`` frame (columns ``client``, ``expert``); clients never assigned are absent.

    Raises:
        ValueError: an expert index outside ``[0, num_experts)``.
    """
    if assignments.empty:
        return pd.DataFrame(columns=range(num_experts), dtype=float)
    e = assignments["expert"].astype(int)
    if (e < 0).any() or (e >= num_experts).any():
        raise ValueError(f"assignments: expert index outside [0, {num_experts})")
    counts = pd.crosstab(assignments["client"].astype(str), e).reindex(columns=range(num_experts), fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0).sort_index().astype(float)


def mutual_information_bits(a: Any, b: Any) -> float:
    """Plug-in mutual information (bits) of two equally long label sequences; NaN if empty."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return math.nan
    joint = pd.crosstab(a, b).to_numpy(dtype=float)
    p = joint / joint.sum()
    pa, pb = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pa @ pb)[nz])).sum())


def leakage_measures(
    assignments: pd.DataFrame, groups: Mapping[Hashable, int], num_experts: int, *,
    folds: int = 4, permutations: int = 0, seed: int = 0,
) -> dict[str, float]:
    """The measures of the module docstring. ``groups``: client id -> data group (clients
    without a group are left out). Classifier measures are NaN with fewer than 2 groups or a
    group of fewer than 2 clients (no stratified split exists)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_mutual_info_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score, permutation_test_score

    out = dict.fromkeys(LEAKAGE_MEASURES, math.nan)
    pat = assignment_patterns(assignments, num_experts)
    g = {str(k): int(v) for k, v in groups.items()}
    pat = pat[[c in g for c in pat.index]]
    out["n_clients"] = float(len(pat))
    if pat.empty:
        return out
    y = np.array([g[c] for c in pat.index])
    x = pat.to_numpy(dtype=float)
    modal = x.argmax(axis=1)
    sizes = np.bincount(y - y.min())
    sizes = sizes[sizes > 0]
    out["n_groups"] = float(len(sizes))
    out["mi_bits"] = mutual_information_bits(modal, y)
    out["ami"] = float(adjusted_mutual_info_score(y, modal)) if len(sizes) > 1 else math.nan
    out["chance"] = float(sizes.max() / sizes.sum())
    k = min(int(folds), int(sizes.min()))
    if len(sizes) < 2 or k < 2:
        return out
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    clf = LogisticRegression(max_iter=1000)
    if permutations > 0:
        score, _, p = permutation_test_score(clf, x, y, cv=cv, n_permutations=permutations, random_state=seed)
        out["clf_accuracy"], out["clf_p"] = float(score), float(p)
    else:
        out["clf_accuracy"] = float(cross_val_score(clf, x, y, cv=cv).mean())
    return out
