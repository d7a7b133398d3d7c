"""Networked MoE (NMoE) training stages as pure functions (no SimPy).

This module holds the configuration and stages 1-2 (extractor, experts);
:mod:`fedsim.learning.nmoe_model` holds stage 3 (gates), the assembled
:class:`~fedsim.learning.nmoe_model.NMoEModel`, the baselines and the evaluation.

Every client ``i`` of ``K`` holds three parts: a feature extractor and a gate
that are *shared* (same architecture and weights on every client) and its own
*expert*. The parts are the building blocks of
:class:`~fedsim.learning.models.MoEClassifier`: the extractor is its
``backbone`` (input -> ``feature_dim`` features, ReLU), an expert is its
``Expert`` MLP head (``feature_dim -> expert_hidden -> num_classes``) and a
learned gate is a parameter-free LayerNorm of the features followed by a
linear layer ``feature_dim -> K`` (one logit per client's expert;
:func:`gate_module`). Inference: ``h = extractor(x)``; the gate picks the top-k experts with
renormalised weights ``w``; the answer is the mixture of the chosen experts'
class probabilities ``p(y|x) = sum_{e in topk} w_e softmax(expert_e(h))``.

Stages (every function is a pure function of its inputs and ``seed``; every
random draw comes from :class:`~fedsim.rng.RngStreams` named streams):

1. Feature extractor by federated learning (``rounds`` FedAvg rounds, all
   clients every round, weights by local sample count, via
   :func:`fedsim.learning.aggregation.aggregate`):

   - ``fedce`` (:func:`~fedsim.learning.nmoe_steps.train_extractor_fedce`): FedAvg of a full classifier
     (extractor + predictor head) trained with cross-entropy through
     :func:`fedsim.learning.training.train_local`; then split into extractor
     and predictor.
   - ``fedsc`` (:func:`~fedsim.learning.nmoe_steps.train_extractor_fedsc`): federated spectral contrastive
     learning (FedSC). The extractor is followed by a projection head
     ``g`` (an ``Expert``-shaped MLP to ``proj_dim``) and the representation of
     an input is ``z = g(h) / ||g(h)||`` (unit L2 norm). Definitions, for a
     batch of ``n`` samples with two augmented views ``Z1, Z2`` (``n x d``):

       ``R_i+ = Z1^T Z2 / n`` (cross-correlation of the two views),
       ``R_i  = (Z1^T Z1 + Z2^T Z2) / (2 n)`` (the client's own correlation),
       ``R_-i = sum_{j != i} q_j S_j / sum_{j != i} q_j`` where ``S_j`` is the
       correlation matrix client ``j`` shared at the start of the round
       (``Z^T Z / n_j`` over its whole local training set, one augmented
       view, with Gaussian DP noise), ``q_j = n_j / sum_l n_l`` its data share.

     Local objective (:func:`fedsc_loss`):
     ``L_i = -Tr(R_i+) + q_i / 2 ||R_i||_F^2 + (1 - q_i) Tr(R_i R_-i)``,
     which is ``1 / (2 q_i)`` times client i's part of the global spectral
     contrastive loss ``-2 Tr(R+) + ||sum_j q_j R_j||_F^2`` (HaoChen et al.).

     Differential privacy (:func:`gaussian_mechanism`): each shared ``S_j`` is
     released with symmetric Gaussian noise of per-entry standard deviation
     ``sigma`` calibrated by the analytic Gaussian mechanism (:func:`dp_sigma`,
     exact ``(epsilon, delta)`` per release at any epsilon). Since
     ``||z|| = 1``, one sample contributes ``z z^T / n_j`` with Frobenius norm
     ``1 / n_j``, so the L2 sensitivity used is ``1 / n_j`` (add/remove one
     sample's contribution, ``n_j`` public). The guarantee is per release
     (per round); composition over rounds is not accounted here.

2. Experts (:func:`train_experts`): every client trains its own expert on its
   local data, extractor frozen (features are computed once). ``fedce`` starts
   every expert from the stage-1 predictor; ``fedsc`` from a seeded random init.

3. Gate:

   - ``rangate`` (:class:`RanGate`): ignores the input; draws ``k`` distinct
     experts from a given distribution ``probs`` (uniform by default),
     weights ``1/k``.
   - ``rollgate`` (:func:`train_rollgate`): a classifier of pseudo client IDs.
     Client i labels exactly ``round(p n_i)`` of its samples with its own ID
     and spreads the other ``n_i - round(p n_i)`` uniformly over the other
     ``K - 1`` IDs (counts differ by at most one; :func:`rollgate_labels`). The
     gate visits the clients one after another (0, 1, ..., K-1, repeated
     ``gate_rounds`` times), each training it for ``gate_local_epochs`` with
     cross-entropy before passing it on.
   - ``fedgate`` (:func:`train_fedgate`): FedAvg of the gate inside the full
     MoE, extractor and experts fixed. Each round a random
     ``max(1, round(fraction * K))`` clients (without replacement) train the
     gate locally on the MoE likelihood loss
     ``-log sum_e g_e(h) softmax(expert_e(h))_y`` (dense gate in training,
     top-k at inference) with *normalised gradients*: every step the gate's
     whole gradient is rescaled to unit L2 norm (:func:`normalise_gradients_`),
     so each step moves the gate by exactly ``gate_lr`` (plain SGD) and clients
     with large losses do not dominate the average.

Baselines (:func:`train_centralised_moe`, :func:`train_local_classifiers`,
FedAvg = the stage-1 ``fedce`` classifier): see their docstrings.

Evaluation (:func:`evaluate_per_client`, :func:`local_ratio`): accuracy,
macro-F1 and macro one-vs-rest AUC from :func:`fedsim.learning.metrics.evaluate`.
LR (local processing ratio) = the share of the top-k expert slots of a
client's test samples that its own expert serves, averaged over clients: about
``1/K`` for a uniform random gate and at most ``1/k`` (``k = top_k``), since the
own expert fills at most one of a sample's ``k`` slots.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.learning.aggregation import aggregate
from fedsim.learning.datasets import Dataset
from fedsim.learning.models import Expert, MoEClassifier, MoEConfig
from fedsim.learning.partition import ClientSplit
from fedsim.learning.training import Update, init_state
from fedsim.rng import RngStreams

__all__ = [
    "NMoETrainConfig",
    "ClientData",
    "ExtractorResult",
    "client_data",
    "augment",
    "colour_jitter",
    "correlation",
    "cross_correlation",
    "fedsc_loss",
    "dp_sigma",
    "gaussian_mechanism",
    "classifier_cfg",
    "fedavg_states",
    "sub_state",
    "sc_repr",
    "backbone_module",
    "extract_features",
    "train_experts",
    "EXTRACTORS",
    "GATES",
    "FEDGATE_LOSSES",
]

EXTRACTORS = ("fedce", "fedsc")
GATES = ("rangate", "rollgate", "fedgate")
FEDGATE_LOSSES = ("topk_noisy", "dense")


@dataclass(frozen=True)
class NMoETrainConfig:
    """Settings of the three NMoE stages.

    ``extractor`` ``"fedce"`` | ``"fedsc"``; ``gate`` ``"rangate"`` | ``"rollgate"`` |
    ``"fedgate"``; ``top_k`` experts per sample at inference.
    Stage 1: ``rounds`` FedAvg rounds of ``local_epochs`` epochs, SGD with
    ``lr`` / ``momentum``, ``batch_size``; FedSC: ``proj_dim`` representation
    size, ``dp_epsilon`` (None = no noise) and ``dp_delta``.
    Stage 2: ``expert_epochs`` epochs on frozen
    features (Adam, ``expert_lr``). Stage 3: ``gate_rounds`` (rollgate passes over all clients /
    fedgate rounds), ``gate_local_epochs``, ``gate_lr`` (fedgate, normalised SGD),
    ``rollgate_lr`` (plain SGD: small steps keep the last-visited client from
    dominating), ``rollgate_p``,
    ``fedgate_fraction``, ``rangate_probs`` (None = uniform); FedGate's local
    loss ``fedgate_loss``: ``"topk_noisy"`` (noisy top-k gate, logit noise std
    ``gate_noise_std``, plus ``fedgate_load_weight`` times the Switch
    load-balancing loss) or ``"dense"`` (the dense mixture likelihood).
    """

    extractor: str = "fedce"
    gate: str = "fedgate"
    top_k: int = 1
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    proj_dim: int = 32
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    expert_epochs: int = 50
    expert_lr: float = 0.01
    gate_rounds: int = 50
    gate_local_epochs: int = 1
    gate_lr: float = 0.3
    rollgate_lr: float = 0.01
    rollgate_p: float = 0.7
    fedgate_fraction: float = 0.7
    rangate_probs: tuple[float, ...] | None = None
    fedgate_loss: str = "topk_noisy"
    gate_noise_std: float = 1.0
    fedgate_load_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ValueError(f'"extractor" must be one of {", ".join(EXTRACTORS)}')
        if self.gate not in GATES:
            raise ValueError(f'"gate" must be one of {", ".join(GATES)}')
        if self.top_k < 1:
            raise ValueError('"top_k" must be >= 1')
        if not 0.0 < self.rollgate_p < 1.0:
            raise ValueError('"rollgate_p" must be in (0, 1)')
        if not 0.0 < self.fedgate_fraction <= 1.0:
            raise ValueError('"fedgate_fraction" must be in (0, 1]')
        if self.dp_epsilon is not None and self.dp_epsilon <= 0:
            raise ValueError('"dp_epsilon" must be > 0')
        if not 0.0 < self.dp_delta < 1.0:
            raise ValueError('"dp_delta" must be in (0, 1)')
        if self.fedgate_loss not in FEDGATE_LOSSES:
            raise ValueError(f'"fedgate_loss" must be one of {", ".join(FEDGATE_LOSSES)}')
        if self.gate_noise_std < 0 or self.fedgate_load_weight < 0:
            raise ValueError('"gate_noise_std" and "fedgate_load_weight" must be >= 0')


@dataclass
class ClientData:
    """One client's tensors: local train ``(x, y)`` and own test ``(x_test, y_test)``."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n(self) -> int:
        """Number of local training samples."""
        return int(self.y.shape[0])


