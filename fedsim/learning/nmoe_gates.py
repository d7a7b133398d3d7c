"""Networked MoE (NMoE) stage 3 building blocks: the gates and their local training steps.

The random gate (:class:`RanGate`), RollGate's pseudo client-ID labels, the learned
gate module and its seeded init, FedGate's client sampling, gradient normalisation
and local step. The stage loops are in :mod:`fedsim.learning.nmoe_steps` and
:mod:`fedsim.learning.nmoe_model`; maths and sources in :mod:`fedsim.learning.nmoe`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.learning.models import Expert, MoEConfig
from fedsim.learning.nmoe import NMoETrainConfig

__all__ = [
    "RanGate",
    "rollgate_labels",
    "gate_module",
    "new_gate",
    "select_clients",
    "normalise_gradients_",
    "expert_logp_table",
    "fedgate_local",
]


class RanGate(nn.Module):
    """Random gate: ignores the input and draws ``k`` distinct experts per sample
    from ``probs`` (uniform if None), each with weight ``1/k``."""

    def __init__(self, num_experts: int, probs: Sequence[float] | None = None) -> None:
        super().__init__()
        p = torch.full((num_experts,), 1.0 / num_experts) if probs is None else torch.as_tensor(probs, dtype=torch.float64).float()
        if p.shape != (num_experts,) or bool((p < 0).any()) or float(p.sum()) <= 0:
            raise ValueError('"probs" must be num_experts non-negative numbers with a positive sum')
        self.register_buffer("probs", p / p.sum())

    def route(self, n: int, k: int, generator: torch.Generator, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(topk_idx (n, k), weights (n, k))`` for ``n`` samples; ``mask`` (bool
        (E,)) restricts the draw to the allowed experts (``probs`` renormalised).

        Raises:
            ValueError: ``mask`` allows no expert of positive probability.
        """
        p = self.probs if mask is None else self.probs * mask.to(self.probs.dtype)
        if float(p.sum()) <= 0:
            raise ValueError('"mask" must allow an expert with positive probability')
        k = min(k, int((p > 0).sum()))
        idx = torch.multinomial(p.expand(n, -1), k, replacement=False, generator=generator)
        return idx, torch.full((n, k), 1.0 / k)


def rollgate_labels(n: int, own: int, num_clients: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Pseudo client-ID labels (int64, length ``n``) of client ``own``'s samples:
    exactly ``round(p * n)`` are ``own``; the rest are spread over the other
    ``num_clients - 1`` IDs as evenly as possible (counts differ by <= 1; which
    IDs get the extra one is random), then the labels are randomly permuted."""
    n_own = int(round(p * n)) if num_clients > 1 else n
    labels = [torch.full((n_own,), own, dtype=torch.int64)]
    others = torch.tensor([j for j in range(num_clients) if j != own], dtype=torch.int64)
    rest = n - n_own
    if rest > 0:
        base, extra = divmod(rest, len(others))
        counts = torch.full((len(others),), base, dtype=torch.int64)
        counts[torch.randperm(len(others), generator=generator)[:extra]] += 1
        labels.append(torch.repeat_interleave(others, counts))
    lab = torch.cat(labels)
    return lab[torch.randperm(n, generator=generator)]


def gate_module(cfg: MoEConfig, num_experts: int) -> nn.Sequential:
    """The learned gate: parameter-free LayerNorm of the features (so the gate's
    step sizes do not depend on the extractor's feature scale) then a linear
    layer ``feature_dim -> num_experts`` (logits; state keys ``1.weight``, ``1.bias``)."""
    return nn.Sequential(nn.LayerNorm(cfg.feature_dim, elementwise_affine=False), nn.Linear(cfg.feature_dim, num_experts))


def new_gate(cfg: MoEConfig, num_experts: int, seed: int) -> nn.Sequential:
    """A :func:`gate_module` with its linear layer drawn uniformly in ``+-1/sqrt(feature_dim)`` from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    g = gate_module(cfg, num_experts)
    lin = g[1]
    b = 1.0 / math.sqrt(cfg.feature_dim)
    with torch.no_grad():
        lin.weight.copy_(torch.empty(lin.weight.shape).uniform_(-b, b, generator=gen))
        lin.bias.copy_(torch.empty(lin.bias.shape).uniform_(-b, b, generator=gen))
    return g


def select_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """A random ``max(1, round(fraction * num_clients))`` distinct clients, sorted."""
    m = max(1, min(num_clients, int(round(fraction * num_clients))))
    return sorted(int(i) for i in rng.choice(num_clients, size=m, replace=False))


def normalise_gradients_(params: Sequence[torch.Tensor], eps: float = 1e-12) -> float:
    """Rescale the gradients of ``params`` in place so their joint L2 norm is 1;
    returns the norm before rescaling (a zero gradient is left as is)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))) if grads else 0.0
    if norm > eps:
        for g in grads:
            g.div_(norm)
    return norm


def expert_logp_table(h: torch.Tensor, y: torch.Tensor, experts: Sequence[dict[str, torch.Tensor]], cfg: MoEConfig) -> torch.Tensor:
    """``log softmax(expert_e(h))_y`` for every expert, shape (N, E), no gradient."""
    cols = []
    with torch.no_grad():
        for st in experts:
            ex = Expert(cfg)
            ex.load_state_dict(st)
            cols.append(F.log_softmax(ex(h), dim=-1).gather(1, y[:, None]).squeeze(1))
    return torch.stack(cols, dim=1)


def fedgate_local(gate_state: dict[str, torch.Tensor], h: torch.Tensor, expert_logp: torch.Tensor, cfg: MoEConfig, tc: NMoETrainConfig, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One client's local gate training in FedGate: ``tc.gate_local_epochs`` of
    plain SGD (``tc.gate_lr``) on ``-log sum_e softmax(gate(h))_e exp(expert_logp[:, e])``
    with the gradient normalised to unit norm each step. ``expert_logp`` (N, E)
    holds the fixed experts' log-likelihoods of the true labels. Returns the new
    gate state and the raw gradient norms of the steps."""
    e = expert_logp.shape[1]
    gate = gate_module(cfg, e)
    gate.load_state_dict(gate_state)
    params = list(gate.parameters())
    n = int(h.shape[0])
    norms = []
    for _ in range(tc.gate_local_epochs):
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, tc.batch_size):
            idx = perm[s : s + tc.batch_size]
            loss = -torch.logsumexp(F.log_softmax(gate(h[idx]), dim=-1) + expert_logp[idx], dim=-1).mean()
            for p in params:
                p.grad = None
            loss.backward()
            norms.append(normalise_gradients_(params))
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= tc.gate_lr * p.grad
    return {k: v.detach().clone() for k, v in gate.state_dict().items()}, norms
