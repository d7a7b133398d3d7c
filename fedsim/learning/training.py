"""Local training as a pure function: ``train_local(job) -> Update``.

A :class:`TrainJob` fixes everything the result depends on (global weights at
dispatch, the client's data, its assigned experts, its train config and seed),
so a job can run late, in any process, in a batch with others, and give the
same :class:`Update`. ``train_local`` never mutates ``job.global_state`` and never
touches a global RNG: shuffling and gate noise come from a ``torch.Generator``
seeded with ``job.seed``.

The client model computes only the assigned experts (the gate is masked to
them); the other experts are frozen and absent from the update. With
``train_shared=False`` the backbone and gate are frozen too (BatchNorm layers
of the backbone in eval mode) and the update holds the assigned experts only.

Loss per batch = cross-entropy + ``aux_loss_weight`` x load-balancing loss
+ ``route_target_weight`` x routing-target loss (the unmasked gate's -log
probability of the assigned experts, :class:`~fedsim.learning.models.MoEOutput`)
+ ``fedprox_mu / 2`` x squared distance of the trained parameters to the global
ones (FedProx; 0 disables it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.config.schema import TrainingConfig, defaults_of
from fedsim.learning.accounting import flops_per_sample
from fedsim.learning.models import MoEClassifier, MoEConfig, expert_index

__all__ = [
    "TrainConfig", "TrainJob", "Update", "train_local", "build_model", "init_state", "job_experts", "job_flops",
    "job_expert_losses",
]


#: the schema's ``training`` defaults, the only copy (TrainConfig takes its defaults from them)
_D = defaults_of(TrainingConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings. ``lr`` learning rate, ``local_epochs`` full
    passes over the local data, ``batch_size`` samples per step (last batch may be
    smaller), ``fedprox_mu`` proximal coefficient, ``train_shared`` whether the
    backbone and gate are trained, ``device`` where the computation runs (the
    update's tensors are always returned on the CPU).

    What the update reports beyond the weights (each a pass over the local data
    that a run skips when nothing reads its result, e.g. when the alignment
    reward does not need it): ``expert_loss`` computes ``Update.expert_loss``
    (each assigned expert alone, one forward pass before training; False: None);
    ``gate_feedback`` computes ``Update.mean_gate_prob`` (one eval-mode gate pass
    after training; False: None). Neither changes the trained weights or any
    other field. The optimisation defaults are the scenario schema's ``training``
    section (:class:`fedsim.config.schema.TrainingConfig`); ``device`` is the
    resolved device, not the schema's ``auto``."""

    optimizer: str = _D["optimizer"]
    lr: float = _D["lr"]
    momentum: float = _D["momentum"]
    weight_decay: float = _D["weight_decay"]
    local_epochs: int = _D["local_epochs"]
    batch_size: int = _D["batch_size"]
    fedprox_mu: float = _D["fedprox_mu"]
    train_shared: bool = True
    device: str = "cpu"
    expert_loss: bool = True
    gate_feedback: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError('"optimizer" must be "sgd" or "adam"')
        if self.lr <= 0:
            raise ValueError('"lr" must be > 0')
        if self.local_epochs < 1:
            raise ValueError('"local_epochs" must be >= 1')
        if self.batch_size < 1:
            raise ValueError('"batch_size" must be >= 1')
        if self.fedprox_mu < 0:
            raise ValueError('"fedprox_mu" must be >= 0')


@dataclass
class TrainJob:
    """One client's local training, fixed at dispatch. ``global_state`` is read only."""

    client_id: int | str
    round: int
    global_state: dict[str, torch.Tensor]
    model_config: MoEConfig
    experts: list[int]
    x: torch.Tensor
    y: torch.Tensor
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0


@dataclass
class Update:
    """What a client sends back.

    ``state``: new weights of what was trained (backbone + gate unless
    ``train_shared`` is False, and the assigned experts). ``num_samples``: local
    training samples. ``samples_per_expert`` (E,): samples whose top-k included
    expert e in the final epoch. ``mean_gate_prob`` (E,): mean softmax gate
    probability of every expert over the local data, unmasked, with the trained
    model in eval mode (alignment feedback; None unless ``TrainConfig.gate_feedback``).
    ``loss_first`` / ``loss_last``: mean training loss over the first / last epoch.
    ``flops``: FLOPs of the whole job (training + the feedback passes it ran).
    ``num_steps``: optimiser steps. ``expert_loss`` (E,): see :func:`job_expert_losses`
    (None unless ``TrainConfig.expert_loss``).
    """

    client_id: int | str
    round: int
    experts: list[int]
    state: dict[str, torch.Tensor]
    num_samples: int
    samples_per_expert: np.ndarray
    mean_gate_prob: np.ndarray | None
    loss_first: float
    loss_last: float
    flops: float
    num_steps: int
    expert_loss: np.ndarray | None = None