def client_data(ds: Dataset, splits: Sequence[ClientSplit]) -> list[ClientData]:
    """Tensors of each client's train / test split of the dataset's training pool."""
    out = []
    for s in splits:
        tr, te = torch.as_tensor(s.train_idx), torch.as_tensor(s.test_idx)
        out.append(ClientData(s.client_id, ds.x_train[tr], ds.y_train[tr], ds.x_train[te], ds.y_train[te]))
    return out


# ------------------------------------------------------------------------ augmentation


def augment(x: torch.Tensor, generator: torch.Generator, *, dataset: str | None = None) -> torch.Tensor:
    """One random augmented view of the batch ``x`` (new tensor; ``x`` untouched).

    Images ``(N, C, H, W)``: ``cifar10`` (or any 3-channel image): random crop
    with 4-pixel zero padding + horizontal flip with probability 1/2, then
    :func:`colour_jitter` (SimCLR's colour distortion, the augmentation
    contrastive learning needs most: Chen et al. 2020, Sec. 3); one-channel
    digits / MNIST: random shift of up to ``max(1, H // 8)`` pixels (zero fill)
    + Gaussian noise of std 0.1. Vectors ``(N, D)``: Gaussian noise of std 0.1.
    All randomness comes from ``generator``.
    """
    if x.dim() == 2:
        return x + 0.1 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    n, c, h, w = x.shape
    colour = (dataset == "cifar10") or (dataset is None and c == 3)
    pad = 4 if colour else max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None, :]  # (N, H)
    cols = dx[:, None] + torch.arange(w)[None, :]  # (N, W)
    nn_idx = torch.arange(n)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[nn_idx, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2).contiguous()
    if colour:
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
        if c == 3:
            out = colour_jitter(out, generator)
    else:
        out = out + 0.1 * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4, p: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion of RGB images ``x`` ``(N, 3, H, W)`` (new tensor):
    with probability ``p`` per image, brightness, contrast and saturation
    factors drawn uniformly from ``[1 - strength, 1 + strength]`` (as
    torchvision's ``ColorJitter(0.4, 0.4, 0.4)``, in this fixed order, no hue
    shift), then with probability ``p_gray`` grayscale (ITU-R BT.601 luma)
    (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", Appendix A). The images are the dataset's normalised
    ones, so brightness scales around the pool's mean colour rather than
    black. Every draw comes from ``generator`` (a fixed number per call)."""
    n = x.shape[0]
    on = (torch.rand(n, generator=generator) < p).to(x.dtype)
    f = 1.0 + on[:, None] * strength * (2.0 * torch.rand((n, 3), generator=generator, dtype=x.dtype) - 1.0)
    gray_on = torch.rand(n, generator=generator) < p_gray
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)

    def gray(t: torch.Tensor) -> torch.Tensor:
        return (t * luma).sum(1, keepdim=True)

    out = x * f[:, 0].view(n, 1, 1, 1)
    fc = f[:, 1].view(n, 1, 1, 1)
    out = fc * out + (1.0 - fc) * gray(out).mean((2, 3), keepdim=True)
    fs = f[:, 2].view(n, 1, 1, 1)
    out = fs * out + (1.0 - fs) * gray(out)
    return torch.where(gray_on.view(n, 1, 1, 1), gray(out).expand_as(out), out)


# ------------------------------------------------------------------------ FedSC


def correlation(z: torch.Tensor) -> torch.Tensor:
    """Correlation matrix ``Z^T Z / n`` (d x d) of representations ``z`` (n x d)."""
    return z.T @ z / z.shape[0]


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Cross-correlation ``Z1^T Z2 / n`` (d x d) of two views' representations."""
    return z1.T @ z2 / z1.shape[0]


def fedsc_loss(z1: torch.Tensor, z2: torch.Tensor, r_others: torch.Tensor | None, q: float) -> torch.Tensor:
    """FedSC local objective of one client on one batch (module docstring):
    ``-Tr(R+) + q/2 ||R||_F^2 + (1 - q) Tr(R R_-i)`` with ``R+ = Z1^T Z2 / n``,
    ``R = (Z1^T Z1 + Z2^T Z2) / (2n)`` and ``R_-i = r_others`` (treated as a
    constant; ``None`` means no other clients, the term is dropped).
    ``q`` in (0, 1] is the client's data share. Returns a scalar tensor."""
    r_plus = cross_correlation(z1, z2)
    r_own = 0.5 * (correlation(z1) + correlation(z2))
    loss = -torch.trace(r_plus) + 0.5 * q * (r_own**2).sum()
    if r_others is not None and q < 1.0:
        loss = loss + (1.0 - q) * torch.trace(r_own @ r_others.detach())
    return loss


def dp_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Gaussian-mechanism noise std for ``(epsilon, delta)``-DP per release at L2
    ``sensitivity``: the analytic Gaussian mechanism
    (:func:`fedsim.learning.dp.calibrate_sigma`, Balle and Wang 2018), valid at
    any epsilon (the classical ``sqrt(2 ln(1.25/delta)) / epsilon`` holds only
    below 1).

    Raises:
        ValueError: ``epsilon <= 0``, ``delta`` outside (0, 1) or ``sensitivity < 0``.
    """
    from fedsim.learning.dp import calibrate_sigma

    if epsilon <= 0 or not 0 < delta < 1 or sensitivity < 0:
        raise ValueError('"epsilon" must be > 0, "delta" in (0, 1), "sensitivity" >= 0')
    return calibrate_sigma(epsilon, delta, sensitivity)


def gaussian_mechanism(r: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``r`` (symmetric d x d) plus symmetric Gaussian noise: the upper triangle
    (diagonal included) is drawn i.i.d. ``N(0, sigma^2)`` and mirrored, so every
    entry's noise has standard deviation ``sigma`` and the result stays symmetric."""
    if sigma <= 0:
        return r.clone()
    d = r.shape[0]
    noise = sigma * torch.randn((d, d), generator=generator, dtype=r.dtype)
    upper = torch.triu(noise)
    return r + upper + torch.triu(noise, diagonal=1).T


# ------------------------------------------------------------------------ helpers


def classifier_cfg(cfg: MoEConfig, num_classes: int | None = None) -> MoEConfig:
    """Single-expert config: extractor + one head (the predictor / projection)."""
    return replace(cfg, num_experts=1, top_k=1, num_classes=num_classes or cfg.num_classes, gate_noise_std=0.0)


def _as_update(cid: int, state: dict[str, torch.Tensor], n: int, num_experts: int = 1) -> Update:
    """Wrap a trained state as an :class:`Update` so :func:`aggregate` can FedAvg it."""
    return Update(
        client_id=cid, round=0, experts=list(range(num_experts)), state=state, num_samples=n,
        samples_per_expert=np.full(num_experts, n, dtype=np.int64), mean_gate_prob=np.full(num_experts, 1.0 / num_experts),
        loss_first=0.0, loss_last=0.0, flops=0.0, num_steps=0,
    )


def fedavg_states(global_state: dict[str, torch.Tensor], states: Sequence[dict[str, torch.Tensor]], ns: Sequence[int], num_experts: int = 1) -> dict[str, torch.Tensor]:
    """FedAvg (weights by sample count) through :func:`fedsim.learning.aggregation.aggregate`."""
    ups = [_as_update(i, s, n, num_experts) for i, (s, n) in enumerate(zip(states, ns))]
    return aggregate(global_state, ups, num_experts).state


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` with the prefix stripped (copied)."""
    return {k[len(prefix):]: v.detach().clone() for k, v in state.items() if k.startswith(prefix)}


@dataclass
class ExtractorResult:
    """Stage-1 output. ``backbone``: extractor state (``MoEClassifier.backbone``
    keys without prefix). ``head``: predictor (fedce) or projection (fedsc)
    state (``Expert`` keys). ``full_state``: the single-expert classifier state
    (fedce: the FedAvg baseline model). ``history``: per-round info."""

    kind: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    full_state: dict[str, torch.Tensor]
    config: MoEConfig
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------ stage 1


def sc_repr(model: MoEClassifier, x: torch.Tensor) -> torch.Tensor:
    """Unit-norm representation ``g(h) / ||g(h)||`` of a single-head model."""
    p = model.experts[0](model.backbone(x))
    return F.normalize(p, dim=-1)


def backbone_module(cfg: MoEConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """The single-expert classifier's extractor with ``state`` loaded, in eval mode."""
    m = MoEClassifier(classifier_cfg(cfg)).backbone
    m.load_state_dict(state)
    m.eval()
    return m


def extract_features(cfg: MoEConfig, backbone_state: dict[str, torch.Tensor], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Extractor features (N, feature_dim) of ``x``, eval mode, no gradient."""
    m = backbone_module(cfg, backbone_state)
    with torch.no_grad():
        return torch.cat([m(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]) if x.shape[0] else torch.empty(0, cfg.feature_dim)


# ------------------------------------------------------------------------ stage 2


def train_experts(feats: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], cfg: MoEConfig, tc: NMoETrainConfig, seed: int, init: dict[str, torch.Tensor] | None = None, *, trained: Collection[int] | None = None) -> list[dict[str, torch.Tensor]]:
    """Stage 2: client i trains its own expert on ``(feats[i], ys[i])`` (frozen
    extractor features) for ``tc.expert_epochs`` epochs of SGD with momentum and
    cross-entropy (Adam, ``tc.expert_lr``). Every expert starts from ``init`` (``Expert`` keys) if given,
    else from a seeded uniform init. Only the clients in ``trained`` (all if
    None) train; the others' experts stay at their initial state (a client that
    dropped out of stage 2). Returns one ``Expert`` state per client."""
    rng = RngStreams(seed)
    out = []
    for i, (h, y) in enumerate(zip(feats, ys)):
        ex = Expert(cfg)
        if init is not None:
            ex.load_state_dict(init)
        else:
            ex.load_state_dict(sub_state(init_state(replace(classifier_cfg(cfg)), rng.seed_int(f"nmoe/expert/{i}/init")), "experts.0."))
        opt = torch.optim.Adam(ex.parameters(), lr=tc.expert_lr)
        gen = rng.torch(f"nmoe/expert/{i}/train")
        n = int(y.shape[0])
        for _ in range(tc.expert_epochs if trained is None or i in trained else 0):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, tc.batch_size):
                idx = perm[s : s + tc.batch_size]
                loss = F.cross_entropy(ex(h[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        out.append({k: v.detach().clone() for k, v in ex.state_dict().items()})
    return out
