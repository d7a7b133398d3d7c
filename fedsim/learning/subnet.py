"""Capacity-sized sub-networks: experts of several widths, HeteroFL-style.

HeteroFL (Diao, Ding and Tarokh, "HeteroFL: Computation and Communication
Efficient Federated Learning for Heterogeneous Clients", ICLR 2021) gives each
client a sub-network of the global model whose hidden layers keep the first
``ceil(r * width)`` channels, for a width ratio ``r`` in (0, 1] chosen by the
client's capacity, and averages each parameter element over the clients whose
sub-network holds it. Here the slicing applies to the experts only (they hold
most of the parameters; the backbone and gate stay full and shared): an expert
of width ratio ``r`` has ``ceil(r * expert_hidden)`` hidden units in every hidden
layer, i.e. ``fc1.weight[:h, :]``, ``fc1.bias[:h]``, ``hidden.i.weight[:h, :h]``,
``hidden.i.bias[:h]`` and ``fc2.weight[:, :h]`` (``fc2.bias`` whole), so a
narrower expert is exactly the top-left corner of every tensor of a wider one.

- :func:`width_config`: the :class:`MoEConfig` of a sub-network;
- :func:`slice_state`: the global state cut down to a sub-network (views, no copy);
- :func:`sliced_average`: per-element weighted FedAvg of tensors of several
  (corner) shapes: an element is averaged over the holders that cover it, an
  element nobody covers keeps its global value;
- :func:`choose_width`: the widest ratio whose training memory fits a memory estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np
import torch

from fedsim.learning.models import MoEClassifier, MoEConfig

__all__ = ["width_config", "expert_hidden_at", "slice_state", "sliced_average", "choose_width", "state_shapes"]


def expert_hidden_at(cfg: MoEConfig, ratio: float) -> int:
    """Hidden units of an expert of width ``ratio``: ``ceil(ratio * expert_hidden)`` (>= 1).

    Raises:
        ValueError: ``ratio`` outside (0, 1], or a linear expert head (``expert_hidden`` 0: nothing to slice).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f'"width ratio" must be in (0, 1], got {ratio}')
    if cfg.expert_hidden <= 0:
        raise ValueError('"expert_widths" needs expert MLP heads (model.expert_hidden > 0)')
    return max(1, math.ceil(ratio * cfg.expert_hidden - 1e-9))


def width_config(cfg: MoEConfig, ratio: float) -> MoEConfig:
    """``cfg`` with every expert ``ratio`` as wide (see :func:`expert_hidden_at`); ``cfg`` itself at 1."""
    if ratio == 1.0:
        return cfg
    return replace(cfg, expert_hidden=expert_hidden_at(cfg, ratio))


@lru_cache(maxsize=64)
def state_shapes(cfg: MoEConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the state dict of an :class:`MoEClassifier` of ``cfg`` (built on the meta device)."""
    with torch.device("meta"):
        model = MoEClassifier(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def slice_state(state: dict[str, torch.Tensor], sub: MoEConfig) -> dict[str, torch.Tensor]:
    """``state`` (a wider model's) cut to the sub-network of config ``sub``: every tensor's
    leading corner of ``sub``'s shape (views, no copy; equal shapes are the same tensor).

    Raises:
        ValueError: a key of ``sub`` missing from ``state``, or a tensor smaller than ``sub`` needs.
    """
    out: dict[str, torch.Tensor] = {}
    for key, shape in state_shapes(sub).items():
        if key not in state:
            raise ValueError(f"slice_state: key {key!r} missing from the state")
        t = state[key]
        if tuple(t.shape) == shape:
            out[key] = t
            continue
        if len(shape) != t.dim() or any(s > n for s, n in zip(shape, t.shape)):
            raise ValueError(f"slice_state: {key} of shape {tuple(t.shape)} cannot hold {shape}")
        out[key] = t[tuple(slice(0, s) for s in shape)]
    return out


def sliced_average(tensors: Sequence[torch.Tensor], weights: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Per-element weighted average of ``tensors``, each a leading corner of ``like``'s shape.

    Element ``i`` of the result is ``sum_j w_j t_j[i] / sum_j w_j`` over the tensors ``j`` that
    cover ``i`` (HeteroFL's aggregation); an element no tensor covers keeps ``like[i]``.
    Accumulated in float64; integer tensors are rounded.

    Raises:
        ValueError: a tensor that is not a corner of ``like``, or weights that are negative or
            of the wrong length.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(tensors),) or (w < 0).any():
        raise ValueError('"weights" must be one non-negative weight per tensor')
    acc = torch.zeros(like.shape, dtype=torch.float64)
    tot = torch.zeros(like.shape, dtype=torch.float64)
    for t, wi in zip(tensors, w.tolist()):
        if t.dim() != like.dim() or any(s > n for s, n in zip(t.shape, like.shape)):
            raise ValueError(f"sliced_average: shape {tuple(t.shape)} is not a corner of {tuple(like.shape)}")
        corner = tuple(slice(0, s) for s in t.shape)
        acc[corner] += wi * t.detach().to(torch.float64)
        tot[corner] += wi
    covered = tot > 0
    out = like.detach().to(torch.float64).clone()
    out[covered] = acc[covered] / tot[covered]
    if like.is_floating_point():
        return out.to(like.dtype)
    return out.round().to(like.dtype)


def choose_width(
    ratios: Sequence[float], memory_bytes: float, mem_of: Callable[[float], float],
    on_time: Callable[[float], bool] | None = None,
) -> float:
    """The width ratio a client gets, from its memory and (with ``on_time``) its compute.

    Among the ratios whose training memory with one expert ``mem_of(ratio)`` (bytes) is at most
    ``memory_bytes``: the widest for which ``on_time(ratio)`` holds (one expert predicted to
    finish before the deadline; every ratio when ``on_time`` is None), else the narrowest (the
    fastest). When no ratio fits in memory: the narrowest (the budget then gives the client no
    expert, as without sub-networks).

    Raises:
        ValueError: no ratio given.
    """
    if not ratios:
        raise ValueError('"expert_widths" must name at least one width ratio')
    ordered = sorted(set(float(r) for r in ratios), reverse=True)
    fits = [r for r in ordered if mem_of(r) <= memory_bytes]
    for r in fits:
        if on_time is None or on_time(r):
            return r
    return ordered[-1]
