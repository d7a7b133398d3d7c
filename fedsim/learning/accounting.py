"""FLOP, byte and memory accounting, computed from the actual modules.

Simulated compute time is FLOPs / device speed and transfer time is bytes /
rate, so these numbers drive the simulation. They are measured by running one
forward pass of the real model with forward hooks on every leaf module and
counting, per sample:

- ``Linear``: ``2 * in * out`` multiply-adds (+ ``out`` with bias), per row;
- ``Conv2d``: ``2 * (Cin / groups) * kh * kw * Hout * Wout * Cout`` (+ ``Cout * Hout * Wout``
  with bias);
- ``BatchNorm*`` / ``LayerNorm`` / ``GroupNorm``: 4 per output element (subtract,
  divide, scale, shift);
- activations (ReLU, GELU, Sigmoid, Tanh, SiLU, Softmax...): 1 per output element;
- pooling: ``kh * kw`` per output element (adaptive pooling: 1 per input element);
- ``Flatten``, ``Identity``, ``Dropout``: 0.

A training step costs forward + backward, and the backward pass costs about
twice the forward (one product for the input gradient, one for the weight
gradient), so training FLOPs = 3 x forward FLOPs (the usual 6N rule of thumb for
dense layers). For an :class:`~fedsim.learning.models.MoEClassifier` the
per-sample count is backbone + gate + softmax / top-k / combine + ``k`` experts,
where ``k`` is ``top_k`` (or ``experts_active``).

Bytes are ``numel * element_size`` of the tensors a state dict would send
(parameters and buffers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fedsim.learning.models import MoEClassifier, expert_keys, shared_keys

__all__ = [
    "module_flops",
    "flops_per_sample",
    "activation_bytes_per_sample",
    "state_bytes",
    "payload_bytes",
    "training_memory_bytes",
    "TRAIN_FLOPS_FACTOR",
]

TRAIN_FLOPS_FACTOR = 3.0
"""Training FLOPs per sample = TRAIN_FLOPS_FACTOR x forward FLOPs (forward + 2x backward)."""

_ACTS = (nn.ReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softmax, nn.ReLU6)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_FREE = (nn.Flatten, nn.Identity, nn.Dropout)


def module_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> float:
    """Forward FLOPs of one call of leaf ``module`` with input ``inp`` and output
    ``out`` (the whole batch; see the module docstring for the rules)."""
    if isinstance(module, nn.Linear):
        rows = out.numel() // module.out_features
        return float(
            rows
            * (
                2 * module.in_features * module.out_features
                + (module.out_features if module.bias is not None else 0)
            )
        )
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        n_out = out.numel()  # N * Cout * Hout * Wout
        per = 2 * (module.in_channels // module.groups) * kh * kw
        return float(n_out * per + (n_out if module.bias is not None else 0))
    if isinstance(module, _NORMS):
        return 4.0 * out.numel()
    if isinstance(module, _ACTS):
        return float(out.numel())
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size
        kh, kw = (k, k) if isinstance(k, int) else k
        return float(out.numel() * kh * kw)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return float(inp.numel())
    return 0.0


def _leaves(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if not list(m.children()))


def _hooked_forward(model: nn.Module, fn: object, x: torch.Tensor) -> tuple[float, float]:
    """Run ``fn(x)`` with hooks on ``model``'s leaves; return (flops, output bytes)."""
    totals = [0.0, 0.0]

    def hook(mod: nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            totals[0] += module_flops(mod, args[0], out)
            if not isinstance(mod, _FREE):
                totals[1] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for _, m in _leaves(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fn(x)  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return totals[0], totals[1]


def _moe_parts(
    model: MoEClassifier, input_shape: Sequence[int], batch: int
) -> tuple[float, float, float, float]:
    """(shared flops, expert flops, shared act bytes, expert act bytes) for ``batch`` samples."""
    dev = next(model.parameters()).device
    x = torch.zeros((batch, *input_shape), device=dev)
    f_sh, b_sh = _hooked_forward(model, lambda t: model.gate(model.backbone(t)), x)
    h = torch.zeros((batch, model.cfg.feature_dim), device=dev)
    f_ex, b_ex = _hooked_forward(model.experts[0], model.experts[0], h)
    return f_sh, f_ex, b_sh, b_ex


def flops_per_sample(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    experts_active: int | None = None,
    train: bool = True,
) -> float:
    """FLOPs to process one sample: forward, or forward + backward if ``train``
    (x TRAIN_FLOPS_FACTOR). For an MoE: backbone + gate + routing + ``k`` experts
    with ``k = experts_active`` if given else ``top_k``."""
    if isinstance(model, MoEClassifier):
        f_sh, f_ex, _, _ = _moe_parts(model, input_shape, 1)
        k = model.cfg.top_k if experts_active is None else experts_active
        e, c = model.cfg.num_experts, model.cfg.num_classes
        routing = 3.0 * e + e * math.log2(max(2, e)) + 2.0 * k * c  # softmax, top-k, weighted sum
        fwd = f_sh + routing + k * f_ex
    else:
        x = torch.zeros((1, *input_shape), device=next(model.parameters()).device)
        fwd, _ = _hooked_forward(model, model, x)
    return fwd * (TRAIN_FLOPS_FACTOR if train else 1.0)


def activation_bytes_per_sample(
    model: nn.Module, input_shape: Sequence[int], *, experts_active: int | None = None
) -> float:
    """Bytes of the leaf-module outputs of one sample's forward pass (the
    activations autograd keeps for backward, to first order). MoE: backbone +
    gate + ``k`` experts."""
    if isinstance(model, MoEClassifier):
        _, _, b_sh, b_ex = _moe_parts(model, input_shape, 1)
        k = model.cfg.top_k if experts_active is None else experts_active
        return b_sh + k * b_ex
    x = torch.zeros((1, *input_shape), device=next(model.parameters()).device)
    return _hooked_forward(model, model, x)[1]


def state_bytes(state: dict[str, torch.Tensor], keys: Iterable[str] | None = None) -> int:
    """Bytes (numel x element_size) of the tensors of ``state`` under ``keys`` (all if None)."""
    keys = state.keys() if keys is None else keys
    return int(sum(state[k].numel() * state[k].element_size() for k in keys))


def payload_bytes(
    model_or_state: nn.Module | dict[str, torch.Tensor], experts: Iterable[int]
) -> int:
    """Bytes of backbone + gate + the given experts: what a client downloads or
    uploads when it trains ``experts`` (parameters and buffers)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    keys = shared_keys(state)
    for e in experts:
        keys += expert_keys(state, e)
    return state_bytes(state, keys)


def _optimizer_slots(optimizer: str, momentum: float) -> int:
    if optimizer == "adam":
        return 2
    if optimizer == "sgd":
        return 1 if momentum > 0 else 0
    raise ValueError('"optimizer" must be "sgd" or "adam"')


def training_memory_bytes(
    model: nn.Module,
    batch_size: int,
    input_shape: Sequence[int],
    optimizer: str = "sgd",
    experts_active: int | None = None,
    *,
    momentum: float = 0.0,
) -> int:
    """Peak memory (bytes) of local training on one batch.

    = parameters held (backbone + gate + ``experts_active`` experts for an MoE,
    default all) + their gradients (same size) + optimizer state (SGD: 0, SGD
    with momentum: 1x, Adam: 2x parameters) + the input batch + activations.
    Activations are the bytes of all hooked leaf-module outputs of a forward
    pass over the batch, counted once: autograd keeps most of them for
    backward (inputs of conv / linear layers, ReLU outputs, pooling inputs and
    indices), a few are freed early (a conv output consumed by a ReLU), and the
    gradient buffers live during backward take their place; against the CPU
    allocator's measured peak this is within ~5 % for small CNNs and MLPs
    (see tests/test_learning_accounting.py). For an MoE each sample passes
    ``min(top_k, experts_active)`` experts. Framework overhead
    (workspace, allocator rounding) is not counted.
    """
    state = model.state_dict()
    if isinstance(model, MoEClassifier):
        n_e = model.cfg.num_experts if experts_active is None else experts_active
        params = sum(
            p.numel() * p.element_size()
            for n, p in model.named_parameters()
            if not n.startswith("experts.")
        )
        params += n_e * sum(p.numel() * p.element_size() for p in model.experts[0].parameters())
        k = min(model.cfg.top_k, n_e)
        act = activation_bytes_per_sample(model, input_shape, experts_active=k)
    else:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        act = activation_bytes_per_sample(model, input_shape)
    buffers = state_bytes(state) - sum(p.numel() * p.element_size() for p in model.parameters())
    slots = _optimizer_slots(optimizer, momentum)
    x_bytes = batch_size * math.prod(input_shape) * 4
    return int(params * (2 + slots) + buffers + x_bytes + batch_size * act)
