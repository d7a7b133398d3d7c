"""Networked MoE (NMoE) stage 3 (gates), the assembled model, baselines and evaluation.

The stages, their maths and their sources are documented in :mod:`fedsim.learning.nmoe`
(configuration, stage 1 extractor, stage 2 experts); this module builds on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.learning.metrics import evaluate
from fedsim.learning.models import Expert, MoEClassifier, MoEConfig
from fedsim.learning.nmoe import (
    ClientData,
    ExtractorResult,
    NMoETrainConfig,
    backbone_module,
    classifier_cfg,
    extract_features,
    train_experts,
)
from fedsim.learning.nmoe_gates import RanGate, gate_module
from fedsim.learning.nmoe_steps import FedGateSteps, RollGateSteps, train_extractor
from fedsim.learning.training import TrainConfig, TrainJob, init_state, train_local
from fedsim.rng import RngStreams

__all__ = [
    "NMoEModel",
    "train_rollgate",
    "train_centralised_moe_to_plateau",
    "train_fedgate",
    "build_nmoe",
    "train_nmoe",
    "train_centralised_moe",
    "train_local_classifiers",
    "evaluate_per_client",
    "local_ratio",
]


def train_rollgate(feats: Sequence[torch.Tensor], cfg: MoEConfig, tc: NMoETrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """RollGate: train a linear pseudo-client-ID classifier by rolling it through
    the clients (0..K-1, ``tc.gate_rounds`` passes), ``tc.gate_local_epochs`` of
    plain SGD (``tc.rollgate_lr``) with cross-entropy on the
    labels of :func:`rollgate_labels` (``p = tc.rollgate_p``)
    (:class:`~fedsim.learning.nmoe_steps.RollGateSteps`). Returns the gate state."""
    steps = RollGateSteps(feats, cfg, tc, seed)
    for r in range(tc.gate_rounds):
        for i in range(len(feats)):
            steps.hop(r, i)
    return steps.state()


def train_fedgate(feats: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], experts: Sequence[dict[str, torch.Tensor]], cfg: MoEConfig, tc: NMoETrainConfig, seed: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """FedGate: ``tc.gate_rounds`` FedAvg rounds of the gate (module docstring);
    each round :func:`select_clients` picks ``tc.fedgate_fraction`` of the
    clients, each trains the gate locally (``tc.fedgate_loss``: the noisy
    top-k gate with a load loss, or the dense variant :func:`fedgate_local`),
    the server averages by sample count
    (:class:`~fedsim.learning.nmoe_steps.FedGateSteps`).
    Returns the gate state and the participants of every round."""
    steps = FedGateSteps(feats, ys, experts, cfg, tc, seed)
    for r in range(tc.gate_rounds):
        steps.round(r, steps.select(r))
    return steps.gate_state, steps.history


# ------------------------------------------------------------------------ the assembled model


class NMoEModel(nn.Module):
    """The assembled networked MoE: shared ``backbone`` and ``gate`` (a
    :func:`gate_module` or a :class:`RanGate`), ``experts[i]`` owned by client i, ``top_k``.

    ``forward(x)`` returns the *log* of the mixture class probabilities (so
    ``softmax(forward(x))`` is the mixture and :func:`fedsim.learning.metrics.evaluate`
    applies unchanged). A RanGate draws from ``self.generator`` (reset with
    :meth:`reseed`)."""

    def __init__(self, cfg: MoEConfig, backbone: dict[str, torch.Tensor], gate: nn.Module, experts: Sequence[dict[str, torch.Tensor]], top_k: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone_module(cfg, backbone)
        self.gate = gate
        self.experts = nn.ModuleList()
        for st in experts:
            ex = Expert(cfg)
            ex.load_state_dict(st)
            self.experts.append(ex)
        self.top_k = min(top_k, len(experts))
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def num_experts(self) -> int:
        """Number of experts (= clients)."""
        return len(self.experts)

    def reseed(self, seed: int) -> None:
        """Reset the random gate's generator."""
        self.generator = torch.Generator().manual_seed(int(seed))

    def route(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(topk_idx (N, k), renormalised weights (N, k))`` for features ``h``;
        ``mask`` (bool (E,)) restricts the choice to the allowed experts (e.g. the
        ones whose owners are online)."""
        if isinstance(self.gate, RanGate):
            return self.gate.route(h.shape[0], self.top_k, self.generator, mask)
        logits = self.gate(h)
        k = self.top_k
        if mask is not None:
            logits = logits.masked_fill(~mask.to(torch.bool), float("-inf"))
            k = min(k, int(mask.sum()))
        probs = F.softmax(logits, dim=-1)
        w, idx = probs.topk(k, dim=-1)
        return idx, w / w.sum(-1, keepdim=True).clamp_min(1e-12)

    def expert_proba(self, h: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Mixture ``sum_j w[:, j] softmax(expert_{idx[:, j]}(h))`` (N, num_classes)."""
        out = h.new_zeros(h.shape[0], self.cfg.num_classes)
        for e, ex in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel():
                out = out.index_add(0, rows, F.softmax(ex(h[rows]), dim=-1) * w[rows, slot, None])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixture probabilities (N, num_classes)."""
        h = self.backbone(x)
        idx, w = self.route(h)
        return torch.log(self.expert_proba(h, idx, w).clamp_min(1e-12))


def build_nmoe(cfg: MoEConfig, ext: ExtractorResult, experts: Sequence[dict[str, torch.Tensor]], feats: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], tc: NMoETrainConfig, seed: int) -> tuple[NMoEModel, dict[str, object]]:
    """Stage 3 for ``tc.gate`` on top of a stage-1 extractor and stage-2 experts;
    returns the assembled model and info (``fedgate``: participants per round)."""
    k = len(experts)
    info: dict[str, object] = {}
    if tc.gate == "rangate":
        gate: nn.Module = RanGate(k, tc.rangate_probs)
    elif tc.gate == "rollgate":
        gate = gate_module(cfg, k)
        gate.load_state_dict(train_rollgate(feats, cfg, tc, seed))
    else:
        st, hist = train_fedgate(feats, ys, experts, cfg, tc, seed)
        gate = gate_module(cfg, k)
        gate.load_state_dict(st)
        info["participants"] = hist
    model = NMoEModel(cfg, ext.backbone, gate, experts, tc.top_k, seed=RngStreams(seed).seed_int("nmoe/rangate/eval"))
    model.eval()
    return model, info


def train_nmoe(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *, dataset: str | None = None, extractor: ExtractorResult | None = None) -> tuple[NMoEModel, ExtractorResult, dict[str, object]]:
    """All three stages. Pass a stage-1 ``extractor`` to reuse it (several gates
    on one extractor). Returns ``(model, extractor, info)``."""
    ext = extractor if extractor is not None else train_extractor(clients, cfg, tc, seed, dataset=dataset)
    feats = [extract_features(cfg, ext.backbone, c.x) for c in clients]
    ys = [c.y for c in clients]
    init = ext.head if ext.kind == "fedce" else None
    experts = train_experts(feats, ys, cfg, tc, seed, init=init)
    model, info = build_nmoe(cfg, ext, experts, feats, ys, tc, seed)
    return model, ext, info


# ------------------------------------------------------------------------ baselines


def train_centralised_moe(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *, epochs: int | None = None) -> MoEClassifier:
    """Upper bound: one :class:`MoEClassifier` with ``len(clients)`` experts and
    top-``tc.top_k`` gating (at top-1 the chosen expert is weighted by its gate
    probability, Switch-style, so the task loss trains the gate) trained with
    ``train_local`` on the union of all
    clients' training data for ``epochs`` (default ``tc.rounds * tc.local_epochs``)."""
    rng = RngStreams(seed)
    mcfg = replace(cfg, num_experts=len(clients), top_k=min(tc.top_k, len(clients)), top1_gate_prob=True)
    state = init_state(mcfg, rng.seed_int("nmoe/central/init"))
    x = torch.cat([c.x for c in clients])
    y = torch.cat([c.y for c in clients])
    ep = epochs if epochs is not None else tc.rounds * tc.local_epochs
    train = TrainConfig(lr=tc.lr, momentum=tc.momentum, local_epochs=ep, batch_size=tc.batch_size, expert_loss=False, gate_feedback=False)
    up = train_local(TrainJob(-1, 0, state, mcfg, list(range(len(clients))), x, y, train, rng.seed_int("nmoe/central/train")))
    state = dict(state)
    state.update(up.state)
    model = MoEClassifier(mcfg)
    model.load_state_dict(state)
    model.eval()
    return model


def train_centralised_moe_to_plateau(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *,
                                     val_fraction: float = 0.1, patience: int = 5, max_epochs: int = 60) -> tuple[MoEClassifier, int]:
    """The centralised MoE of :func:`train_centralised_moe` trained to a plateau:
    a seeded ``val_fraction`` of the pooled training data is held out as a
    validation split; training runs one epoch at a time (``train_local``, SGD
    with momentum, the optimiser restarted each epoch) and stops when the
    validation accuracy has not improved for ``patience`` epochs (or at
    ``max_epochs``); the model of the best validation epoch is returned with
    that epoch's number (1-based). Early stopping on a held-out split (Prechelt
    1998, "Early Stopping - But When?").

    Raises:
        ValueError: ``val_fraction`` outside (0, 1), ``patience`` or ``max_epochs`` < 1.
    """
    if not 0.0 < val_fraction < 1.0 or patience < 1 or max_epochs < 1:
        raise ValueError('"val_fraction" must be in (0, 1), "patience" and "max_epochs" >= 1')
    rng = RngStreams(seed)
    mcfg = replace(cfg, num_experts=len(clients), top_k=min(tc.top_k, len(clients)), top1_gate_prob=True)
    state = init_state(mcfg, rng.seed_int("nmoe/central/init"))
    x = torch.cat([c.x for c in clients])
    y = torch.cat([c.y for c in clients])
    perm = torch.randperm(x.shape[0], generator=rng.torch("nmoe/central/validation"))
    n_val = max(1, int(round(val_fraction * x.shape[0])))
    xv, yv, xt, yt = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
    train = TrainConfig(lr=tc.lr, momentum=tc.momentum, local_epochs=1, batch_size=tc.batch_size)
    model = MoEClassifier(mcfg)
    best, best_acc, best_ep = dict(state), -1.0, 0
    for ep in range(1, max_epochs + 1):
        up = train_local(TrainJob(-1, ep, state, mcfg, list(range(len(clients))), xt, yt, train, rng.seed_int(f"nmoe/central/train/{ep}")))
        state = dict(state)
        state.update(up.state)
        model.load_state_dict(state)
        model.eval()
        acc = float(evaluate(model, xv, yv)["accuracy"])
        if acc > best_acc:
            best, best_acc, best_ep = {k: v.clone() for k, v in state.items()}, acc, ep
        elif ep - best_ep >= patience:
            break
    model.load_state_dict(best)
    model.eval()
    return model, best_ep


def train_local_classifiers(clients: Sequence[ClientData], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, *, epochs: int | None = None) -> list[MoEClassifier]:
    """Baseline ``Local``: every client trains its own extractor + classifier
    (single-expert model) on its own data only, ``epochs`` (default
    ``tc.rounds * tc.local_epochs``) epochs; no gate, no communication."""
    rng = RngStreams(seed)
    ccfg = classifier_cfg(cfg)
    ep = epochs if epochs is not None else tc.rounds * tc.local_epochs
    train = TrainConfig(lr=tc.lr, momentum=tc.momentum, local_epochs=ep, batch_size=tc.batch_size, expert_loss=False, gate_feedback=False)
    out = []
    for c in clients:
        st = init_state(ccfg, rng.seed_int(f"nmoe/local/{c.client_id}/init"))
        up = train_local(TrainJob(c.client_id, 0, st, ccfg, [0], c.x, c.y, train, rng.seed_int(f"nmoe/local/{c.client_id}/train")))
        st = dict(st)
        st.update(up.state)
        m = MoEClassifier(ccfg)
        m.load_state_dict(st)
        m.eval()
        out.append(m)
    return out


# ------------------------------------------------------------------------ evaluation


def local_ratio(model: NMoEModel, clients: Sequence[ClientData], *, on: str = "test") -> float:
    """LR: share of the top-k expert slots of each client's samples (``on`` =
    ``"test"`` its own test split, ``"train"`` its training data) served by the
    client's own expert, averaged over clients with samples."""
    vals = []
    with torch.no_grad():
        for i, c in enumerate(clients):
            x = c.x_test if on == "test" else c.x
            if x.shape[0] == 0:
                continue
            idx, _ = model.route(model.backbone(x))
            vals.append(float((idx == i).float().mean()))
    return float(np.mean(vals)) if vals else float("nan")


def evaluate_per_client(models: nn.Module | Sequence[nn.Module], clients: Sequence[ClientData], *, x_global: torch.Tensor | None = None, y_global: torch.Tensor | None = None) -> dict[str, float]:
    """Mean over clients of :func:`~fedsim.learning.metrics.evaluate` (accuracy,
    macro-F1, macro AUC) of client i's model (``models[i]`` or the shared
    ``models``) on its own test split, or, with ``x_global`` / ``y_global``, on
    that global test set (a shared deterministic model is evaluated once)."""
    per = []
    shared = isinstance(models, nn.Module)
    for i, c in enumerate(clients):
        m = models if shared else models[i]  # type: ignore[index]
        if x_global is not None and y_global is not None:
            if shared and per and not isinstance(getattr(m, "gate", None), RanGate):
                per.append(per[0])
                continue
            per.append(evaluate(m, x_global, y_global))
        elif c.y_test.shape[0] > 0:
            per.append(evaluate(m, c.x_test, c.y_test))
    return {k: float(np.nanmean([p[k] for p in per])) for k in ("accuracy", "f1", "auc")}