def _expert_losses(model: MoEClassifier, x: torch.Tensor, y: torch.Tensor, experts: list[int]) -> np.ndarray:
    """Mean cross-entropy (nats) of each expert in ``experts`` alone on ``(x, y)``, shape (E,), NaN elsewhere."""
    out = np.full(model.cfg.num_experts, np.nan)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        tot = np.zeros(len(experts))
        for s in range(0, len(y), 1024):
            h = model.features(x[s : s + 1024])
            for i, e in enumerate(experts):
                tot[i] += float(F.cross_entropy(model.experts[e](h), y[s : s + 1024], reduction="sum"))
    out[experts] = tot / len(y)
    model.train(was_training)
    return out


def empty_model(cfg: MoEConfig) -> MoEClassifier:
    """A model with uninitialised storage: built on the meta device, so that no
    default initialiser draws from the global torch RNG. (Storage comes from ``torch.empty``,
    not ``Module.to_empty``: its ``empty_like`` of a meta tensor imports sympy, 0.6 s of a run's start-up.)"""
    with torch.device("meta"):
        model = MoEClassifier(cfg)
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))


def build_model(
    cfg: MoEConfig, state: dict[str, torch.Tensor] | None = None, *, seed: int = 0
) -> MoEClassifier:
    """A model for ``cfg`` holding a copy of ``state``, or ``init_state(cfg, seed)``
    when ``state`` is None. Never touches the global torch RNG."""
    model = empty_model(cfg)
    model.load_state_dict(state if state is not None else init_state(cfg, seed))
    return model


def init_state(cfg: MoEConfig, seed: int) -> dict[str, torch.Tensor]:
    """Initial global weights for ``cfg``, a pure function of ``seed``.

    Linear / Conv2d weights that feed a ReLU (backbone layers, expert hidden
    layers) are He-uniform, U(-b, b) with ``b = sqrt(6 / fan_in)``, so the signal
    keeps its scale through the depth; the output layers (gate, expert ``fc2``)
    use PyTorch's default bound ``1 / sqrt(fan_in)``. Biases are 0, norm layers
    weight 1, bias 0, running mean 0, variance 1. Draws come from a
    ``torch.Generator`` seeded by ``seed``, module by module in name order; no
    global RNG is used."""
    gen = torch.Generator().manual_seed(int(seed))
    model = empty_model(cfg)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = m.weight[0].numel()
                is_output = name == "gate" or name.endswith(".fc2")
                bound = (1.0 / fan_in) ** 0.5 if is_output else (6.0 / fan_in) ** 0.5
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(-bound, bound, generator=gen))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(
                m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
            ):
                m.reset_parameters()  # ones / zeros, no RNG
                if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                    m.reset_running_stats()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@lru_cache(maxsize=64)
def _job_flops_per_sample(cfg: MoEConfig, k: int, forward_experts: bool = False) -> tuple[float, float]:
    """(train FLOPs per sample with k experts, forward FLOPs per sample of backbone
    + gate, or of backbone + gate + k experts with ``forward_experts``)."""
    model = build_model(cfg)
    return (
        flops_per_sample(model, cfg.input_shape, experts_active=k, train=True),
        flops_per_sample(model, cfg.input_shape, experts_active=k if forward_experts else 0, train=False),
    )


def job_experts(job: TrainJob) -> list[int]:
    """The job's assigned experts, sorted and checked.

    Raises:
        ValueError: an expert outside ``[0, E)``, no expert, or no training sample.
    """
    e_total = job.model_config.num_experts
    experts = sorted(set(int(e) for e in job.experts))
    if any(not 0 <= e < e_total for e in experts):
        raise ValueError(f'"experts" must be in [0, {e_total}), got {job.experts}')
    if not experts:
        raise ValueError('"experts" must name at least one expert (the gate needs one to route to)')
    if int(job.y.shape[0]) == 0:
        raise ValueError(f"client {job.client_id} has no training samples")
    return experts


def job_flops(job: TrainJob, num_experts_assigned: int) -> float:
    """FLOPs of the whole job: training over ``local_epochs``, the feedback pass
    (backbone + gate, when ``gate_feedback``) and the expert-loss pass (backbone + gate
    + the assigned experts, when ``expert_loss``)."""
    cfg, n, tc = job.model_config, int(job.y.shape[0]), job.train
    train_fps, fwd_shared = _job_flops_per_sample(cfg, min(cfg.top_k, num_experts_assigned))
    flops = train_fps * n * tc.local_epochs + (fwd_shared * n if tc.gate_feedback else 0.0)
    if tc.expert_loss:
        flops += _job_flops_per_sample(cfg, num_experts_assigned, forward_experts=True)[1] * n
    return float(flops)


