"""Channel-aware gating for serverless NMoE inference (design paper, Section IV-C).

Today's gate (``protocol.nmoe.channel_gate_weight = 0``) sends a request to the
``top_k`` experts of highest routing probability ``p_e`` among those whose
owners are online. The channel-aware gate scores each candidate expert by

    s_e = log p_e - w * L_e / T

and takes the ``top_k`` highest scores (the answers are still mixed with the
gate's probabilities, renormalised over the chosen experts), where ``w`` is
the weight (dimensionless), ``T`` the request timeout (s) and ``L_e`` the
latency of reaching expert ``e`` *as the requesting client predicts it*
(:class:`LatencyEstimator`, s, in ``[0, T]``), from what that client has
observed, never from the future:

- the channel state of the current fading block (``csi(node)``: the node's
  access link has a non-zero rate; a client sees its own, and the owner's as
  the owner last reported it): an expert whose owner, or whose requester, is
  in outage is predicted to time out, ``L_e = T``;
- the network seconds and the expert compute seconds of its last answered
  request to ``e`` (0 before the first);
- its own requests to ``e`` still unanswered: each waits in front of a new
  one (``(1 + outstanding) * compute``), and the oldest has already taken
  ``age`` seconds, a lower bound of the latency.

So ``L_e = min(T, max(net_e + (1 + q_e) * compute_e, age_e))`` for a remote
expert, ``L_e = (1 + queue) * compute`` for the local one (the client's own
compute queue, which it sees). A weight of 0 runs today's gate unchanged.

With the random gate (``rangate``) the channel-aware choice draws ``top_k``
experts by Gumbel-top-k on the scores (at ``w = 0`` the same law as today's
draw without replacement, not the same draws).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["LatencyEstimator", "channel_aware_topk", "gate_probs"]


class LatencyEstimator:
    """What each requesting client knows of the latency of reaching each expert.

    ``clients``: node ids (client i owns expert i); ``timeout_s``: the request
    timeout ``T`` (s, > 0), the cap of every prediction; ``csi(node)``
    (optional): whether ``node``'s access link has a non-zero rate in the
    current fading block (None: always). Times are simulated seconds.

    Raises:
        ValueError: ``timeout_s`` is not > 0.
    """

    def __init__(self, clients: Sequence[str], timeout_s: float, csi: Callable[[str], bool] | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError('"timeout_s" must be > 0')
        self.clients = list(clients)
        self.timeout_s = float(timeout_s)
        self.csi = csi
        self.net: dict[tuple[str, int], float] = {}  # (origin, expert) -> last measured network seconds
        self.compute: dict[tuple[str, int], float] = {}  # -> last measured expert compute seconds
        self.sent: dict[tuple[str, int], list[float]] = {}  # -> issue times of unanswered branches

    def start(self, origin: str, e: int, now: float) -> None:
        """``origin`` sends a branch to expert ``e`` at ``now``."""
        self.sent.setdefault((origin, e), []).append(float(now))

    def end(self, origin: str, e: int, t_sent: float, t_net: float, t_exp: float, ok: bool) -> None:
        """The branch sent at ``t_sent`` ended; an answered one (``ok``) is a measurement."""
        pend = self.sent.get((origin, e), [])
        if t_sent in pend:
            pend.remove(t_sent)
        if ok:
            self.net[(origin, e)] = float(t_net)
            self.compute[(origin, e)] = float(t_exp)

    def predict(self, origin: str, now: float, local_queue: int, local_compute_s: float) -> list[float]:
        """Predicted latency ``L_e`` (s, in ``[0, T]``) of every expert for a request of
        ``origin`` at ``now`` (module docstring); ``local_queue``: jobs at ``origin``'s
        compute now, ``local_compute_s``: its expert compute time."""
        T = self.timeout_s
        out = []
        origin_up = self.csi is None or bool(self.csi(origin))
        for e, owner in enumerate(self.clients):
            if owner == origin:
                out.append(min(T, (1 + local_queue) * local_compute_s))
                continue
            if not origin_up or (self.csi is not None and not self.csi(owner)):
                out.append(T)
                continue
            key = (origin, e)
            pend = self.sent.get(key, [])
            age = now - min(pend) if pend else 0.0
            guess = self.net.get(key, 0.0) + (1 + len(pend)) * self.compute.get(key, 0.0)
            out.append(min(T, max(guess, age)))
        return out


def gate_probs(model: Any, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Routing probabilities ``(E,)`` of one sample's features ``h`` (1, D) under the
    model's gate (learned: softmax of the logits; random: its ``probs``), 0 where
    ``mask`` (bool (E,)) forbids."""
    from fedsim.learning.nmoe_model import RanGate

    if isinstance(model.gate, RanGate):
        p = model.gate.probs.clone()
        if mask is not None:
            p = p * mask.to(p.dtype)
        return p / p.sum().clamp_min(1e-30)
    logits = model.gate(h)[0]
    if mask is not None:
        logits = logits.masked_fill(~mask.to(torch.bool), float("-inf"))
    return torch.softmax(logits, dim=-1)


def channel_aware_topk(probs: torch.Tensor, penalty: Sequence[float], k: int, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor]:
    """The ``k`` experts of highest score ``log p_e - penalty_e`` among those of
    positive probability (fewer if fewer have one), best first, and their mixing
    weights (the probabilities renormalised over them, (k,)). With ``generator``
    (the random gate) a Gumbel noise is added to the scores (Gumbel-top-k).

    Raises:
        ValueError: no expert has a positive probability, or lengths differ.
    """
    pen = torch.as_tensor(list(penalty), dtype=probs.dtype)
    if pen.shape != probs.shape:
        raise ValueError(f'"penalty" must have {probs.shape[0]} entries, got {pen.shape[0]}')
    ok = probs > 0
    if not bool(ok.any()):
        raise ValueError("no expert has a positive routing probability")
    score = torch.where(ok, torch.log(probs.clamp_min(1e-30)) - pen, torch.full_like(probs, -math.inf))
    if generator is not None:
        u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype).clamp(1e-12, 1 - 1e-12)
        score = score - torch.log(-torch.log(u))
    k = min(int(k), int(ok.sum()))
    idx = torch.topk(score, k).indices
    w = probs[idx]
    return [int(i) for i in idx], w / w.sum().clamp_min(1e-12)
