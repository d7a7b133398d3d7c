"""Client-expert alignment policies: who trains which experts this round.

One small interface, :class:`AlignmentPolicy`, whose hook :meth:`~AlignmentPolicy.assign`
maps the selected clients and their expert budgets to sorted lists of expert
indices. A policy reads the :class:`~fedsim.alignment.state.AlignmentState`
(fitness, usage) and, where it needs them, capacity estimates in an
:class:`AssignContext`; it never touches the SimPy environment, so it can be
tested with hand-computed numbers. Policies are registered by name in
:data:`POLICIES` and built with :func:`make_policy`. (:func:`expert_load_cv`
is re-exported here from :mod:`fedsim.alignment.metrics` for convenience.)

Contract of ``assign`` (all policies):

- every client in ``clients`` appears in the result, with a sorted list of
  distinct expert indices in ``[0, E)``; no other key appears;
- client ``c`` gets at most ``min(budgets[c], E)`` experts (a budget above
  ``E`` is clipped to ``E``); a budget of 0 gives ``[]``, unless the policy's
  :meth:`~AlignmentPolicy.raise_budgets` hook raises it (only
  ``fair_participation`` does);
- empty ``clients`` gives ``{}`` (``rng`` untouched);
- ties in a score are broken at random from ``rng`` (``tie_break="random"``,
  the default: with all fitness 0 in round 0 the choice is not coordinated by
  expert index) or by the lowest expert index (``tie_break="index"``); every
  policy is a deterministic function of its inputs and the ``rng`` state;
- sequential policies (``load_balanced``, ``deadline_aware``) visit clients in
  the order given in ``clients``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import networkx as nx
import numpy as np

from fedsim.alignment.capacity import CapacityEstimate
from fedsim.alignment.metrics import expert_load_cv
from fedsim.alignment.state import AlignmentState

__all__ = [
    "POLICIES",
    "register_policy",
    "order_experts",
    "tie_keys",
    "policy_params",
    "AlignmentPolicy",
    "AssignContext",
    "GreedyPolicy",
    "InfeasibleAssignmentError",
    "LoadBalancedPolicy",
    "OptimalPolicy",
    "RandomPolicy",
    "expert_load_cv",
    "make_policy",
]

Assignment = dict[Hashable, list[int]]


class InfeasibleAssignmentError(ValueError):
    """No assignment meets every budget and the expert load bounds."""


@dataclass(frozen=True)
class AssignContext:
    """Capacity information for policies that reason about time.

    Attributes:
        estimates: the server's capacity estimate of each client.
        deadline_s: round deadline (seconds) measured from dispatch.
        safety_margin: fraction in ``[0, 1)`` of the deadline kept in reserve:
            a client must be predicted to finish by ``deadline_s * (1 - safety_margin)``.
        bytes_shared: bytes of the shared part (gate, backbone) sent each way.
        bytes_per_expert: bytes of one expert sent each way.
        flops_shared: FLOPs of training the shared part; a number, or a
            mapping client -> number (clients hold different amounts of data).
        flops_per_expert: FLOPs of training one expert; a number, a mapping
            client -> number, or a mapping client -> ``(E,)`` array (the cost
            of expert ``e`` for that client, e.g. proportional to the data the
            gate routes to it).
        needed: completions the server waits for this round (the round closes
            at the ``needed``-th upload), or None if unknown.
    """

    estimates: Mapping[Hashable, CapacityEstimate]
    deadline_s: float
    safety_margin: float = 0.0
    bytes_shared: float = 0.0
    bytes_per_expert: float = 0.0
    flops_shared: float | Mapping[Hashable, float] = 0.0
    flops_per_expert: float | Mapping[Hashable, float | np.ndarray] = 0.0
    needed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f'"deadline_s" must be finite and > 0, got {self.deadline_s}')
        if not 0.0 <= self.safety_margin < 1.0:
            raise ValueError(f'"safety_margin" must be in [0, 1), got {self.safety_margin}')

    @property
    def time_limit_s(self) -> float:
        """``deadline_s * (1 - safety_margin)`` (seconds)."""
        return self.deadline_s * (1.0 - self.safety_margin)

    def expert_flops(self, client: Hashable, num_experts: int) -> np.ndarray:
        """FLOPs of training each expert on ``client``, shape ``(num_experts,)``."""
        v = self.flops_per_expert
        if isinstance(v, Mapping):
            v = _lookup(v, client, "flops_per_expert")
        arr = np.broadcast_to(np.asarray(v, dtype=float), (num_experts,))
        return arr.copy()

    def finish_time(self, client: Hashable, experts: Iterable[int], num_experts: int) -> float:
        """Predicted round time (seconds) of ``client`` training ``experts``.

        ``latency + B*8/down_bps + (flops_shared + sum_e flops_e)/flops_per_s
        + B*8/up_bps`` with ``B = bytes_shared + len(experts)*bytes_per_expert``;
        equals :func:`~fedsim.alignment.capacity.predicted_time` for scalar FLOPs.
        """
        est = _lookup(self.estimates, client, "estimates")
        es = list(experts)
        fs = self.flops_shared
        if isinstance(fs, Mapping):
            fs = _lookup(fs, client, "flops_shared")
        flops = float(fs) + float(self.expert_flops(client, num_experts)[es].sum())
        b = self.bytes_shared + len(es) * self.bytes_per_expert
        return (
            est.latency_s + b * 8.0 / est.down_bps + flops / est.flops_per_s + b * 8.0 / est.up_bps
        )


def _lookup(m: Mapping[Hashable, Any], client: Hashable, what: str) -> Any:
    try:
        return m[client]
    except KeyError:
        raise ValueError(f"AssignContext.{what} has no entry for client {client!r}") from None


def _top_k(score: np.ndarray, k: int, tie: np.ndarray | None = None) -> list[int]:
    """Indices of the ``k`` largest scores; ties by ascending ``tie`` key, else the lowest index."""
    return [int(e) for e in order_experts(score, tie)[:k]]


def order_experts(score: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """Expert indices by descending ``score``, ties by ascending ``tie`` (then index)."""
    if tie is None:
        return np.argsort(-score, kind="stable")
    return np.lexsort((tie, -score))


def tie_keys(tie_break: str, n: int, E: int, rng: np.random.Generator) -> np.ndarray | None:
    """One random tie key per (client, expert), shape ``(n, E)``, or None for index ties."""
    return rng.random((n, E)) if tie_break == "random" else None


def _check_tie_break(tie_break: str) -> str:
    if tie_break not in ("random", "index"):
        raise ValueError(f'"tie_break" must be "random" or "index", got {tie_break!r}')
    return tie_break


#: Policy name -> class: the one registry, filled by :func:`register_policy` where each
#: policy is defined (this module and :mod:`fedsim.alignment.variants`, which the
#: package imports, so the registry is complete whenever the package is imported).
POLICIES: dict[str, type[AlignmentPolicy]] = {}


def register_policy(cls: type[AlignmentPolicy]) -> type[AlignmentPolicy]:
    """Class decorator: list ``cls`` in :data:`POLICIES` under ``cls.name``.

    Raises:
        ValueError: the name is empty or already taken by another class.
    """
    name = getattr(cls, "name", "")
    if not name or POLICIES.get(name, cls) is not cls:
        raise ValueError(f"policy {cls.__name__}: name {name!r} is empty or already registered")
    POLICIES[name] = cls
    return cls


class AlignmentPolicy(ABC):
    """Base class of alignment policies (template method).

    :meth:`assign` validates its inputs, clips budgets to ``[0, E]``, calls
    the subclass hook :meth:`_assign` and checks and normalises (sorts) its
    answer. A subclass sets ``name`` and implements :meth:`_assign`.
    """

    name: ClassVar[str]

    def assign(
        self,
        clients: Sequence[Hashable],
        budgets: Mapping[Hashable, int],
        state: AlignmentState,
        rng: np.random.Generator,
        ctx: AssignContext | None = None,
    ) -> Assignment:
        """Give each client in ``clients`` a sorted list of at most ``budgets[c]`` experts.

        See the module docstring for the contract.

        Raises:
            ValueError: a client repeats, lacks a budget, has a negative budget
                or is unknown to ``state``.
            AssertionError: the policy broke the contract (a bug in the policy).
        """
        clients = list(clients)
        if len(set(clients)) != len(clients):
            raise ValueError("clients must be distinct")
        E = state.num_experts
        ks: dict[Hashable, int] = {}
        for c in clients:
            if c not in budgets:
                raise ValueError(f"no budget for client {c!r}")
            k = budgets[c]
            if int(k) != k or k < 0:
                raise ValueError(f"budget of client {c!r} must be an integer >= 0, got {k}")
            state.row(c)
            ks[c] = min(int(k), E)
        if not clients:
            return {}
        ks = {c: min(max(int(self.raise_budgets(c, ks[c], state)), ks[c]), E) for c in clients}
        raw = self._assign(clients, ks, state, rng, ctx)
        out: Assignment = {}
        for c in clients:
            es = sorted({int(e) for e in raw.get(c, [])})
            if len(es) > ks[c] or any(not 0 <= e < E for e in es):
                raise AssertionError(f"policy {self.name!r} broke the contract for client {c!r}")
            out[c] = es
        return out

    def raise_budgets(self, client: Hashable, budget: int, state: AlignmentState) -> int:
        """Hook: the budget ``client`` may use, never below ``budget`` (already clipped to
        ``[0, E]``); the default keeps it (``fair_participation`` lifts a 0 to 1 for a
        client behind in participation)."""
        return budget

    @abstractmethod
    def _assign(
        self,
        clients: list[Hashable],
        budgets: dict[Hashable, int],
        state: AlignmentState,
        rng: np.random.Generator,
        ctx: AssignContext | None,
    ) -> Mapping[Hashable, Iterable[int]]:
        """The policy proper; ``budgets`` are already clipped to ``[0, E]``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


