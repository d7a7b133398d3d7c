"""Server aggregation: per-expert FedAvg for the experts, FedAvg for the rest.

``aggregate(global_state, updates, num_experts)``:

- An update with a NaN or inf in any floating tensor of its state, its
  ``mean_gate_prob`` (when computed) or its losses is rejected: listed in ``rejected`` and never
  averaged in.
- Expert e's tensors are the average over the accepted updates that hold expert
  e, weighted by the samples they routed to e (``samples_per_expert[e]``); if
  all of those counts are 0 the weights are the clients' ``num_samples``.
  An expert nobody trained keeps its global weights.
- Shared tensors (backbone, gate, and their buffers) are the average over the
  accepted updates that hold them, weighted by ``num_samples``; if none holds
  them they keep their global values.
- Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged the same
  way and rounded.
- Sub-networks (``protocol.fedmoe.expert_widths``, :mod:`fedsim.learning.subnet`): an
  update's tensor may be a leading corner of the global one (a narrower expert); then
  each element is averaged over the holders whose tensor covers it, with the same
  weights, and an element no holder covers keeps its global value (HeteroFL). Tensors
  of the global shape take the plain weighted mean, as before.

The global state is never mutated; the result is a new dict with every key of
``global_state``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.learning.models import expert_index
from fedsim.learning.training import Update

__all__ = ["AggregationResult", "aggregate", "is_finite_update"]


@dataclass
class AggregationResult:
    """``state``: the new global state. ``rejected``: client ids whose updates were
    dropped (non-finite). ``expert_weights``: for each expert that was updated,
    ``{client_id: normalised weight}``; key ``-1`` holds the shared weights."""

    state: dict[str, torch.Tensor]
    rejected: list[int | str] = field(default_factory=list)
    expert_weights: dict[int, dict[int | str, float]] = field(default_factory=dict)


def is_finite_update(update: Update) -> bool:
    """True when every floating tensor of the update's state, its gate feedback
    (when computed) and its losses are finite (no NaN, no inf)."""
    floats = [t for t in update.state.values() if t.is_floating_point()]
    # one check per update: a NaN or inf element makes its tensor's float64 sum non-finite; a
    # non-finite sum of finite elements (float64 overflow) is ruled out by the exact check
    if floats and not bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float64) for t in floats]).sum())):
        if not all(bool(torch.isfinite(t).all()) for t in floats):
            return False
    if update.mean_gate_prob is not None and not np.all(np.isfinite(np.asarray(update.mean_gate_prob, dtype=np.float64))):
        return False
    return math.isfinite(update.loss_first) and math.isfinite(update.loss_last)


def _weighted(tensors: list[torch.Tensor], weights: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
    acc = torch.zeros(like.shape, dtype=torch.float64)
    for t, wi in zip(tensors, w.tolist()):
        acc.add_(t.detach(), alpha=wi)  # in float64, no temporaries
    if like.is_floating_point():
        return acc.to(like.dtype)
    return acc.round().to(like.dtype)


def _fedavg(tensors: list[torch.Tensor], weights: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``tensors``; per element over the covering holders when some are narrower."""
    if all(t.shape == like.shape for t in tensors):
        return _weighted(tensors, weights, like)
    from fedsim.learning.subnet import sliced_average

    return sliced_average(tensors, weights, like)


def aggregate(
    global_state: dict[str, torch.Tensor], updates: Sequence[Update], num_experts: int
) -> AggregationResult:
    """Aggregate ``updates`` into a new global state (see module docstring)."""
    finite = [is_finite_update(u) for u in updates]
    rejected = [u.client_id for u, f in zip(updates, finite) if not f]
    ok = [u for u, f in zip(updates, finite) if f]
    new_state = {k: v.detach().clone() for k, v in global_state.items()}
    weights_out: dict[int, dict[int | str, float]] = {}

    # shared keys: weighted by num_samples over the updates that hold them
    for key in global_state:
        owner = expert_index(key)
        if owner is not None:
            continue
        holders = [u for u in ok if key in u.state]
        if not holders:
            continue
        w = np.array([u.num_samples for u in holders], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(holders))
        new_state[key] = _fedavg([u.state[key] for u in holders], w, global_state[key])
        weights_out.setdefault(-1, {u.client_id: float(wi / w.sum()) for u, wi in zip(holders, w)})

    # experts: weighted by routed samples among the updates that hold the expert
    for e in range(num_experts):
        prefix = f"experts.{e}."
        keys = [k for k in global_state if k.startswith(prefix)]
        holders = [u for u in ok if any(k in u.state for k in keys)]
        if not holders:
            continue
        w = np.array([float(u.samples_per_expert[e]) for u in holders], dtype=np.float64)
        if w.sum() <= 0:
            w = np.array([u.num_samples for u in holders], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(holders))
        for key in keys:
            hk = [u for u in holders if key in u.state]
            wk = np.array([w[holders.index(u)] for u in hk])
            if wk.sum() <= 0:
                wk = np.ones(len(hk))
            new_state[key] = _fedavg([u.state[key] for u in hk], wk, global_state[key])
        weights_out[e] = {u.client_id: float(wi / w.sum()) for u, wi in zip(holders, w)}
    return AggregationResult(new_state, rejected, weights_out)
