"""The Mixture-of-Experts classifier, in one readable file.

    x --backbone--> features (N, feature_dim) --gate--> softmax (N, E) --top-k-->
    output = sum over the top-k experts of (renormalised gate weight) * expert(features)

Parameter names say who owns them, so federated code can slice a state dict:
``backbone.*`` (feature extractor), ``gate.*`` (router) and ``experts.{e}.*``
(expert e). :func:`expert_keys` and :func:`shared_keys` do the slicing.

``forward(x, expert_mask)`` takes an optional bool ``(E,)`` mask: the gate is
restricted to the masked experts (others get probability 0) and only those
experts are ever computed, which is what a client that holds a subset of the
experts can run. The load-balancing loss is the Switch Transformer's
``E' * sum_e f_e * P_e`` over the E' allowed experts, with ``f_e`` the share of
top-k assignments routed to e and ``P_e`` the mean gate probability of e
(1.0 when perfectly balanced).

Stem / expert split: the backbone is the shared *stem* (``widths`` may be empty:
then the MLP stem is one projection), and each expert is an MLP head with
``expert_layers`` hidden layers of ``expert_hidden`` units, so widening and
deepening the experts against a thin stem puts most parameters in the experts
(:func:`parameter_split` reports the shares).

Gate weights (``gate_weights``): ``"renormalised"`` combines the top-k experts
with their probabilities renormalised over the top-k (and, with an expert mask,
over the allowed experts): with ``top_k=1`` the weight is always 1 and the
gate gets no gradient from the task loss. ``"softmax"`` (Switch Transformer,
Fedus et al. 2022, JMLR 23(120), Sec. 2.1) takes the softmax over *all* E
experts, picks the top-k among the allowed ones and weights each chosen
expert's output by its *unnormalised* probability; the gradient of the task
loss then reaches every expert's gate logit through the softmax normaliser, so
a client holding experts {a, b} teaches the gate that its kind of data belongs
to a or b rather than to any of the other E - 2 experts.

Gate noise (``gate_noise_std``, added to the gate logits in training mode) is
drawn only from a ``torch.Generator`` passed to ``forward``; without one there
is no noise, so nothing ever touches the global torch RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.config.schema import ModelConfig, defaults_of

__all__ = [
    "MoEConfig",
    "MoEOutput",
    "MoEClassifier",
    "ResNet18",
    "expert_keys",
    "shared_keys",
    "expert_index",
    "parameter_split",
    "GATE_WEIGHTS",
]

GATE_WEIGHTS = ("renormalised", "softmax")
#: the schema's ``model`` defaults, the only copy (MoEConfig takes its defaults from them)
_D = defaults_of(ModelConfig)


@dataclass(frozen=True)
class MoEConfig:
    """Architecture of an :class:`MoEClassifier`.

    ``input_shape``: one sample's shape, ``(C, H, W)`` or ``(D,)``.
    ``backbone``: ``"mlp"`` (flatten, hidden layers ``widths``), ``"cnn"`` (one
    3x3 conv + ReLU + 2x2 max-pool per entry of ``widths`` channels) or
    ``"resnet18"`` (CIFAR ResNet-18, ``widths`` ignored). Every backbone ends in a
    linear projection to ``feature_dim`` followed by ReLU.
    ``num_experts`` E, ``top_k`` experts per sample, ``expert_hidden`` the hidden
    width of each expert MLP head (0: a linear expert head, ``fc2`` only),
    ``expert_layers`` its number of hidden layers (>= 1; ignored for a linear
    head). ``feature_layer`` False drops the mlp backbone's final projection, so
    the last hidden layer is the feature (then ``feature_dim`` must equal
    ``widths[-1]``): with one linear expert, an MLP 784-128-10 is exactly
    ``MoEConfig((784,), 10, widths=(128,), feature_dim=128, num_experts=1,
    expert_hidden=0, feature_layer=False)`` (plus a 128 -> 1 gate).
    ``stem_projection`` False (MLP, no hidden widths): no shared layer at all,
    the gate and the experts read the flattened input (``feature_dim`` must
    equal its size). ``gate_weights``: ``"renormalised"`` or ``"softmax"`` (see
    the module docstring). ``aux_loss_weight`` and ``route_target_weight``
    are used by training (see :class:`MoEOutput`). Defaults are the scenario
    schema's ``model`` section (:class:`fedsim.config.schema.ModelConfig`; ``widths``:
    its one hidden layer of ``hidden`` units).
    ``top1_gate_prob``: at ``top_k = 1`` weight the chosen expert by its gate
    probability instead of the renormalised 1 (Switch Transformer, Fedus et
    al. 2021), so the task loss reaches the gate; otherwise only the auxiliary
    loss trains a top-1 gate (``gate_weights="softmax"`` does this for any k,
    with the probability taken over all experts even under a mask).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    backbone: str = _D["backbone"]
    widths: tuple[int, ...] = (_D["hidden"],)  # the schema's mlp stem: one hidden layer of `hidden` units
    feature_dim: int = _D["feature_dim"]
    num_experts: int = _D["num_experts"]
    top_k: int = _D["top_k"]
    expert_hidden: int = _D["expert_hidden"]
    gate_noise_std: float = _D["gate_noise_std"]
    aux_loss_weight: float = _D["aux_loss_weight"]
    feature_layer: bool = _D["feature_layer"]
    expert_layers: int = _D["expert_layers"]
    gate_weights: str = _D["gate_weights"]
    stem_projection: bool = _D["stem_projection"]
    top1_gate_prob: bool = False
    route_target_weight: float = _D["route_target_weight"]

    def __post_init__(self) -> None:
        if not self.feature_layer and (self.backbone != "mlp" or self.feature_dim != self.widths[-1]):
            raise ValueError('"feature_layer" False needs backbone "mlp" and feature_dim == widths[-1]')
        if self.expert_hidden < 0:
            raise ValueError('"expert_hidden" must be >= 0 (0: a linear expert head)')
        if not self.stem_projection and (
            self.backbone != "mlp" or self.widths or self.feature_dim != math.prod(self.input_shape)
        ):
            raise ValueError(
                '"stem_projection" False needs backbone "mlp", no hidden widths and '
                "feature_dim = the flattened input size"
            )
        if self.expert_layers < 1:
            raise ValueError('"expert_layers" must be >= 1')
        if not self.route_target_weight >= 0:
            raise ValueError('"route_target_weight" must be >= 0')
        if self.gate_weights not in GATE_WEIGHTS:
            raise ValueError(f'"gate_weights" must be one of {", ".join(GATE_WEIGHTS)}')
        if self.backbone not in ("mlp", "cnn", "resnet18"):
            raise ValueError('"backbone" must be "mlp", "cnn" or "resnet18"')
        if self.num_experts < 1:
            raise ValueError('"num_experts" must be >= 1')
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError('"top_k" must be in [1, num_experts]')
        if self.backbone in ("cnn", "resnet18") and len(self.input_shape) != 3:
            raise ValueError(f'backbone "{self.backbone}" needs input_shape (C, H, W)')