@register_policy
class RandomPolicy(AlignmentPolicy):
    """``min(k_c, E)`` distinct experts uniformly at random per client (draws from ``rng``).

    Clients are drawn in the given order; a client with budget 0 draws nothing.
    """

    name = "random"

    def _assign(self, clients, budgets, state, rng, ctx):
        E = state.num_experts
        return {
            c: rng.choice(E, size=budgets[c], replace=False).tolist() if budgets[c] else []
            for c in clients
        }


@register_policy
class GreedyPolicy(AlignmentPolicy):
    """Top-``k_c`` experts by the client's fitness alone (ignores usage and load).

    With ``epsilon > 0`` (epsilon-greedy, an exploration control): each client
    independently, with probability ``epsilon``, takes ``k_c`` distinct experts
    uniformly at random instead (one uniform and one permutation per client are
    drawn after the tie keys, only when ``epsilon > 0``: ``epsilon = 0`` is exactly
    the pure greedy policy).

    Args:
        tie_break: ``"random"`` (from ``rng``) or ``"index"`` (lowest index).
        epsilon: exploration probability per client and round, in ``[0, 1]``.
    """

    name = "greedy"

    def __init__(self, tie_break: str = "random", epsilon: float = 0.0) -> None:
        self.tie_break = _check_tie_break(tie_break)
        if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
            raise ValueError(f'"epsilon" must be in [0, 1], got {epsilon}')
        self.epsilon = float(epsilon)

    def _assign(self, clients, budgets, state, rng, ctx):
        E = state.num_experts
        F = state.fitness_rows(clients)
        tie = tie_keys(self.tie_break, len(clients), E, rng)
        out = {c: _top_k(F[i], budgets[c], None if tie is None else tie[i]) for i, c in enumerate(clients)}
        if self.epsilon > 0:
            explore = rng.random(len(clients)) < self.epsilon
            perms = [rng.permutation(E) for _ in clients]
            out.update({c: [int(e) for e in perms[i][: budgets[c]]] for i, c in enumerate(clients) if explore[i]})
        return out


