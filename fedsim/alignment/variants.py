"""Three more alignment policies built on :class:`LoadBalancedPolicy`.

- ``deadline_aware``: a client takes another expert only while it is predicted to
  finish by the deadline (from the server's estimates).
- ``load_balanced_inround`` keeps the in-round provisional-load term of the
  earlier default (``w_r = 0.5``) as a named variant of the paper's rule.
- ``systems_aware`` (beyond the design paper, which names channel-aware
  alignment as the next step): uses only the server's *estimates* of each
  client's rates and compute (:class:`~fedsim.alignment.policies.AssignContext`)
  to decide who trains, how many experts and which.
- ``fair_participation``: ``systems_aware`` whose choice of who trains also
  weighs each client's participation deficit (the design paper's IV-D:
  "without equitable scheduling, clients with limited resources could be
  neglected").
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np

from fedsim.alignment.policies import LoadBalancedPolicy, order_experts, register_policy, tie_keys
from fedsim.alignment.state import AlignmentState

__all__ = ["DeadlineAwarePolicy", "FairParticipationPolicy", "InRoundBalancedPolicy", "SystemsAwarePolicy"]


@register_policy
class InRoundBalancedPolicy(LoadBalancedPolicy):
    """``load_balanced`` with the in-round load term on: ``w_r = w_r_inround`` (default 0.5).

    Args:
        w_f, w_u, tie_break: as in :class:`LoadBalancedPolicy`.
        w_r_inround: weight of the in-round provisional load (>= 0).
    """

    name = "load_balanced_inround"

    def __init__(
        self, w_f: float = 1.0, w_u: float = 0.5, w_r_inround: float = 0.5, tie_break: str = "random"
    ) -> None:
        super().__init__(w_f=w_f, w_u=w_u, w_r=w_r_inround, tie_break=tie_break)


@register_policy
class SystemsAwarePolicy(LoadBalancedPolicy):
    """Fitness, usage and predicted finish time, from the server's estimates only.

    With ``T = ctx.time_limit_s`` and ``t_c(S)`` the predicted round time of
    client ``c`` training the expert set ``S`` (:meth:`AssignContext.finish_time`:
    estimated latency, downlink and uplink rates and FLOP rate):

    1. *who*: a client whose ``t_c({e})`` exceeds ``T`` for every expert gets
       ``[]`` (it would be a straggler: its bytes would be wasted). When the
       round closes at the ``ctx.needed``-th upload, only the ``needed``
       clients with the smallest one-expert prediction are dispatched; the
       others would be cut off at the close, so they get ``[]`` too.
    2. *which and how many*: each kept client takes its most desirable expert
       (the paper's desirability ``w_f * F/max F - w_u * U/max U``), then adds
       the next one while it still finishes by ``T`` and its desirability
       exceeds the time it costs, ``w_t * (t_c(S + e) - t_c(S)) / T``.

    It therefore changes bytes (no payload to predicted stragglers, fewer
    experts on slow links) and round time (slow clients left out), not only
    which experts are trained. Needs ``ctx``.

    Args:
        w_f, w_u, tie_break: as in :class:`LoadBalancedPolicy` (``w_r = 0``).
        w_t: weight of the predicted extra time of one more expert (>= 0).
    """

    name = "systems_aware"

    def __init__(
        self, w_f: float = 1.0, w_u: float = 0.5, w_t: float = 1.0, tie_break: str = "random"
    ) -> None:
        super().__init__(w_f=w_f, w_u=w_u, w_r=0.0, tie_break=tie_break)
        if not (math.isfinite(w_t) and w_t >= 0):
            raise ValueError(f'"w_t" must be finite and >= 0, got {w_t}')
        self.w_t = float(w_t)

    def _assign(self, clients, budgets, state, rng, ctx):
        if ctx is None:
            raise ValueError('policy "systems_aware" needs an AssignContext (ctx)')
        E = state.num_experts
        T = ctx.time_limit_s
        base = self.desirability(clients, state)
        tie = tie_keys(self.tie_break, len(clients), E, rng)
        out: dict = {c: [] for c in clients}
        first: dict = {}
        for i, c in enumerate(clients):
            if budgets[c] == 0:
                continue
            t1 = np.array([ctx.finish_time(c, [e], E) for e in range(E)])
            lim = self.dispatch_limit_s(c, T, state)
            ok = np.flatnonzero(t1 <= lim)
            if ok.size == 0:
                continue
            order = [int(e) for e in order_experts(base[i], None if tie is None else tie[i]) if t1[e] <= lim]
            first[c] = (float(t1[order[0]]), order[0], i)
        kept = sorted(first, key=lambda c: (self.dispatch_key(c, first[c][0], T, state), clients.index(c)))
        if ctx.needed is not None:
            kept = kept[: max(int(ctx.needed), 0)]
        for c in kept:
            t_held, e0, i = first[c]
            held = [e0]
            score = base[i].copy()
            for e in order_experts(score, None if tie is None else tie[i]):
                if len(held) >= budgets[c]:
                    break
                e = int(e)
                if e in held:
                    continue
                t_new = ctx.finish_time(c, [*held, e], E)
                if t_new > T or score[e] <= self.w_t * (t_new - t_held) / T:
                    continue
                held.append(e)
                t_held = t_new
            out[c] = held
        return out

    def dispatch_key(self, client: Hashable, t1_s: float, time_limit_s: float, state: AlignmentState) -> float:
        """Sort key of a client predicted to finish (smallest first dispatched): its
        predicted one-expert round time ``t1_s`` (seconds)."""
        return t1_s

    def dispatch_limit_s(self, client: Hashable, time_limit_s: float, state: AlignmentState) -> float:
        """Largest predicted one-expert round time (seconds) at which ``client`` is dispatched:
        ``time_limit_s``."""
        return time_limit_s


@register_policy
class FairParticipationPolicy(SystemsAwarePolicy):
    """``systems_aware`` that prefers clients with a participation deficit.

    With ``p_c`` = the rounds client ``c`` has contributed an aggregated update in
    (:attr:`AlignmentState.participation`) and ``p̄`` their mean over all the
    server's clients, the deficit is ``d_c = (p̄ - p_c) / max(p̄, 1)`` (0 = an
    average client, > 0 = behind). Of the clients predicted to finish with one
    expert, the ``ctx.needed`` with the smallest ``t1_c / T - w_p * d_c`` are
    dispatched (``t1_c``: predicted one-expert round time, ``T``:
    ``ctx.time_limit_s``); the experts are then chosen as in ``systems_aware``.
    A client behind (``d_c > 0``) is also given a chance its estimate denies it:
    it is dispatched while ``t1_c <= T * (1 + w_p * d_c)`` (not only ``<= T``),
    and a capacity budget of 0 is raised to 1 (:meth:`raise_budgets`), so a
    client whose estimate says it cannot finish is tried once it falls behind
    (it is observed, and its learned estimate corrected, only if it completes).
    The price is bytes and, if it straggles, a round that waits for the
    deadline. ``w_p = 0`` is ``systems_aware`` exactly.

    Args:
        w_f, w_u, w_t, tie_break: as in :class:`SystemsAwarePolicy`.
        w_p: weight of the participation deficit against the predicted time per deadline (>= 0).
    """

    name = "fair_participation"

    def __init__(
        self, w_f: float = 1.0, w_u: float = 0.5, w_t: float = 1.0, w_p: float = 1.0, tie_break: str = "random"
    ) -> None:
        super().__init__(w_f=w_f, w_u=w_u, w_t=w_t, tie_break=tie_break)
        if not (math.isfinite(w_p) and w_p >= 0):
            raise ValueError(f'"w_p" must be finite and >= 0, got {w_p}')
        self.w_p = float(w_p)

    @staticmethod
    def deficit(client: Hashable, state: AlignmentState) -> float:
        """Participation deficit ``d_c = (p̄ - p_c) / max(p̄, 1)`` (dimensionless; 0 before any feedback)."""
        p = np.asarray(state.participation, dtype=float)
        mean = float(p.mean()) if p.size else 0.0
        return (mean - float(p[state.row(client)])) / max(mean, 1.0)

    def dispatch_key(self, client: Hashable, t1_s: float, time_limit_s: float, state: AlignmentState) -> float:
        """``t1_s / T - w_p * d_c`` (dimensionless; see the class docstring)."""
        if self.w_p == 0:
            return t1_s
        return t1_s / time_limit_s - self.w_p * self.deficit(client, state)

    def dispatch_limit_s(self, client: Hashable, time_limit_s: float, state: AlignmentState) -> float:
        """``T * (1 + w_p * max(d_c, 0))`` seconds."""
        return time_limit_s * (1.0 + self.w_p * max(self.deficit(client, state), 0.0))

    def raise_budgets(self, client: Hashable, budget: int, state: AlignmentState) -> int:
        """1 for a client with budget 0 and a participation deficit (``w_p > 0``), else ``budget``."""
        return 1 if budget == 0 and self.w_p > 0 and self.deficit(client, state) > 0 else budget


@register_policy
class DeadlineAwarePolicy(LoadBalancedPolicy):
    """``load_balanced``, but a client takes another expert only while it is predicted to finish.

    At each pick the client takes its most desirable expert ``e`` among those
    for which ``ctx.finish_time(c, held + [e]) <= ctx.time_limit_s``; when
    none qualifies it stops (with equal per-expert FLOPs: exactly at the
    largest ``k`` whose predicted time fits). Its first ``min(min_k, k_c)``
    experts are given regardless of time (``min_k=0`` by default: a client
    that cannot finish with one expert gets ``[]``). Needs ``ctx``.

    Args:
        w_f, w_u, w_r: as in :class:`LoadBalancedPolicy`.
        min_k: experts given regardless of the deadline (>= 0).
    """

    name = "deadline_aware"

    def __init__(
        self, w_f: float = 1.0, w_u: float = 0.5, w_r: float = 0.0, min_k: int = 0,
        tie_break: str = "random",
    ) -> None:
        super().__init__(w_f=w_f, w_u=w_u, w_r=w_r, tie_break=tie_break)
        if int(min_k) != min_k or min_k < 0:
            raise ValueError(f'"min_k" must be an integer >= 0, got {min_k}')
        self.min_k = int(min_k)

    def _may_add(self, client, held, e, state, ctx):
        if len(held) < self.min_k:
            return True
        assert ctx is not None
        return ctx.finish_time(client, [*held, e], state.num_experts) <= ctx.time_limit_s

    def _assign(self, clients, budgets, state, rng, ctx):
        if ctx is None:
            raise ValueError('policy "deadline_aware" needs an AssignContext (ctx)')
        return super()._assign(clients, budgets, state, rng, ctx)
