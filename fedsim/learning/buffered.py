"""Buffered asynchronous aggregation (FedBuff) of stale MoE updates, per expert.

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022): the server holds a buffer of client updates
``delta_i = y_i - x_{tau_i}`` (the client's trained state minus the global
state it downloaded) and, when the buffer is full, steps

    x <- x + server_lr * sum_i n_i * s(staleness_i) * delta_i / sum_i n_i

per component (the shared backbone and gate, and each expert on its own):
``n_i`` are the FedAvg weights of :mod:`fedsim.learning.aggregation`
(``num_samples`` for shared tensors, samples routed to expert e for expert e,
with the same fall-backs) and ``s`` is the staleness weight
(:func:`staleness_weight`, from FedAsync, Xie et al. 2019). The denominator
has no ``s``: a buffer of stale updates moves the model less. With
``server_lr = 1`` and every weight 1 (no staleness) the step is FedAvg:
``x + sum_i p_i (y_i - x) = sum_i p_i y_i``. Sums run in float64, in the
order given (the caller sorts the buffer), and are cast back to the tensor's
dtype (integer buffers are rounded).

Updates with a non-finite value are rejected as in
:func:`fedsim.learning.aggregation.aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.learning.aggregation import AggregationResult, is_finite_update
from fedsim.learning.models import expert_index
from fedsim.learning.training import Update

__all__ = ["BufferedUpdate", "staleness_weight", "buffered_aggregate"]


def staleness_weight(staleness: int, kind: str, a: float = 0.5, b: int = 4) -> float:
    """Weight of an update ``staleness`` versions old (FedAsync, Xie et al. 2019, section 5.2).

    ``constant``: 1; ``polynomial``: ``(1 + staleness) ** -a``; ``hinge``: 1 if
    ``staleness <= b`` else ``1 / (a * (staleness - b) + 1)``.

    Raises:
        ValueError: negative staleness or unknown ``kind``.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + staleness) ** (-a))
    if kind == "hinge":
        return 1.0 if staleness <= b else float(1.0 / (a * (staleness - b) + 1.0))
    raise ValueError(f"unknown staleness function {kind!r} (constant, polynomial, hinge)")


@dataclass
class BufferedUpdate:
    """One buffered update: the client's :class:`Update`, the global state it
    downloaded (``base``, same keys as the global state), and its staleness
    weights: ``shared_weight`` for the backbone and gate, ``expert_weight[e]``
    for each expert it trained."""

    update: Update
    base: dict[str, torch.Tensor]
    shared_weight: float
    expert_weight: dict[int, float]


def _fallback(w: np.ndarray, holders: Sequence[BufferedUpdate]) -> np.ndarray:
    if w.sum() <= 0:
        w = np.array([b.update.num_samples for b in holders], dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones(len(holders))
    return w


def _step(x: torch.Tensor, holders: Sequence[BufferedUpdate], key: str, n: np.ndarray, s: np.ndarray, lr: float) -> torch.Tensor:
    acc = torch.zeros(x.shape, dtype=torch.float64)
    for b, ni, si in zip(holders, n / n.sum(), s):
        acc += float(ni * si) * (b.update.state[key].detach().to(torch.float64) - b.base[key].detach().to(torch.float64))
    out = x.detach().to(torch.float64) + lr * acc
    return out.to(x.dtype) if x.is_floating_point() else out.round().to(x.dtype)


def buffered_aggregate(
    current: dict[str, torch.Tensor], buffer: Sequence[BufferedUpdate], num_experts: int, server_lr: float = 1.0
) -> AggregationResult:
    """One FedBuff server step of ``buffer`` on ``current`` (module docstring); ``current`` is not mutated.

    Returns:
        :class:`AggregationResult`: the new state, rejected client ids, and the
        normalised FedAvg weights ``n_i / sum n`` per expert (``-1``: shared).
    """
    ok = [b for b in buffer if is_finite_update(b.update)]
    rejected = [b.update.client_id for b in buffer if not is_finite_update(b.update)]
    new = {k: v.detach().clone() for k, v in current.items()}
    weights: dict[int, dict[int | str, float]] = {}
    for key in current:
        if expert_index(key) is not None:
            continue
        holders = [b for b in ok if key in b.update.state]
        if not holders:
            continue
        n = np.array([b.update.num_samples for b in holders], dtype=np.float64)
        n = n if n.sum() > 0 else np.ones(len(holders))
        s = np.array([b.shared_weight for b in holders])
        new[key] = _step(current[key], holders, key, n, s, server_lr)
        weights.setdefault(-1, {b.update.client_id: float(v / n.sum()) for b, v in zip(holders, n)})
    for e in range(num_experts):
        keys = [k for k in current if k.startswith(f"experts.{e}.")]
        holders = [b for b in ok if any(k in b.update.state for k in keys)]
        if not holders:
            continue
        n = _fallback(np.array([float(b.update.samples_per_expert[e]) for b in holders], dtype=np.float64), holders)
        for key in keys:
            hk = [b for b in holders if key in b.update.state]
            nk = np.array([n[holders.index(b)] for b in hk])
            nk = nk if nk.sum() > 0 else np.ones(len(hk))
            sk = np.array([b.expert_weight.get(e, 1.0) for b in hk])
            new[key] = _step(current[key], hk, key, nk, sk, server_lr)
        weights[e] = {b.update.client_id: float(v / n.sum()) for b, v in zip(holders, n)}
    return AggregationResult(new, rejected, weights)