class MoEOutput(NamedTuple):
    """What :meth:`MoEClassifier.forward` returns.

    ``logits`` (N, num_classes); ``gate_probs`` (N, E) softmax after masking
    (masked experts have 0; with ``gate_weights="softmax"`` the unmasked softmax);
    ``topk_idx`` (N, k) chosen experts; ``aux_loss`` scalar load-balancing loss;
    ``route_loss`` scalar routing-target loss: under an expert mask, the mean over
    the batch of ``-log sum_{e in mask} softmax(gate(h))_e`` (the unmasked gate's
    probability that the sample belongs to one of the client's assigned experts;
    0 without a mask or when every expert is allowed). Training adds
    ``route_target_weight`` x this, so the server's alignment (built from
    fitness) is the gate's routing target: a client's data teaches the global
    gate which experts it belongs to, across all E.
    """

    logits: torch.Tensor
    gate_probs: torch.Tensor
    topk_idx: torch.Tensor
    aux_loss: torch.Tensor
    route_loss: torch.Tensor | None = None


# ----------------------------------------------------------------------------- backbones


def _mlp_backbone(cfg: MoEConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(cfg.input_shape)
    if not cfg.stem_projection:  # no shared layer: gate and experts read the flattened input
        return nn.Sequential(*layers)
    for w in cfg.widths:
        layers += [nn.Linear(width, w), nn.ReLU()]
        width = w
    if cfg.feature_layer:
        layers += [nn.Linear(width, cfg.feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class ChannelsLastSequential(nn.Sequential):
    """``nn.Sequential`` that runs its convolutions on a channels-last (NHWC)
    copy of a 4-D input (N, C, H, W); the values are those of the plain
    sequential up to float rounding, the parameters and their state-dict keys
    are the same. On one CPU thread a training step of the ``cnn`` backbone
    took ~1.4x less time and its inference 2-3x less (oneDNN's NHWC
    convolution and max-pool kernels; measured for issue 27)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - as nn.Sequential
        if x.dim() == 4 and x.device.type == "cpu":
            try:
                x = x.contiguous(memory_format=torch.channels_last)
            except RuntimeError:  # inside torch.func.vmap (the batched executor): memory formats are not supported
                pass
        return super().forward(x)


def _cnn_backbone(cfg: MoEConfig) -> nn.Sequential:
    c, h, w = cfg.input_shape
    layers: list[nn.Module] = []
    for width in cfg.widths:
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, cfg.feature_dim), nn.ReLU()]
    return ChannelsLastSequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no initial max-pool), output (N, 512)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.layers(self.stem(x))))


def _resnet18_backbone(cfg: MoEConfig) -> nn.Sequential:
    return nn.Sequential(ResNet18(cfg.input_shape[0]), nn.Linear(512, cfg.feature_dim), nn.ReLU())


# ----------------------------------------------------------------------------- the model


class Expert(nn.Module):
    """An expert: MLP head feature_dim -> expert_hidden (x ``expert_layers``) ->
    num_classes, or the linear head feature_dim -> num_classes (``fc2`` only)
    when expert_hidden is 0."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        hidden = cfg.expert_hidden
        self.fc1: nn.Module = nn.Linear(cfg.feature_dim, hidden) if hidden else nn.Identity()
        self.act: nn.Module = nn.ReLU() if hidden else nn.Identity()
        self.hidden = nn.ModuleList(
            nn.Linear(hidden, hidden) for _ in range((cfg.expert_layers - 1) if hidden else 0)
        )
        self.fc2 = nn.Linear(hidden or cfg.feature_dim, cfg.num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act(self.fc1(h))
        for layer in self.hidden:
            z = self.act(layer(z))
        return self.fc2(z)


class MoEClassifier(nn.Module):
    """Backbone -> gate -> top-k of E expert heads (see module docstring)."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        builders = {"mlp": _mlp_backbone, "cnn": _cnn_backbone, "resnet18": _resnet18_backbone}
        self.backbone = builders[cfg.backbone](cfg)
        self.gate = nn.Linear(cfg.feature_dim, cfg.num_experts)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_experts))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features, shape (N, feature_dim)."""
        return self.backbone(x)

    def route(
        self,
        h: torch.Tensor,
        expert_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate probabilities (N, E), top-k indices (N, k) among the allowed
        experts and their weights (N, k): renormalised over the top-k, or the
        unmasked softmax probabilities with ``gate_weights="softmax"`` (whose
        ``probs`` are then the unmasked softmax over all E experts)."""
        logits = self.gate(h)
        if self.training and self.cfg.gate_noise_std > 0 and generator is not None:
            noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
            logits = logits + self.cfg.gate_noise_std * noise.to(logits.device)
        k = self.cfg.top_k
        if expert_mask is not None:
            expert_mask = expert_mask.to(device=logits.device, dtype=torch.bool)
            allowed = int(expert_mask.sum())
            if allowed == 0:
                raise ValueError('"expert_mask" must allow at least one expert')
            k = min(k, allowed)
            if self.cfg.gate_weights == "softmax":
                probs = F.softmax(logits, dim=-1)
                top_idx = probs.masked_fill(~expert_mask, -1.0).topk(k, dim=-1).indices
                return probs, top_idx, probs.gather(1, top_idx)
            logits = logits.masked_fill(~expert_mask, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if self.cfg.gate_weights == "softmax":
            top_w, top_idx = probs.topk(k, dim=-1)
            return probs, top_idx, top_w
        top_w, top_idx = probs.topk(k, dim=-1)
        if not (self.cfg.top1_gate_prob and k == 1):
            top_w = top_w / top_w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return probs, top_idx, top_w

    def forward(
        self,
        x: torch.Tensor,
        expert_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MoEOutput:
        """Run the model; only the experts in ``expert_mask`` (all if None) are
        eligible and only experts chosen by some sample are computed, on the
        samples that chose them."""
        h = self.features(x)
        route_loss = None
        if expert_mask is not None and self.cfg.route_target_weight > 0:
            em = expert_mask.to(device=h.device, dtype=torch.bool)
            gl = self.gate(h)  # noise-free: the target is about the global gate's routing
            route_loss = (torch.logsumexp(gl, dim=-1) - torch.logsumexp(gl[:, em], dim=-1)).mean()
        probs, top_idx, top_w = self.route(h, expert_mask, generator)
        out = h.new_zeros(h.shape[0], self.cfg.num_classes)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = expert(h[rows]) * top_w[rows, slot].unsqueeze(-1)
            out = out.index_add(0, rows, y)
        e_allowed = self.cfg.num_experts if expert_mask is None else int(expert_mask.sum())
        counts = torch.zeros(self.cfg.num_experts, device=h.device, dtype=h.dtype)
        counts = counts.index_add(
            0, top_idx.reshape(-1), torch.ones_like(top_idx.reshape(-1), dtype=h.dtype)
        )
        f = counts / max(1, top_idx.numel())
        aux = e_allowed * (f * probs.mean(dim=0)).sum()
        return MoEOutput(out, probs, top_idx, aux, route_loss)


# ----------------------------------------------------------------------------- state slicing


def expert_keys(state: dict[str, torch.Tensor] | list[str], e: int) -> list[str]:
    """Keys of expert ``e`` (``experts.{e}.*``) in ``state`` (a state dict or key list)."""
    prefix = f"experts.{e}."
    return [k for k in state if k.startswith(prefix)]


def shared_keys(state: dict[str, torch.Tensor] | list[str]) -> list[str]:
    """Keys of everything but the experts: backbone and gate (parameters and buffers)."""
    return [k for k in state if not k.startswith("experts.")]


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameter counts of ``model``'s stem (``backbone.*``), ``gate.*`` and all
    ``experts.*`` together: ``{"stem", "gate", "experts", "total"}``."""
    out = {"stem": 0, "gate": 0, "experts": 0}
    for name, p in model.named_parameters():
        part = "experts" if name.startswith("experts.") else "gate" if name.startswith("gate.") else "stem"
        out[part] += p.numel()
    out["total"] = sum(out.values())
    return out


def expert_index(key: str) -> int | None:
    """The expert that owns ``key``, or None for a shared (backbone / gate) key."""
    if not key.startswith("experts."):
        return None
    return int(key.split(".", 2)[1])