@register_policy
class LoadBalancedPolicy(AlignmentPolicy):
    """Top experts by desirability, fitness against load (the paper's design).

    Desirability of expert ``e`` for client ``c``::

        w_f * F[c, e] / max_j F[c, j]      (per-client max normalisation; 0 if the row is all 0)
      - w_u * U[e] / max_j U[j]            (global usage; 0 if all usage is 0)
      - w_r * m[e] / n                     (in-round provisional load)

    where ``m[e]`` is the number of clients already given ``e`` earlier in this
    call and ``n = len(clients)``. Assignment is a round-robin draft: in pass
    1 each client (in the order given) takes its most desirable expert, in
    pass 2 its next one, and so on until every budget is used, ``m`` updated
    after every pick. ``w_r = 0`` (the default) gives the paper's rule exactly
    (top-``k_c`` by current scores, order-independent); ``w_r > 0`` also spreads
    clients within a round (the variant registered as ``load_balanced_inround``).
    Max normalisation (not min-max) keeps fitness ratios: an expert with half
    the client's best fitness scores 0.5.

    Args:
        w_f: weight of normalised fitness (>= 0).
        w_u: weight of normalised usage (>= 0).
        w_r: weight of in-round provisional load (>= 0).
        tie_break: ``"random"`` (from ``rng``) or ``"index"`` (lowest index).
    """

    name = "load_balanced"

    def __init__(
        self, w_f: float = 1.0, w_u: float = 0.5, w_r: float = 0.0, tie_break: str = "random"
    ) -> None:
        for n, v in (("w_f", w_f), ("w_u", w_u), ("w_r", w_r)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f'"{n}" must be finite and >= 0, got {v}')
        self.w_f, self.w_u, self.w_r = float(w_f), float(w_u), float(w_r)
        self.tie_break = _check_tie_break(tie_break)

    def desirability(
        self,
        clients: Sequence[Hashable],
        state: AlignmentState,
        provisional: np.ndarray | None = None,
    ) -> np.ndarray:
        """Desirability matrix ``(len(clients), E)`` given provisional loads ``m`` (default 0)."""
        F = state.fitness_rows(clients)
        rowmax = F.max(axis=1, keepdims=True) if F.size else np.zeros((0, 1))
        nf = np.divide(F, rowmax, out=np.zeros_like(F), where=rowmax > 0)
        U = np.asarray(state.usage, dtype=float)
        nu = U / U.max() if U.max() > 0 else np.zeros_like(U)
        m = np.zeros(state.num_experts) if provisional is None else provisional
        n = max(len(clients), 1)
        return self.w_f * nf - self.w_u * nu[None, :] - self.w_r * (m / n)[None, :]

    def _may_add(
        self,
        client: Hashable,
        held: list[int],
        e: int,
        state: AlignmentState,
        ctx: AssignContext | None,
    ) -> bool:
        """Whether ``client`` holding ``held`` may also take expert ``e`` (hook for subclasses)."""
        return True

    def _assign(self, clients, budgets, state, rng, ctx):
        E = state.num_experts
        base = self.desirability(clients, state)
        m = np.zeros(E)
        n = len(clients)
        held: dict[Hashable, list[int]] = {c: [] for c in clients}
        active = [c for c in clients if budgets[c] > 0]
        rows = {c: i for i, c in enumerate(clients)}
        tie = tie_keys(self.tie_break, n, E, rng)
        while active:
            still = []
            for c in active:
                score = base[rows[c]] - self.w_r * (m / n)
                score[held[c]] = -np.inf
                pick = None
                for e in order_experts(score, None if tie is None else tie[rows[c]]):
                    if not np.isfinite(score[e]):
                        break
                    if self._may_add(c, held[c], int(e), state, ctx):
                        pick = int(e)
                        break
                if pick is None:
                    continue
                held[c].append(pick)
                m[pick] += 1
                if len(held[c]) < budgets[c]:
                    still.append(c)
            active = still
        return held