def job_expert_losses(job: TrainJob) -> np.ndarray:
    """``Update.expert_loss`` of ``job``: each assigned expert's mean cross-entropy (nats) alone
    on the job's data with the weights as received, shape (E,), NaN elsewhere (for executors
    that do not run :func:`train_local`)."""
    model = build_model(job.model_config, job.global_state).to(job.train.device)
    return _expert_losses(model, job.x.to(job.train.device), job.y.to(job.train.device), job_experts(job))


def kept_key(key: str, experts: list[int], train_shared: bool) -> bool:
    owner = expert_index(key)
    return (owner is None and train_shared) or (owner is not None and owner in experts)


def _prepared(job: TrainJob, experts: list[int], model: MoEClassifier | None) -> tuple[MoEClassifier, list[torch.Tensor], torch.optim.Optimizer]:
    """The job's model (``model`` reused, else built) holding the global weights, with only
    the job's trainable parameters requiring gradients; those parameters and their optimizer."""
    cfg, tc = job.model_config, job.train
    if model is None:
        model = build_model(cfg, job.global_state).to(tc.device)
    else:
        model.load_state_dict(job.global_state)  # copies into the reused model's storage
    for name, p in model.named_parameters():
        owner = expert_index(name)
        train_it = tc.train_shared if owner is None else owner in experts
        p.requires_grad_(train_it)
        p.grad = None
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return model, params, opt


def _mean_gate_prob(model: MoEClassifier, x: torch.Tensor) -> np.ndarray:
    """``(E,)`` mean routing probability of the (trained) gate over the samples ``x``."""
    if model.cfg.num_experts == 1:
        return np.ones(1)  # a softmax over one expert is exactly 1: no pass needed
    with torch.no_grad():
        probs = [model.route(model.features(x[s : s + 1024]))[0] for s in range(0, int(x.shape[0]), 1024)]
        return torch.cat(probs).mean(0).double().cpu().numpy()


def train_local(job: TrainJob, model: MoEClassifier | None = None) -> Update:
    """Train the job's model locally and return its :class:`Update` (see module docstring).

    ``model``: an :class:`MoEClassifier` of ``job.model_config`` on ``job.train.device``
    to reuse (its weights are overwritten with ``job.global_state``; executors keep
    one per configuration instead of building one per job); None builds one.

    Raises:
        ValueError: see :func:`job_experts`.
    """
    cfg, tc = job.model_config, job.train
    e_total = cfg.num_experts
    experts = job_experts(job)
    n = int(job.y.shape[0])

    model, params, opt = _prepared(job, experts, model)
    mask = torch.zeros(e_total, dtype=torch.bool)
    mask[experts] = True
    anchors = [p.detach().clone() for p in params] if tc.fedprox_mu > 0 else []

    gen = torch.Generator().manual_seed(int(job.seed))
    model.train()
    if not tc.train_shared:
        model.backbone.eval()
    x, y = job.x.to(tc.device), job.y.to(tc.device)
    expert_loss = _expert_losses(model, x, y, experts) if tc.expert_loss else None
    steps, loss_first, loss_last = 0, float("nan"), float("nan")
    samples_per_expert = np.zeros(e_total, dtype=np.int64)
    for epoch in range(tc.local_epochs):
        perm = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        last = epoch == tc.local_epochs - 1
        for start in range(0, n, tc.batch_size):
            idx = perm[start : start + tc.batch_size]
            out = model(x[idx], expert_mask=mask, generator=gen)
            loss = F.cross_entropy(out.logits, y[idx]) + cfg.aux_loss_weight * out.aux_loss
            if out.route_loss is not None:
                loss = loss + cfg.route_target_weight * out.route_loss
            if tc.fedprox_mu > 0:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
                loss = loss + 0.5 * tc.fedprox_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if last:
                hit = torch.zeros(len(idx), e_total, dtype=torch.bool, device=out.topk_idx.device)
                hit.scatter_(1, out.topk_idx, True)
                samples_per_expert += hit.sum(0).cpu().numpy().astype(np.int64)
        if epoch == 0:
            loss_first = total / seen
        loss_last = total / seen

    model.eval()
    mean_gate_prob = _mean_gate_prob(model, x) if tc.gate_feedback else None
    sd = model.state_dict()
    # copies: the model is reused by the next job, the update must keep its own weights
    state = {k: v.detach().to("cpu", copy=True) for k, v in sd.items() if kept_key(k, experts, tc.train_shared)}
    flops = job_flops(job, len(experts))
    return Update(
        client_id=job.client_id,
        round=job.round,
        experts=experts,
        state=state,
        num_samples=n,
        samples_per_expert=samples_per_expert,
        mean_gate_prob=mean_gate_prob,
        loss_first=loss_first,
        loss_last=loss_last,
        flops=float(flops),
        num_steps=steps,
        expert_loss=expert_loss,
    )
