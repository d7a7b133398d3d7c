"""NMoE training one round (one hop) at a time, for the simulated clock.

The stage functions of :mod:`fedsim.learning.nmoe` and
:mod:`fedsim.learning.nmoe_model` train all clients in one call; the
``nmoe`` protocol needs to run each federated round, RollGate hop and FedGate
round when the simulated systems say it happened, with only the clients whose
part arrived. The classes here are those stages cut into steps:

- :class:`FedCESteps` ``round(r, participants)``;
- :class:`FedSCSteps` ``share(r, sharers)`` (the correlation matrices, with the
  Gaussian mechanism and a :class:`PrivacyAccountant`), then
  ``round(r, participants)``;
- :class:`RollGateSteps` ``hop(r, i)``;
- :class:`FedGateSteps` ``select(r)`` then ``round(r, participants)``.

Every random draw is named by client and round (``fedsim.rng`` streams), so
a step's result does not depend on which other clients took part, and running
every step with every client gives exactly the all-clients functions' result
(the stage functions are these loops; a test checks the protocol against them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.learning.aggregation import aggregate
from fedsim.learning.models import MoEClassifier, MoEConfig
from fedsim.learning.nmoe import (
    ClientData,
    ExtractorResult,
    NMoETrainConfig,
    augment,
    classifier_cfg,
    correlation,
    dp_sigma,
    fedavg_states,
    fedsc_loss,
    gaussian_mechanism,
    sc_repr,
    sub_state,
)
from fedsim.learning.nmoe_gates import (
    expert_logp_table,
    fedgate_local,
    gate_module,
    new_gate,
    normalise_gradients_,
    rollgate_labels,
    select_clients,
)
from fedsim.learning.training import TrainConfig, TrainJob, init_state, train_local
from fedsim.rng import RngStreams

__all__ = [
    "PrivacyAccountant", "FedCESteps", "FedSCSteps", "RollGateSteps", "FedGateSteps", "fedgate_local_topk", "expert_logits",
    "train_extractor", "train_extractor_fedce", "train_extractor_fedsc",
]


class PrivacyAccountant:
    """Epsilon spent by repeated Gaussian-mechanism releases of one client.

    Each release of a value with L2 sensitivity ``s`` under Gaussian noise of
    std ``sigma`` has noise multiplier ``z = sigma / s``. Three totals:

    - :meth:`epsilon`: Renyi-DP composition converted to ``(epsilon, delta)``
      (Mironov 2017; Opacus' :class:`opacus.accountants.RDPAccountant`,
      sampling rate 1: every client releases every round), an upper bound;
    - :meth:`epsilon_prv`: the privacy-random-variable accountant (Gopi, Lee
      and Wutschitz 2021; Opacus' :class:`opacus.accountants.PRVAccountant`),
      numerically tight (within its ``eps_error`` of 0.01);
    - :meth:`epsilon_exact`: the closed form for Gaussian releases without
      subsampling (:func:`fedsim.learning.dp.composed_epsilon`, Gaussian DP),
      which the PRV total approaches.

    Each release is ``(epsilon, delta)``-DP exactly when its sigma comes from
    the analytic calibration (:func:`fedsim.learning.dp.calibrate_sigma`); ``T``
    releases together spend far less than ``T * epsilon``.
    """

    def __init__(self) -> None:
        from opacus.accountants import RDPAccountant

        self._acc = RDPAccountant()
        self.multipliers: list[float] = []

    @property
    def releases(self) -> int:
        """Number of releases accounted."""
        return len(self.multipliers)

    def step(self, noise_multiplier: float) -> None:
        """Account one release with noise multiplier ``sigma / sensitivity`` (> 0)."""
        if not noise_multiplier > 0:
            raise ValueError('"noise_multiplier" must be > 0')
        self._acc.step(noise_multiplier=float(noise_multiplier), sample_rate=1.0)
        self.multipliers.append(float(noise_multiplier))

    def epsilon(self, delta: float) -> float:
        """RDP epsilon spent so far at ``delta`` (0 before any release)."""
        if self.releases == 0:
            return 0.0
        return float(self._acc.get_epsilon(delta=float(delta)))

    def epsilon_prv(self, delta: float) -> float:
        """PRV-accountant epsilon spent so far at ``delta`` (0 before any release)."""
        import warnings

        from opacus.accountants import PRVAccountant

        if self.releases == 0:
            return 0.0
        acc = PRVAccountant()
        for z in self.multipliers:
            acc.step(noise_multiplier=z, sample_rate=1.0)
        with warnings.catch_warnings():  # log(1 - q) at q = 1 inside Opacus' PRV of the subsampled Gaussian
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(acc.get_epsilon(delta=float(delta)))

    def epsilon_exact(self, delta: float) -> float:
        """Exact epsilon of the releases so far at ``delta`` (:func:`fedsim.learning.dp.composed_epsilon`)."""
        from fedsim.learning.dp import composed_epsilon

        return composed_epsilon(self.multipliers, delta)


class FedCESteps:
    """Stage 1, ``fedce``, one FedAvg round at a time (:func:`train_extractor_fedce`).

    A round's local training is one :class:`~fedsim.learning.training.TrainJob`
    per participant; with an ``executor`` (:mod:`fedsim.learning.executors`)
    the round's jobs run through it (the ``batched`` one trains them together
    where the model allows: ``mlp`` backbones; a ``cnn`` cohort runs one job
    after another, faster on a CPU), without one by ``train_local`` in turn
    (the reference)."""

    def __init__(self, clients: Sequence, cfg: MoEConfig, tc: object, seed: int, executor: object | None = None) -> None:
        self.clients, self.tc, self.executor = list(clients), tc, executor
        self.rng = RngStreams(seed)
        self.ccfg = classifier_cfg(cfg)
        self.state = init_state(self.ccfg, self.rng.seed_int("nmoe/fedce/init"))
        self.train = TrainConfig(lr=tc.lr, momentum=tc.momentum, local_epochs=tc.local_epochs, batch_size=tc.batch_size,
                                 expert_loss=False, gate_feedback=False)  # only the weights and losses are read
        self.history: list[dict[str, float]] = []

    def round(self, r: int, participants: Sequence[int] | None = None) -> float:
        """Round ``r`` with the clients (indices) in ``participants`` (all if None);
        returns their mean last-batch loss (NaN with none)."""
        idx = range(len(self.clients)) if participants is None else sorted(participants)
        jobs = [TrainJob(c.client_id, r, self.state, self.ccfg, [0], c.x, c.y, self.train, self.rng.seed_int(f"nmoe/fedce/client/{c.client_id}/round/{r}"))
                for c in (self.clients[i] for i in idx)]
        ups = list(self.executor.run(jobs)) if self.executor is not None and jobs else [train_local(j) for j in jobs]  # type: ignore[attr-defined]
        if ups:
            self.state = aggregate(self.state, ups, 1).state
        loss = float(np.mean([u.loss_last for u in ups])) if ups else math.nan
        self.history.append({"round": float(r), "loss": loss})
        return loss

    def result(self) -> object:
        """The :class:`~fedsim.learning.nmoe.ExtractorResult`."""

        return ExtractorResult("fedce", sub_state(self.state, "backbone."), sub_state(self.state, "experts.0."), self.state, self.ccfg, self.history)


class FedSCSteps:
    """Stage 1, ``fedsc``: ``share(r, sharers)`` then ``round(r, participants)``
    (:func:`train_extractor_fedsc`). With
    ``tc.dp_epsilon`` set, every shared matrix goes through the Gaussian
    mechanism and :attr:`accountant` composes the releases of the client that
    released most (each client's data is protected by its own releases only)."""

    def __init__(self, clients: Sequence, cfg: MoEConfig, tc: object, seed: int, *, dataset: str | None = None) -> None:
        self.clients, self.tc, self.dataset = list(clients), tc, dataset
        self.rng = RngStreams(seed)
        self.scfg = classifier_cfg(cfg, num_classes=tc.proj_dim)
        self.state = init_state(self.scfg, self.rng.seed_int("nmoe/fedsc/init"))
        ns = np.array([c.n for c in self.clients], dtype=float)
        self.q = ns / ns.sum()
        self.shared: dict[int, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.accountants = [PrivacyAccountant() for _ in self.clients] if tc.dp_epsilon is not None else []

    def share(self, r: int, sharers: Sequence[int] | None = None) -> None:
        """Each client in ``sharers`` (all if None) computes its (noised)
        correlation matrix under round ``r``'s global model."""

        tc = self.tc
        model = MoEClassifier(self.scfg)
        model.load_state_dict(self.state)
        model.eval()
        self.shared = {}
        idx = range(len(self.clients)) if sharers is None else sorted(sharers)
        with torch.no_grad():
            for i in idx:
                c = self.clients[i]
                gen = self.rng.torch(f"nmoe/fedsc/share/{c.client_id}/round/{r}")
                zs = [sc_repr(model, augment(c.x[s : s + 512], gen, dataset=self.dataset)) for s in range(0, c.n, 512)]
                s_j = correlation(torch.cat(zs))
                if tc.dp_epsilon is not None:
                    sens = 1.0 / c.n
                    sigma = dp_sigma(tc.dp_epsilon, tc.dp_delta, sens)
                    s_j = gaussian_mechanism(s_j, sigma, gen)
                    self.accountants[i].step(sigma / sens)
                self.shared[i] = s_j

    def epsilon_spent(self) -> float:
        """Largest RDP epsilon spent by any client so far (NaN without DP)."""
        if not self.accountants:
            return math.nan
        return max(a.epsilon(self.tc.dp_delta) for a in self.accountants)

    def epsilon_spent_exact(self) -> float:
        """Largest exact epsilon spent by any client (NaN without DP;
        :meth:`PrivacyAccountant.epsilon_exact`, which Opacus' PRV accountant
        matches within its error but not bit for bit across thread settings,
        so a resumed run would not reproduce it). Every release has the same
        multiplier (the sensitivity ``1 / n_j`` scales sigma), so the client
        with most releases spends most."""
        if not self.accountants:
            return math.nan
        return max(self.accountants, key=lambda a: a.releases).epsilon_exact(self.tc.dp_delta)

    def round(self, r: int, participants: Sequence[int] | None = None) -> float:
        """Local training of ``participants`` (all if None) against the matrices
        shared this round, then FedAvg; returns the mean local loss."""

        tc, q = self.tc, self.q
        idx = range(len(self.clients)) if participants is None else sorted(participants)
        states, losses, ns = [], [], []
        for i in idx:
            c = self.clients[i]
            others = [j for j in sorted(self.shared) if j != i]
            r_others = None
            if others:
                w = q[others] / q[others].sum()
                r_others = sum(float(wj) * self.shared[j] for wj, j in zip(w, others))
            local = MoEClassifier(self.scfg)
            local.load_state_dict(self.state)
            local.train()
            params = [p for n_, p in local.named_parameters() if not n_.startswith("gate.")]
            opt = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum)
            gen = self.rng.torch(f"nmoe/fedsc/client/{c.client_id}/round/{r}")
            tot, seen = 0.0, 0
            for _ in range(tc.local_epochs):
                perm = torch.randperm(c.n, generator=gen)
                for s in range(0, c.n, tc.batch_size):
                    b = perm[s : s + tc.batch_size]
                    if len(b) < 2:
                        continue
                    xb = c.x[b]
                    z1 = sc_repr(local, augment(xb, gen, dataset=self.dataset))
                    z2 = sc_repr(local, augment(xb, gen, dataset=self.dataset))
                    loss = fedsc_loss(z1, z2, r_others, float(q[i]))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(b)
                    seen += len(b)
            states.append({k: v.detach().clone() for k, v in local.state_dict().items()})
            losses.append(tot / max(1, seen))
            ns.append(c.n)
        if states:
            self.state = fedavg_states(self.state, states, ns)
        loss = float(np.mean(losses)) if losses else math.nan
        self.history.append({"round": float(r), "loss": loss, "epsilon": self.epsilon_spent()})
        return loss

    def result(self) -> object:
        """The :class:`~fedsim.learning.nmoe.ExtractorResult`."""

        return ExtractorResult("fedsc", sub_state(self.state, "backbone."), sub_state(self.state, "experts.0."), self.state, self.scfg, self.history)


class RollGateSteps:
    """Stage 3, ``rollgate``, one hop at a time (:func:`~fedsim.learning.nmoe_model.train_rollgate`)."""

    def __init__(self, feats: Sequence[torch.Tensor], cfg: MoEConfig, tc: object, seed: int) -> None:

        self.feats, self.tc = list(feats), tc
        self.rng = RngStreams(seed)
        k = len(self.feats)
        self.gate = new_gate(cfg, k, self.rng.seed_int("nmoe/rollgate/init"))
        self.labels = [rollgate_labels(int(h.shape[0]), i, k, tc.rollgate_p, self.rng.torch(f"nmoe/rollgate/labels/{i}")) for i, h in enumerate(self.feats)]

    def hop(self, r: int, i: int) -> None:
        """Client ``i`` trains the gate it received in pass ``r``."""
        tc, h = self.tc, self.feats[i]
        opt = torch.optim.SGD(self.gate.parameters(), lr=tc.rollgate_lr)
        gen = self.rng.torch(f"nmoe/rollgate/{i}/pass/{r}")
        n = int(h.shape[0])
        for _ in range(tc.gate_local_epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, tc.batch_size):
                idx = perm[s : s + tc.batch_size]
                loss = F.cross_entropy(self.gate(h[idx]), self.labels[i][idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def loss(self) -> float:
        """Mean cross-entropy of the gate on every client's pseudo labels."""
        with torch.no_grad():
            vals = [float(F.cross_entropy(self.gate(h), y)) for h, y in zip(self.feats, self.labels) if h.shape[0]]
        return float(np.mean(vals)) if vals else math.nan

    def state(self) -> dict[str, torch.Tensor]:
        """The gate's state."""
        return {k: v.detach().clone() for k, v in self.gate.state_dict().items()}


def expert_logits(h: torch.Tensor, experts: Sequence[dict[str, torch.Tensor]], cfg: MoEConfig) -> torch.Tensor:
    """Every expert's class logits on features ``h``: shape (N, E, num_classes), no gradient."""
    from fedsim.learning.models import Expert

    cols = []
    with torch.no_grad():
        for st in experts:
            ex = Expert(cfg)
            ex.load_state_dict(st)
            cols.append(ex(h))
    return torch.stack(cols, dim=1)


def fedgate_local_topk(gate_state: dict[str, torch.Tensor], h: torch.Tensor, y: torch.Tensor, logits_e: torch.Tensor, cfg: MoEConfig, tc: object, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One client's FedGate training with the noisy top-k gate and a load loss.

    Per batch: gate logits ``H = gate(h) + N(0, tc.gate_noise_std^2)`` (Shazeer
    et al. 2017, "Outrageously Large Neural Networks": noisy top-k gating, here
    with a fixed noise std), keep the top ``k = tc.top_k`` experts of ``H``.
    Task loss: ``k >= 2``: ``-log sum_{e in topk} w_e softmax(z_e)_y`` with
    ``w = softmax`` over the kept noisy logits (Shazeer); ``k = 1``: the Switch
    Transformer's (Fedus et al. 2021) ``CE(softmax(g_e z_e), y)``, the chosen
    expert's logits ``z_e`` scaled by its gate probability ``g_e`` (a
    renormalised top-1 weight is 1 and would give the gate no gradient). Plus
    ``tc.fedgate_load_weight * E * sum_e f_e P_e`` (Switch load-balancing loss:
    ``f_e`` share of top-k slots routed to ``e``, ``P_e`` mean gate probability).
    Plain SGD with unit-norm gradients (``tc.gate_lr``), as
    :func:`~fedsim.learning.nmoe_gates.fedgate_local`. ``logits_e`` (N, E, C):
    the fixed experts' logits (:func:`expert_logits`); ``y`` (N,) labels."""

    e = logits_e.shape[1]
    k = min(tc.top_k, e)
    gate = gate_module(cfg, e)
    gate.load_state_dict(gate_state)
    params = list(gate.parameters())
    n = int(h.shape[0])
    logp_e = F.log_softmax(logits_e, dim=-1)
    for _ in range(tc.gate_local_epochs):
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, tc.batch_size):
            idx = perm[s : s + tc.batch_size]
            logits = gate(h[idx])
            noisy = logits + tc.gate_noise_std * torch.randn(logits.shape, generator=generator) if tc.gate_noise_std > 0 else logits
            top_v, top_i = noisy.topk(k, dim=-1)
            if k == 1:
                g = F.softmax(noisy, dim=-1).gather(1, top_i)  # (B, 1)
                z = logits_e[idx].gather(1, top_i[:, :, None].expand(-1, -1, logits_e.shape[2])).squeeze(1)  # (B, C)
                task = F.cross_entropy(g * z, y[idx])
            else:
                lp = logp_e[idx].gather(1, top_i[:, :, None].expand(-1, -1, logits_e.shape[2]))  # (B, k, C)
                lp_y = lp.gather(2, y[idx][:, None, None].expand(-1, k, 1)).squeeze(2)  # (B, k)
                task = -torch.logsumexp(F.log_softmax(top_v, dim=-1) + lp_y, dim=-1).mean()
            probs = F.softmax(logits, dim=-1)
            f = torch.zeros(e).index_add(0, top_i.reshape(-1), torch.ones(top_i.numel())) / max(1, top_i.numel())
            loss = task + tc.fedgate_load_weight * e * (f * probs.mean(0)).sum()
            for p in params:
                p.grad = None
            loss.backward()
            normalise_gradients_(params)
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= tc.gate_lr * p.grad
    return {k_: v.detach().clone() for k_, v in gate.state_dict().items()}


class FedGateSteps:
    """Stage 3, ``fedgate``: ``select(r)`` the round's clients, then
    ``round(r, participants)`` (:func:`~fedsim.learning.nmoe_model.train_fedgate`).
    ``tc.fedgate_loss``: ``"topk_noisy"`` (:func:`fedgate_local_topk`) or
    ``"dense"`` (:func:`~fedsim.learning.nmoe_gates.fedgate_local`)."""

    def __init__(self, feats: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], experts: Sequence[dict[str, torch.Tensor]], cfg: MoEConfig, tc: object, seed: int) -> None:

        self.feats, self.cfg, self.tc = list(feats), cfg, tc
        self.rng = RngStreams(seed)
        k = len(self.feats)
        self.gate_state = {k_: v.detach().clone() for k_, v in new_gate(cfg, k, self.rng.seed_int("nmoe/fedgate/init")).state_dict().items()}
        self.ys = list(ys)
        if tc.fedgate_loss == "dense":
            self.logps = [expert_logp_table(h, y, experts, cfg) for h, y in zip(feats, ys)]
        else:
            self.logits = [expert_logits(h, experts, cfg) for h in feats]
            self.logps = [F.log_softmax(z, dim=-1).gather(2, y[:, None, None].expand(-1, z.shape[1], 1)).squeeze(2) for z, y in zip(self.logits, ys)]
        self.sel_rng = self.rng.fresh_numpy("nmoe/fedgate/select")
        self.history: list[list[int]] = []

    def select(self, r: int) -> list[int]:
        """The clients (indices) chosen for round ``r`` (call once per round, in order)."""

        chosen = select_clients(len(self.feats), self.tc.fedgate_fraction, self.sel_rng)
        self.history.append(chosen)
        return chosen

    def round(self, r: int, participants: Sequence[int]) -> float:
        """Local gate training of ``participants``, FedAvg by sample count;
        returns the MoE likelihood loss of the new gate over all clients."""

        tc = self.tc
        states = []
        for i in sorted(participants):
            gen = self.rng.torch(f"nmoe/fedgate/{i}/round/{r}")
            if tc.fedgate_loss == "dense":
                states.append(fedgate_local(self.gate_state, self.feats[i], self.logps[i], self.cfg, tc, gen)[0])
            else:
                states.append(fedgate_local_topk(self.gate_state, self.feats[i], self.ys[i], self.logits[i], self.cfg, tc, gen))
        if states:
            self.gate_state = fedavg_states(self.gate_state, states, [int(self.feats[i].shape[0]) for i in sorted(participants)])
        return self.loss()

    def loss(self) -> float:
        """``-log sum_e softmax(gate(h))_e p_e(y|h)`` averaged over all clients' samples."""

        gate = gate_module(self.cfg, len(self.feats))
        gate.load_state_dict(self.gate_state)
        with torch.no_grad():
            vals = [float(-torch.logsumexp(F.log_softmax(gate(h), -1) + lp, -1).mean()) for h, lp in zip(self.feats, self.logps) if h.shape[0]]
        return float(np.mean(vals)) if vals else math.nan


# ------------------------------------------------------------------------ stage 1, every client every round


def train_extractor_fedce(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int) -> ExtractorResult:
    """Stage 1, ``fedce``: FedAvg (all clients, ``tc.rounds`` rounds) of the
    single-expert classifier trained with cross-entropy by ``train_local``
    (:class:`~fedsim.learning.nmoe_steps.FedCESteps`, every client every round)."""
    steps = FedCESteps(clients, cfg, tc, seed)
    for r in range(tc.rounds):
        steps.round(r)
    return steps.result()


def train_extractor_fedsc(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *, dataset: str | None = None) -> ExtractorResult:
    """Stage 1, ``fedsc``: federated spectral contrastive learning with shared,
    DP-noised correlation matrices (module docstring). ``tc.rounds`` rounds,
    every client every round: each shares its matrix under the round's global
    model, then trains locally with SGD on :func:`fedsc_loss` over two
    :func:`augment` views per batch; FedAvg of extractor + projection head
    (:class:`~fedsim.learning.nmoe_steps.FedSCSteps`). ``history`` rows hold
    the round's loss and the ``epsilon`` spent so far (NaN without DP)."""
    steps = FedSCSteps(clients, cfg, tc, seed, dataset=dataset)
    for r in range(tc.rounds):
        steps.share(r)
        steps.round(r)
    return steps.result()


def train_extractor(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *, dataset: str | None = None) -> ExtractorResult:
    """Stage 1 by ``tc.extractor``."""
    if tc.extractor == "fedce":
        return train_extractor_fedce(clients, cfg, tc, seed)
    return train_extractor_fedsc(clients, cfg, tc, seed, dataset=dataset)