@register_policy
class OptimalPolicy(AlignmentPolicy):
    """Maximum total fitness under budgets and expert load bounds, solved exactly.

    Every client ``c`` gets *exactly* ``min(k_c, E)`` experts (its whole
    budget: fitness is >= 0, so filling never lowers the total), and every
    expert is given to between ``min_load`` and ``max_load`` clients
    (``max_load=None``: no upper bound). Solved as a min-cost flow
    (``networkx.network_simplex``): source -> client (capacity ``k_c``) ->
    expert (capacity 1, cost ``-round(F * scale) * W + e``) -> sink (capacity
    ``max_load - min_load``) with the lower bounds moved into node demands.
    The ``+ e`` term with ``W`` larger than any sum of indices breaks ties
    between optima (at fitness resolution ``1/scale``) towards lower expert
    indices without changing the optimum.

    When no assignment meets the bounds: ``on_infeasible="raise"`` raises
    :class:`InfeasibleAssignmentError` (a ``ValueError``); ``"relax"`` first
    lowers ``min_load`` only as far as needed, then (with a floor of 0) raises
    ``max_load`` only as far as needed (both by bisection), and solves
    again; the bounds actually used are left in ``last_bounds``.

    Args:
        min_load: least number of clients per expert (>= 0).
        max_load: most number of clients per expert (>= min_load) or None.
        on_infeasible: ``"raise"`` or ``"relax"``.
        scale: fitness resolution multiplier (fitness is rounded to ``1/scale``).
        tie_break: ``"random"``: the ``+ e`` term uses a random rank of ``e``
            per client (a permutation drawn from ``rng``) instead of ``e``.
    """

    name = "optimal"

    def __init__(
        self,
        min_load: int = 0,
        max_load: int | None = None,
        on_infeasible: Literal["raise", "relax"] = "raise",
        scale: float = 1e6,
        tie_break: str = "random",
    ) -> None:
        self.tie_break = _check_tie_break(tie_break)
        if int(min_load) != min_load or min_load < 0:
            raise ValueError(f'"min_load" must be an integer >= 0, got {min_load}')
        if max_load is not None and (int(max_load) != max_load or max_load < min_load):
            raise ValueError(f'"max_load" must be an integer >= min_load or None, got {max_load}')
        if on_infeasible not in ("raise", "relax"):
            raise ValueError(f'"on_infeasible" must be "raise" or "relax", got {on_infeasible!r}')
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError('"scale" must be > 0')
        self.min_load = int(min_load)
        self.max_load = None if max_load is None else int(max_load)
        self.on_infeasible = on_infeasible
        self.scale = float(scale)
        self.last_bounds: tuple[int, int | None] | None = None

    def _assign(self, clients, budgets, state, rng, ctx):
        E = state.num_experts
        if self.tie_break == "random":
            tie = np.stack([rng.permutation(E) for _ in clients])
        else:
            tie = np.tile(np.arange(E), (len(clients), 1))
        lo, hi = self.min_load, self.max_load
        result = self._solve(clients, budgets, state, lo, hi, tie)
        if result is None and self.on_infeasible == "relax":
            lo, hi, result = self._relax(clients, budgets, state, tie)
        if result is not None:
            self.last_bounds = (lo, hi)
            return result
        raise InfeasibleAssignmentError(
            f"no assignment gives every client exactly min(budget, E) experts with "
            f"{self.min_load} <= clients per expert <= {self.max_load} "
            f"(budgets {budgets}, E={state.num_experts}); "
            f'use on_infeasible="relax" or change the bounds'
        )

    def _relax(self, clients, budgets, state, tie):
        """Relax the bounds only as far as needed: the largest feasible floor
        ``<= min_load`` (ceiling kept), else floor 0 and the smallest feasible
        ceiling ``>= max_load``. Feasibility is monotone in each bound, so each is
        found by bisection (O(log n) min-cost-flow solves)."""

        def bisect(lo_v: int, hi_v: int, ok) -> tuple[int, Any] | None:  # noqa: ANN001
            """Smallest v in [lo_v, hi_v] with ok(v) not None (ok monotone)."""
            best = None
            while lo_v <= hi_v:
                mid = (lo_v + hi_v) // 2
                r = ok(mid)
                if r is not None:
                    best, hi_v = (mid, r), mid - 1
                else:
                    lo_v = mid + 1
            return best

        hi = self.max_load
        # floor: the largest feasible value, i.e. the smallest "drop" d with floor min_load - d
        found = bisect(0, self.min_load, lambda d: self._solve(clients, budgets, state, self.min_load - d, hi, tie))
        if found is not None:
            return self.min_load - found[0], hi, found[1]
        if hi is None:
            return 0, None, None
        n = len(clients)
        found = bisect(hi, max(hi, n), lambda h: self._solve(clients, budgets, state, 0, h, tie))
        if found is not None:
            return 0, found[0], found[1]
        return 0, None, self._solve(clients, budgets, state, 0, None, tie)

    def _solve(self, clients, budgets, state, lo, hi, tie):
        E = state.num_experts
        n = len(clients)
        hi_eff = n if hi is None else min(hi, n)
        K = sum(budgets[c] for c in clients)
        if lo > hi_eff or E * lo > K or K > E * hi_eff:
            return None
        F = np.rint(state.fitness_rows(clients) * self.scale).astype(np.int64)
        W = K * E + 1
        src, sink = "s", "t"
        G = nx.DiGraph()
        G.add_node(src, demand=-K)
        G.add_node(sink, demand=K - E * lo)
        for j in range(E):
            G.add_node(("e", j), demand=lo)
            G.add_edge(("e", j), sink, capacity=hi_eff - lo, weight=0)
        for i, c in enumerate(clients):
            if budgets[c] == 0:
                continue
            G.add_edge(src, ("c", i), capacity=budgets[c], weight=0)
            for j in range(E):
                G.add_edge(("c", i), ("e", j), capacity=1, weight=int(-F[i, j] * W + tie[i, j]))
        try:
            _, flow = nx.network_simplex(G)
        except nx.NetworkXUnfeasible:
            return None
        return {
            c: [j for j in range(E) if flow.get(("c", i), {}).get(("e", j), 0) > 0]
            for i, c in enumerate(clients)
        }


def make_policy(name: str, **params: Any) -> AlignmentPolicy:
    """Build the policy registered as ``name`` with keyword ``params``.

    Raises:
        ValueError: an unknown name (listing the valid names) or an unknown
            parameter (listing the policy's valid parameters).
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown alignment policy {name!r}; valid names: {', '.join(sorted(POLICIES))}"
        )
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"policy {name!r} got unknown parameter(s) {unknown}; valid parameters: {valid}"
        )
    return cls(**params)


def policy_params(alignment: Any) -> dict[str, Any]:
    """The fields of the scenario's ``alignment`` section that the chosen policy's constructor takes.

    The weights and bounds are typed fields of the ``alignment`` section, so a
    grid over ``protocol.fedmoe.alignment.policy`` works with one set of values: each policy
    receives only the parameters it defines. ``alignment`` is any pydantic
    model with a ``policy`` name and ``model_dump()``.

    Raises:
        KeyError: ``protocol.fedmoe.alignment.policy`` is not a registered policy.
    """
    cls = POLICIES[alignment.policy]
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    values = alignment.model_dump()
    return {n: values[n] for n in names if n in values}
