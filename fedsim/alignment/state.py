"""Server-side alignment state: client-expert fitness and global expert usage.

The server keeps, across rounds,

- ``fitness[c, e]`` (dimensionless, in ``[0, 1]`` for the built-in rewards): an
  exponential moving average (EMA) of a reward computed from client ``c``'s
  post-training feedback about expert ``e``;
- ``usage[e]`` (samples, or FLOPs: whatever unit the caller feeds in,
  consistently): a decayed sum of the training load expert ``e`` received;
- ``participation[c]`` (client-rounds): how many times client ``c`` sent
  feedback, i.e. contributed an aggregated update (what fair-participation
  policies read).

Clients are identified by arbitrary hashable ids (strings in fedsim) mapped to
rows in order of registration. The state never touches the SimPy environment:
it is updated by plain method calls with plain numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["AlignmentState", "Feedback", "Reward", "loss_reward"]

Reward = Literal["gate_prob", "loss", "expert_loss"]
_REWARDS: tuple[str, ...] = ("gate_prob", "loss", "expert_loss")


@dataclass(frozen=True)
class Feedback:
    """What one client reports to the server after local training.

    Attributes:
        mean_gate_prob: shape ``(E,)``; the gate's mean routing probability of
            the client's local data to each expert, evaluated with the gate
            *unmasked* (all experts), so it is available for every expert.
            Required when the state's reward is ``"gate_prob"``.
        trained_experts: indices of the experts the client actually trained.
        loss_first: training loss (nats) of the first local step / epoch.
        loss_last: training loss (nats) of the last local step / epoch.
        samples_per_expert: shape ``(E,)``; number of local samples (or tokens)
            routed to each expert during training; 0 for untrained experts.
        expert_loss: shape ``(E,)``; mean cross-entropy (nats) of each trained
            expert alone on the client's data, measured on the weights the client
            received (before it trained them); NaN for the others. Required when
            the state's reward is ``"expert_loss"``.
    """

    mean_gate_prob: np.ndarray | None = None
    trained_experts: Sequence[int] = field(default_factory=tuple)
    loss_first: float | None = None
    loss_last: float | None = None
    samples_per_expert: np.ndarray | None = None
    expert_loss: np.ndarray | None = None


def loss_reward(loss_first: float, loss_last: float) -> float:
    """Normalised loss reduction ``clip((loss_first - loss_last) / loss_first, 0, 1)``.

    0 when the loss did not improve (or ``loss_first <= 0``), 1 when it fell to 0.
    """
    if not (np.isfinite(loss_first) and np.isfinite(loss_last)):
        raise ValueError('"loss_first" and "loss_last" must be finite')
    if loss_first <= 0.0:
        return 0.0
    return float(np.clip((loss_first - loss_last) / loss_first, 0.0, 1.0))


class AlignmentState:
    """Fitness and usage scores kept by the server across rounds.

    Args:
        clients: number of clients ``n`` (ids become ``"0" .. "n-1"``) or an
            iterable of distinct hashable client ids (rows in that order).
        num_experts: number of experts ``E`` (> 0).
        fitness_ema: EMA weight ``a`` of a new reward, in ``(0, 1]``:
            ``F <- (1 - a) * F + a * reward`` for pairs that interacted.
        fitness_decay: factor ``d`` in ``[0, 1]`` applied to pairs that did not
            interact this round: ``F <- d * F`` (decays towards 0).
        usage_decay: factor in ``[0, 1]``: ``U <- usage_decay * U + load``.
        reward: ``"gate_prob"`` or ``"loss"``; see :meth:`update_fitness`.
        init_fitness: initial fitness, a scalar or a ``(C, E)`` array, >= 0.

    Which pairs are updated by :meth:`update_fitness` and which decay:

    - ``reward="gate_prob"``: every expert of every client that sent feedback
      is updated with reward ``mean_gate_prob[e]``; nothing of such a client
      decays. Every client *without* feedback this round (not selected,
      dropped out, late) decays on all experts.
    - ``reward="loss"``: for a client with feedback, each trained expert ``e``
      is updated with reward ``r * n_e / max_j n_j`` where
      ``r = loss_reward(loss_first, loss_last)`` and ``n`` is
      ``samples_per_expert`` over the trained experts (all trained experts get
      ``r`` when ``samples_per_expert`` is None or all zero); its untrained
      experts decay. Clients without feedback decay on all experts.
    - ``reward="expert_loss"`` (expert-specific): each trained expert ``e`` is
      updated with reward ``exp(-expert_loss[e])`` in ``(0, 1]`` (1 = the
      expert as received already classifies the client's data perfectly;
      ``exp(-ln 10) = 0.1`` = chance on 10 classes); the pairs without
      interaction this round (untrained experts, and every expert of a client
      without feedback) decay, as the design paper describes, so an expert the
      client has not trained for a while loses its standing against the ones
      it keeps using.
    """

    def __init__(
        self,
        clients: int | Iterable[Hashable],
        num_experts: int,
        *,
        fitness_ema: float = 0.3,
        fitness_decay: float = 0.95,
        usage_decay: float = 0.9,
        reward: Reward = "gate_prob",
        init_fitness: float | np.ndarray = 0.0,
    ) -> None:
        if isinstance(clients, (int, np.integer)):
            if clients < 0:
                raise ValueError('"clients" must be >= 0')
            ids: list[Hashable] = [str(i) for i in range(int(clients))]
        else:
            ids = list(clients)
        if len(set(ids)) != len(ids):
            raise ValueError("client ids must be distinct")
        if int(num_experts) != num_experts or num_experts <= 0:
            raise ValueError('"num_experts" must be an integer > 0')
        if not 0.0 < fitness_ema <= 1.0:
            raise ValueError('"fitness_ema" must be in (0, 1]')
        if not 0.0 <= fitness_decay <= 1.0:
            raise ValueError('"fitness_decay" must be in [0, 1]')
        if not 0.0 <= usage_decay <= 1.0:
            raise ValueError('"usage_decay" must be in [0, 1]')
        if reward not in _REWARDS:
            raise ValueError(f'"reward" must be one of {_REWARDS}, got {reward!r}')
        self.num_experts = int(num_experts)
        self.fitness_ema = float(fitness_ema)
        self.fitness_decay = float(fitness_decay)
        self.usage_decay = float(usage_decay)
        self.reward: Reward = reward
        self._row: dict[Hashable, int] = {cid: i for i, cid in enumerate(ids)}
        self._ids = ids
        init = np.asarray(init_fitness, dtype=float)
        if init.ndim == 0:
            self._init_scalar = float(init)
            fit = np.full((len(ids), self.num_experts), float(init))
        else:
            if init.shape != (len(ids), self.num_experts):
                raise ValueError(
                    f'"init_fitness" must be a scalar or shape {(len(ids), self.num_experts)}, '
                    f"got {init.shape}"
                )
            self._init_scalar = 0.0
            fit = init.copy()
        if not np.all(np.isfinite(fit)) or np.any(fit < 0):
            raise ValueError('"init_fitness" must be finite and >= 0')
        self._fitness = fit
        self._usage = np.zeros(self.num_experts)
        self._participation = np.zeros(len(ids))

    # ------------------------------------------------------------------ access
    @property
    def client_ids(self) -> tuple[Hashable, ...]:
        """Client ids in row order."""
        return tuple(self._ids)

    @property
    def num_clients(self) -> int:
        """Number of registered clients (rows)."""
        return len(self._ids)

    @property
    def fitness(self) -> np.ndarray:
        """Read-only view of the ``(C, E)`` fitness matrix (rows in :attr:`client_ids` order)."""
        view = self._fitness.view()
        view.flags.writeable = False
        return view

    @property
    def usage(self) -> np.ndarray:
        """Read-only view of the ``(E,)`` usage vector (caller's load unit)."""
        view = self._usage.view()
        view.flags.writeable = False
        return view

    @property
    def participation(self) -> np.ndarray:
        """Read-only ``(C,)`` count of rounds each client sent feedback in (rows in :attr:`client_ids` order)."""
        view = self._participation.view()
        view.flags.writeable = False
        return view

    def row(self, client: Hashable) -> int:
        """Row index of ``client``; ``KeyError`` naming the id if unknown."""
        try:
            return self._row[client]
        except KeyError:
            raise KeyError(f"unknown client id {client!r}") from None

    def fitness_rows(self, clients: Sequence[Hashable]) -> np.ndarray:
        """Copy of the fitness rows of ``clients``, shape ``(len(clients), E)``."""
        rows = [self.row(c) for c in clients]
        return self._fitness[rows].copy() if rows else np.zeros((0, self.num_experts))

    def add_client(self, client: Hashable) -> int:
        """Register a new client with the scalar ``init_fitness`` (0 if an array was given).

        Returns its row; ``ValueError`` if it is already registered.
        """
        if client in self._row:
            raise ValueError(f"client id {client!r} is already registered")
        self._row[client] = len(self._ids)
        self._ids.append(client)
        new = np.full((1, self.num_experts), self._init_scalar)
        self._fitness = np.vstack([self._fitness, new])
        self._participation = np.append(self._participation, 0.0)
        return self._row[client]

    # ----------------------------------------------------------------- updates
    def update_fitness(self, feedback: Mapping[Hashable, Feedback]) -> None:
        """Apply one round of client feedback (see the class docstring for which pairs decay).

        All feedback is validated before anything changes, so a bad entry
        leaves the state untouched. Every client in ``feedback`` also gets one
        more round of :attr:`participation`.
        """
        E = self.num_experts
        a, d = self.fitness_ema, self.fitness_decay
        reward = np.zeros((self.num_clients, E))
        updated = np.zeros((self.num_clients, E), dtype=bool)
        for cid, fb in feedback.items():
            r = self.row(cid)
            if self.reward == "gate_prob":
                if fb.mean_gate_prob is None:
                    raise ValueError(f'client {cid!r}: reward "gate_prob" needs mean_gate_prob')
                p = np.asarray(fb.mean_gate_prob, dtype=float)
                if p.shape != (E,) or not np.all(np.isfinite(p)) or np.any(p < 0):
                    raise ValueError(
                        f"client {cid!r}: mean_gate_prob must be finite, >= 0, shape ({E},)"
                    )
                reward[r] = p
                updated[r] = True
            else:
                trained = sorted({int(e) for e in fb.trained_experts})
                if any(not 0 <= e < E for e in trained):
                    raise ValueError(f"client {cid!r}: trained_experts out of range [0, {E})")
                if not trained:
                    continue
                if self.reward == "expert_loss":
                    if fb.expert_loss is None:
                        raise ValueError(f'client {cid!r}: reward "expert_loss" needs expert_loss')
                    lo = np.asarray(fb.expert_loss, dtype=float)
                    if lo.shape != (E,) or not np.all(np.isfinite(lo[trained])) or np.any(lo[trained] < 0):
                        raise ValueError(
                            f"client {cid!r}: expert_loss must be finite and >= 0 for trained experts, shape ({E},)"
                        )
                    reward[r, trained] = np.exp(-lo[trained])
                    updated[r, trained] = True
                    continue
                if fb.loss_first is None or fb.loss_last is None:
                    raise ValueError(f'client {cid!r}: reward "loss" needs loss_first, loss_last')
                base = loss_reward(fb.loss_first, fb.loss_last)
                share = np.ones(len(trained))
                if fb.samples_per_expert is not None:
                    n = np.asarray(fb.samples_per_expert, dtype=float)
                    if n.shape != (E,) or np.any(n < 0):
                        raise ValueError(
                            f"client {cid!r}: samples_per_expert must be >= 0, shape ({E},)"
                        )
                    if n[trained].max() > 0:
                        share = n[trained] / n[trained].max()
                reward[r, trained] = base * share
                updated[r, trained] = True
        self._fitness = np.where(updated, (1 - a) * self._fitness + a * reward, d * self._fitness)
        for cid in feedback:
            self._participation[self.row(cid)] += 1.0

    def update_usage(self, load: np.ndarray) -> None:
        """``U <- usage_decay * U + load``; ``load`` is ``(E,)``, >= 0 (samples or FLOPs)."""
        x = np.asarray(load, dtype=float)
        if x.shape != (self.num_experts,) or not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError(f'"load" must be finite, >= 0, shape ({self.num_experts},)')
        self._usage = self.usage_decay * self._usage + x
