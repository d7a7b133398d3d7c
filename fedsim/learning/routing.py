"""Alignment metrics of a federated MoE: the paper's per-client inference and test routing.

Two inferences of one global model (:func:`alignment_metrics`):

- **global gate** (``accuracy`` in ``rounds.parquet``, computed elsewhere):
  every test sample is routed by the unmasked global gate to its top-k experts;
- **per-client** (``accuracy_client``; the design paper's inference, Section
  III-B): client ``c`` runs the model with the gate restricted to its own
  ``k`` best experts by the server's fitness ``F[c, :]`` *among the experts it
  has trained* (ties to the lowest index; fewer than ``k`` if it trained fewer),
  on its own test split, never an expert it has not trained; a client that has
  trained none yet uses the experts trained by any client (all experts before
  the first aggregation). The figure is the mean over clients weighted by
  their test samples.

``routing_nmi`` is the normalised mutual information (scikit-learn,
arithmetic normalisation) between the group of each global test sample
(``domain_skew``) and the expert the global gate sends it to first: 0 when the
expert does not depend on the group, 1 when each group has its own expert(s).
The ``*_rare`` figures restrict each accuracy to the two smallest groups;
``accuracy_macro`` is the global gate's accuracy on the global test set as the
unweighted mean over groups (each group's own accuracy counts once, whatever its
size; the design paper's clients are "uniquely suited to a specific expert", so
a policy that serves only the largest group shows here and not in ``accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from fedsim.learning.metrics import personalised_accuracy, predict_proba
from fedsim.learning.partition import ClientSplit

__all__ = ["alignment_metrics", "client_expert_mask_matrix", "client_expert_masks", "first_choice_experts"]


def client_expert_masks(fitness: np.ndarray, k: int, trained: np.ndarray | None = None) -> list[torch.Tensor]:
    """Bool masks ``(E,)`` of each client's ``k`` best experts by fitness (rows of ``fitness`` (C, E)).

    With ``trained`` (bool, (C, E): client ``c`` has trained expert ``e`` in an
    aggregated update), only trained experts are eligible: a client gets its
    ``min(k, trained)`` best trained experts; a client that trained none gets the
    experts trained by any client (every expert if no client trained any).

    Raises:
        ValueError: ``k`` is not in ``[1, E]``, or ``trained`` has another shape.
    """
    return [torch.as_tensor(m) for m in client_expert_mask_matrix(fitness, k, trained)]


def client_expert_mask_matrix(fitness: np.ndarray, k: int, trained: np.ndarray | None = None) -> np.ndarray:
    """Bool ``(C, E)`` matrix of each client's ``k`` best experts by fitness (ties: lower
    index first, as a stable sort); ``trained`` as in :func:`client_expert_masks`.

    Raises:
        ValueError: ``k`` is not in ``[1, E]``, or ``trained`` has another shape.
    """
    F = np.asarray(fitness, dtype=float)
    E = F.shape[1]
    if not 1 <= k <= E:
        raise ValueError(f'"k" must be in [1, {E}], got {k}')
    T = np.ones(F.shape, dtype=bool) if trained is None else np.asarray(trained, dtype=bool)
    if T.shape != F.shape:
        raise ValueError(f'"trained" must have shape {F.shape}, got {T.shape}')
    order = np.argsort(-F, axis=1, kind="stable")
    eligible = np.take_along_axis(T, order, axis=1)  # in fitness order: the first k trained experts
    out = np.zeros(F.shape, dtype=bool)
    np.put_along_axis(out, order, eligible & (np.cumsum(eligible, axis=1) <= k), axis=1)
    out[~T.any(axis=1)] = T.any(axis=0) if T.any() else True  # trained none: experts anyone trained
    return out


def first_choice_experts(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """The global gate's first-choice expert of each sample of ``x``, shape (N,), int."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            probs, top_idx, _ = model.route(model.features(x[s : s + batch_size]))
            out.append(top_idx[:, 0].cpu())
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def alignment_metrics(
    model: nn.Module,
    x_pool: torch.Tensor,
    y_pool: torch.Tensor,
    splits: Sequence[ClientSplit],
    fitness: np.ndarray,
    k: int,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    test_groups: np.ndarray | None,
    trained: np.ndarray | None = None,
) -> dict[str, float]:
    """``{"accuracy_client", "accuracy_client_rare", "accuracy_rare", "accuracy_macro", "routing_nmi"}`` in [0, 1].

    ``splits`` and the rows of ``fitness`` (C, E) and ``trained`` (bool (C, E),
    see :func:`client_expert_masks`) are in the same client order;
    ``x_pool`` / ``y_pool`` are what the splits index into. Without groups
    (``test_groups`` None) the group figures and the NMI are NaN.
    """
    masks = client_expert_mask_matrix(fitness, min(k, np.asarray(fitness).shape[1]), trained)
    acc = personalised_accuracy(model, x_pool, y_pool, splits, expert_masks=masks)
    n_test = np.array([len(s.test_idx) for s in splits], dtype=float)
    ok = np.isfinite(acc) & (n_test > 0)
    out = {
        "accuracy_client": float(np.average(acc[ok], weights=n_test[ok])) if ok.any() else float("nan"),
        "accuracy_client_rare": float("nan"),
        "accuracy_rare": float("nan"),
        "accuracy_macro": float("nan"),
        "routing_nmi": float("nan"),
    }
    if test_groups is None:
        return out
    groups = np.array([s.group for s in splits])
    sizes = np.bincount(groups[groups >= 0], minlength=int(test_groups.max()) + 1)
    rare = np.argsort(sizes, kind="stable")[:2]
    sel = ok & np.isin(groups, rare)
    if sel.any():
        out["accuracy_client_rare"] = float(np.average(acc[sel], weights=n_test[sel]))
    g = np.asarray(test_groups)
    first = first_choice_experts(model, x_test)
    out["routing_nmi"] = float(normalized_mutual_info_score(g, first))
    hit = predict_proba(model, x_test).argmax(1).numpy() == y_test.numpy()
    t = np.isin(g, rare)
    if t.any():
        out["accuracy_rare"] = float(hit[t].mean())
    out["accuracy_macro"] = float(np.mean([hit[g == v].mean() for v in np.unique(g)]))
    return out
