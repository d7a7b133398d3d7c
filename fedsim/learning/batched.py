"""The cohort-batched training executor: many clients' local training as one vmapped program.

The jobs of a call that share a model configuration and a train configuration
form a cohort. Their weights are stacked along a leading client axis and every
optimiser step of every client runs as one ``torch.func.vmap`` of
``torch.func.grad`` over a ``functional_call`` of the model (Horace He et al.,
functorch / ``torch.func``, PyTorch 2.x; the "model ensembling" recipe). Per
client, the step does exactly what :func:`fedsim.learning.training.train_local`
does, so the updates agree within float tolerance:

- the same random numbers: each client's ``torch.Generator`` (seeded with the
  job's seed) draws the epoch permutation and then one gate-noise tensor per
  step, in ``train_local``'s order, before the cohort starts;
- unequal local dataset sizes: clients are sorted by step count (descending),
  so at step t the clients still training are a prefix of the stack and are
  updated in place through views; a short last batch is padded and its padded
  rows carry weight 0 in every mean;
- different assigned-expert sets: the gate is masked per client, top-k keeps
  ``min(top_k, |experts|)`` valid slots (the others weigh 0), and an update of
  a parameter is applied only where ``train_local``'s optimiser would touch it:
  trainable for that client and, for an expert, routed to by at least one
  sample of the step (an expert outside the autograd graph has no gradient,
  so torch's SGD and Adam skip it: no momentum step, no weight decay, no Adam
  step count), or always with FedProx (the proximal term reaches every
  trainable parameter);
- per-client optimiser state: SGD momentum buffers and Adam moments and step
  counts per client and tensor, with torch's update formulas
  (``torch.optim.SGD`` / ``torch.optim.Adam``, single-tensor implementation).

Experts are computed densely (every expert on every row, weighted by the
renormalised top-k gate weight, 0 for an unchosen expert), which has the same
value and gradient as the sparse dispatch of :class:`MoEClassifier`.

Models with buffers (BatchNorm in ``resnet18``) are not batched: their jobs go
to the sequential reference executor. Neither, by default, are ``cnn`` backbones:
on one CPU thread a vmapped Conv2d was 1.4-2x slower than the per-client loop
(``batch_conv=True`` batches them anyway, with the same updates).

The updates' tensors are views into the cohort's stacked weights (one stack per
tensor name, one slice per client): read them, do not write them in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedsim.learning.executors import Executor, SequentialExecutor
from fedsim.learning.models import MoEClassifier, MoEConfig, expert_index
from fedsim.learning.training import (
    TrainConfig,
    TrainJob,
    Update,
    empty_model,
    job_experts,
    job_flops,
    kept_key,
)

__all__ = ["BatchedExecutor"]

_FEEDBACK_ROWS = 512  # rows per client per block of the feedback passes (gate, expert loss)


class _DenseMoE(nn.Module):
    """The MoE forward with dense expert mixing, vmappable (no data-dependent shapes)."""

    def __init__(self, model: MoEClassifier) -> None:
        super().__init__()
        self.m = model

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None, expert_mask: torch.Tensor, k_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One client's batch. ``x`` (B, ...), ``noise`` (B, E) or None, ``expert_mask``
        (E,) bool, ``k_valid`` () int. Returns logits (B, classes), gate probabilities
        (B, E) after masking, and ``chosen`` (B, K, E) bool (valid top-k slots)."""
        m, cfg = self.m, self.m.cfg
        h = m.features(x)
        logits = m.gate(h)
        if noise is not None:
            logits = logits + cfg.gate_noise_std * noise
        logits = logits.masked_fill(~expert_mask, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        top_w, top_idx = probs.topk(cfg.top_k, dim=-1)
        slot_ok = torch.arange(cfg.top_k, device=x.device) < k_valid
        top_w = top_w * slot_ok
        top_w = top_w / top_w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        chosen = (top_idx.unsqueeze(-1) == torch.arange(cfg.num_experts, device=x.device)) & slot_ok.unsqueeze(-1)
        dense_w = (chosen.to(h.dtype) * top_w.unsqueeze(-1)).sum(1)  # (B, E): one nonzero term per (b, e)
        out = h.new_zeros(())
        for e, expert in enumerate(m.experts):
            out = out + dense_w[:, e : e + 1] * expert(h)
        return out, probs, chosen


class _GateProbs(nn.Module):
    """Unmasked, noise-free gate probabilities (the eval-mode feedback pass)."""

    def __init__(self, model: MoEClassifier) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.m.gate(self.m.features(x)), dim=-1)


class _ExpertCE(nn.Module):
    """Cross-entropy of every expert alone on each row (the expert-loss pass), (B, E)."""

    def __init__(self, model: MoEClassifier) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.m.features(x)
        return torch.stack([F.cross_entropy(ex(h), y, reduction="none") for ex in self.m.experts], dim=-1)


@dataclass
class _Skeleton:
    dense: _DenseMoE
    probs: _GateProbs
    expert_ce: _ExpertCE
    keys: list[str]  # parameter names of the MoEClassifier
    batchable: bool  # no buffers (BatchNorm state cannot be vmapped through training); cnn only if batch_conv


class BatchedExecutor(Executor):
    """Trains cohorts of jobs together with ``torch.func`` (see module docstring).

    ``memory_budget_bytes`` bounds the stacked weights, gradients and optimiser
    state of one cohort (larger calls are split into cohorts of equal size).
    ``batch_conv``: batch ``cnn`` backbones too (by default they run sequentially,
    which is faster on a CPU).

    Raises:
        ValueError: ``memory_budget_bytes`` <= 0; (from ``run``) a bad job, as
            :func:`~fedsim.learning.training.train_local` would.
    """

    def __init__(self, memory_budget_bytes: int = 512 * 2**20, *, batch_conv: bool = False) -> None:
        if memory_budget_bytes <= 0:
            raise ValueError('"memory_budget_bytes" must be > 0')
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.batch_conv = bool(batch_conv)
        self._fallback = SequentialExecutor()
        self._skeletons: dict[tuple[MoEConfig, str], _Skeleton] = {}
        self._pool_key: tuple[str, list[torch.Tensor]] | None = None
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None

    def _skeleton(self, cfg: MoEConfig, device: str) -> _Skeleton:
        key = (cfg, str(device))
        sk = self._skeletons.get(key)
        if sk is None:
            model = empty_model(cfg).to(device)
            sk = _Skeleton(
                _DenseMoE(model), _GateProbs(model), _ExpertCE(model), [k for k, _ in model.named_parameters()],
                # the dense step mirrors renormalised top-k weights and one-hidden-layer experts only
                batchable=not any(True for _ in model.buffers()) and (cfg.backbone == "mlp" or self.batch_conv)
                and cfg.gate_weights == "renormalised" and cfg.expert_layers == 1 and cfg.stem_projection
                and cfg.route_target_weight == 0,
            )
            self._skeletons[key] = sk
        return sk

    def run(self, jobs: Sequence[TrainJob]) -> list[Update]:
        out: list[Update | None] = [None] * len(jobs)
        groups: dict[tuple[MoEConfig, TrainConfig], list[int]] = {}
        for i, job in enumerate(jobs):
            job_experts(job)  # fail early, as the sequential executor would
            groups.setdefault((job.model_config, job.train), []).append(i)
        for (cfg, tc), idx in groups.items():
            sk = self._skeleton(cfg, tc.device)
            if not sk.batchable:
                for i, u in zip(idx, self._fallback.run([jobs[i] for i in idx])):
                    out[i] = u
                continue
            per_client = self._client_bytes(sk, cfg, tc)
            size = max(1, min(len(idx), self.memory_budget_bytes // per_client))
            n_chunks = math.ceil(len(idx) / size)
            size = math.ceil(len(idx) / n_chunks)
            for s in range(0, len(idx), size):
                chunk = idx[s : s + size]
                for i, u in zip(chunk, self._run_cohort(sk, [jobs[i] for i in chunk])):
                    out[i] = u
        return [u for u in out if u is not None]

    @staticmethod
    def _client_bytes(sk: _Skeleton, cfg: MoEConfig, tc: TrainConfig) -> int:
        """Bytes one client adds to a cohort: weights, gradient, optimiser state,
        temporaries, and one batch of activations (a first-order estimate)."""
        n_params = sum(p.numel() for p in sk.dense.parameters())
        copies = 4 + (2 if tc.optimizer == "adam" else 1) + (1 if tc.fedprox_mu > 0 else 0)
        width = math.prod(cfg.input_shape) + sum(cfg.widths) + cfg.feature_dim + cfg.num_experts * (cfg.expert_hidden + cfg.num_classes)
        return 4 * (copies * n_params + 4 * tc.batch_size * width)

    def _data_pool(self, jobs: list[TrainJob], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """All clients' training data concatenated (reused while the cohort's tensors are the same)."""
        key = (str(device), [t for j in jobs for t in (j.x, j.y)])  # holds the tensors: identity stays meaningful
        same = (
            self._pool_key is not None and self._pool_key[0] == key[0] and len(self._pool_key[1]) == len(key[1])
            and all(a is b for a, b in zip(self._pool_key[1], key[1]))
        )  # fmt: skip
        if not same or self._pool is None:
            self._pool = (torch.cat([j.x for j in jobs]).to(device), torch.cat([j.y for j in jobs]).to(device))
            self._pool_key = key
        return self._pool

    @staticmethod
    def _schedule(
        jobs: list[TrainJob], n: list[int], spe: list[int], t_max: int, E: int, tc: TrainConfig, noisy: bool, dev: torch.device,
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """train_local's draws for every client: its data offset in the pool, the ``(C, t_max, B)``
        pool rows of each step's batch slots, their 0 / 1 weights (padding) and the gate noise."""
        C, B = len(jobs), tc.batch_size
        offsets = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        rows = torch.from_numpy(np.repeat(offsets, t_max * B).reshape(C, t_max * B))  # padding: any valid row
        noise = torch.zeros(C, t_max, B, E) if noisy else None
        for c, job in enumerate(jobs):
            gen = torch.Generator().manual_seed(int(job.seed))
            span = spe[c] * B  # one epoch of padded slots
            for ep in range(tc.local_epochs):
                rows[c, ep * span : ep * span + n[c]] = torch.randperm(n[c], generator=gen) + int(offsets[c])
                if noise is not None:
                    for s in range(spe[c]):
                        noise[c, ep * spe[c] + s, : min(B, n[c] - s * B)] = torch.randn((min(B, n[c] - s * B), E), generator=gen)
        rows = rows.view(C, t_max, B)
        pos = torch.arange(t_max * B)
        n_t, span_t = torch.tensor(n).unsqueeze(1), (torch.tensor(spe) * B).unsqueeze(1)
        weight = (((pos % span_t) < n_t) & (pos < span_t * tc.local_epochs)).to(torch.float32).view(C, t_max, B)
        return offsets, rows.to(dev), weight.to(dev), (noise.to(dev) if noise is not None else None)

    @staticmethod
    def _masks(
        keys: list[str], owner: dict[str, int | None], experts: list[list[int]], E: int, K: int, train_shared: bool, dev: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, bool]]:
        """``(C, E)`` expert mask, ``(C,)`` valid top-k slots, per tensor the clients that train it
        and whether all of them do."""
        C = len(experts)
        emask = torch.zeros(C, E, dtype=torch.bool)
        for c, ex in enumerate(experts):
            emask[c, ex] = True
        k_valid = torch.tensor([min(K, len(ex)) for ex in experts], dtype=torch.long)
        trainable = {k: (torch.full((C,), train_shared) if owner[k] is None else emask[:, owner[k]].clone()) for k in keys}
        all_trainable = {k: bool(v.all()) for k, v in trainable.items()}
        return emask.to(dev), k_valid.to(dev), {k: v.to(dev) for k, v in trainable.items()}, all_trainable

    @staticmethod
    def _optimizer_state(tc: TrainConfig, params: dict[str, torch.Tensor], C: int, dev: torch.device) -> tuple[Any, Any]:
        """Fresh optimizer state of the stacked ``params``: SGD momentum buffers (None without
        momentum) and Adam's (first moments, second moments, per-client step counts) (None for SGD)."""
        buf = {k: torch.zeros_like(v) for k, v in params.items()} if tc.optimizer == "sgd" and tc.momentum > 0 else None
        adam = (
            ({k: torch.zeros_like(v) for k, v in params.items()}, {k: torch.zeros_like(v) for k, v in params.items()},
             {k: torch.zeros(C, dtype=torch.float64, device=dev) for k in params})
            if tc.optimizer == "adam" else None
        )  # fmt: skip
        return buf, adam

    def _run_cohort(self, sk: _Skeleton, jobs_in: list[TrainJob]) -> list[Update]:
        cfg, tc = jobs_in[0].model_config, jobs_in[0].train
        dev = torch.device(tc.device)
        E, B, K = cfg.num_experts, tc.batch_size, cfg.top_k
        n_in = [int(j.y.shape[0]) for j in jobs_in]
        order = sorted(range(len(jobs_in)), key=lambda c: -n_in[c])  # stable: ties keep job order
        jobs = [jobs_in[c] for c in order]
        C = len(jobs)
        n = [n_in[c] for c in order]
        experts = [job_experts(j) for j in jobs]
        spe = [math.ceil(nc / B) for nc in n]  # steps per epoch
        steps = [tc.local_epochs * s for s in spe]
        t_max = steps[0]
        noisy = cfg.gate_noise_std > 0

        offsets, rows, weight, noise = self._schedule(jobs, n, spe, t_max, E, tc, noisy, dev)
        x_pool, y_pool = self._data_pool(jobs, dev)
        active = [sum(1 for s in steps if s > t) for t in range(t_max)]  # a prefix, steps is descending

        # ---------------------------------------------------------------- stacked state
        keys = sk.keys
        owner = {k: expert_index(k) for k in keys}
        params = {k: torch.stack([j.global_state[k] for j in jobs]).to(dev, torch.float32) for k in keys}
        emask, k_valid, trainable, all_trainable = self._masks(keys, owner, experts, E, K, tc.train_shared, dev)
        prox = tc.fedprox_mu > 0
        anchors = {k: v.clone() for k, v in params.items()} if prox else None
        tmask_f = {k: v.to(torch.float32) for k, v in trainable.items()} if prox else None
        buf, adam = self._optimizer_state(tc, params, C, dev)

        # the expert-loss pass reads the weights as received: before the first step
        eloss = self._expert_losses(sk, params, x_pool, y_pool, n, offsets, experts) if tc.expert_loss else None
        dense, aux_w, mu = sk.dense, cfg.aux_loss_weight, tc.fedprox_mu

        def client_loss(p, x, y, w, nz, em, kv, anc, tm):  # noqa: ANN001, ANN202 - one client, vmapped
            logits, probs, chosen = functional_call(dense, {"m." + k: v for k, v in p.items()}, (x, nz, em, kv), tie_weights=False)
            cnt = w.sum()
            loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / cnt
            hits = (chosen & (w > 0)[:, None, None]).sum((0, 1))  # (E,) valid top-k slots per expert
            if aux_w > 0:
                f = hits.to(probs.dtype) / (cnt * kv)
                p_mean = (probs * w[:, None]).sum(0) / cnt
                loss = loss + aux_w * (em.sum() * (f * p_mean).sum())
            if anc is not None:
                loss = loss + 0.5 * mu * sum(((p[k] - anc[k]) ** 2).sum() * tm[k] for k in p)
            return loss, hits

        in_dims = (0, 0, 0, 0, 0 if noisy else None, 0, 0, 0 if prox else None, 0 if prox else None)
        cohort_loss = vmap(client_loss, in_dims=in_dims)  # (a,) losses, (a, E) hits
        # clients' losses are independent: the gradient of their sum w.r.t. the stacked weights
        # is every client's own gradient, and plain autograd over the vmapped forward costs
        # less per op than a grad transform inside vmap; tensors no client trains get none
        grad_keys = [k for k in keys if bool(trainable[k].any())]

        loss_t = torch.zeros(C, t_max, dtype=torch.float64)
        hits_t = torch.zeros(C, t_max, E, dtype=torch.int64)
        for t in range(t_max):
            a = active[t]
            r = rows[:a, t]
            p_a = {k: v[:a] for k, v in params.items()}
            leaves = {k: p_a[k].detach().requires_grad_() for k in grad_keys}
            with torch.enable_grad():
                lv, hits = cohort_loss(
                    {**p_a, **leaves}, x_pool[r], y_pool[r], weight[:a, t], noise[:a, t] if noise is not None else None,
                emask[:a], k_valid[:a],
                {k: v[:a] for k, v in anchors.items()} if anchors is not None else None,
                {k: v[:a] for k, v in tmask_f.items()} if tmask_f is not None else None,
                )  # fmt: skip
                grads = torch.autograd.grad(lv.sum(), [leaves[k] for k in grad_keys], allow_unused=True)
            g = {k: gk if gk is not None else torch.zeros_like(p_a[k]) for k, gk in zip(grad_keys, grads)}
            loss_t[:a, t], hits_t[:a, t] = lv.detach().double().cpu(), hits.cpu()
            routed = hits > 0
            for k in grad_keys:
                use = trainable[k][:a]
                whole = all_trainable[k]
                if owner[k] is not None and not prox:
                    use = use & routed[:, owner[k]]
                    whole = whole and bool(routed[:, owner[k]].all())
                self._step(tc, k, p_a[k], g[k], None if whole else use, buf, adam, a)

        return self._updates(sk, jobs, experts, n, spe, steps, params, loss_t, hits_t, x_pool, offsets, order, eloss)

    @staticmethod
    def _step(tc: TrainConfig, k: str, p: torch.Tensor, g: torch.Tensor, use: torch.Tensor | None,
              buf: dict | None, adam: tuple | None, a: int) -> None:  # fmt: skip
        """One optimiser step of tensor ``k`` for the first ``a`` clients, in place;
        ``use`` (a,) bool selects the clients whose optimiser touches it (None: all)."""
        if use is not None and not bool(use.any()):
            return
        shape = (-1,) + (1,) * (p.dim() - 1)
        u = use.view(shape) if use is not None else None
        if tc.weight_decay:
            g = g + tc.weight_decay * p
        if adam is not None:
            b1, b2, eps = 0.9, 0.999, 1e-8
            m, v, step = adam[0][k][:a], adam[1][k][:a], adam[2][k][:a]
            new_m = torch.lerp(m, g, 1 - b1)
            new_v = v * b2 + (1 - b2) * g * g
            new_step = step + (use.double() if use is not None else 1.0)
            bc1 = 1 - b1**new_step
            bc2_sqrt = (1 - b2**new_step).sqrt()
            step_size = (tc.lr / bc1).to(p.dtype).view(shape)
            denom = new_v.sqrt() / bc2_sqrt.to(p.dtype).view(shape) + eps
            new_p = p - step_size * new_m / denom
            if u is None:
                m.copy_(new_m)
                v.copy_(new_v)
                p.copy_(new_p)
            else:
                m.copy_(torch.where(u, new_m, m))
                v.copy_(torch.where(u, new_v, v))
                p.copy_(torch.where(u, new_p, p))
            step.copy_(new_step)
            return
        if buf is not None:
            b = buf[k][:a]
            new_b = b * tc.momentum + g  # torch starts the buffer at the first gradient: momentum x 0 + g
            b.copy_(new_b if u is None else torch.where(u, new_b, b))
            g = new_b
        if u is None:
            p.add_(g, alpha=-tc.lr)
        else:
            p.copy_(torch.where(u, p - tc.lr * g, p))

    def _updates(self, sk: _Skeleton, jobs: list[TrainJob], experts: list[list[int]], n: list[int],
                 spe: list[int], steps: list[int], params: dict[str, torch.Tensor], loss_t: torch.Tensor,
                 hits_t: torch.Tensor, x_pool: torch.Tensor, offsets: np.ndarray, order: list[int],
                 eloss: np.ndarray | None) -> list[Update]:  # fmt: skip
        """The cohort's updates, in the jobs' original order."""
        C, tc = len(jobs), jobs[0].train
        E = jobs[0].model_config.num_experts
        gate_mean: np.ndarray | None = None
        if tc.gate_feedback and E == 1:
            gate_mean = np.ones((C, 1))  # a softmax over one expert is exactly 1: no pass, as train_local
        elif tc.gate_feedback:
            probs_fn = vmap(lambda p, x: functional_call(sk.probs, {"m." + k: v for k, v in p.items()}, (x,), tie_weights=False))
            gate_mean = _row_means(lambda p, x, _y: probs_fn(p, x), params, x_pool, None, n, offsets, E)
        per_client = {k: v.detach().to("cpu").unbind(0) for k, v in params.items()}
        batch_sizes = [np.array([min(tc.batch_size, nc - s * tc.batch_size) for s in range(spe_c)] * tc.local_epochs, dtype=np.float64)
                       for nc, spe_c in zip(n, spe)]  # fmt: skip
        loss_np, hits_np = loss_t.numpy(), hits_t.numpy()
        ups: list[Update | None] = [None] * C
        for c, job in enumerate(jobs):
            bs = batch_sizes[c]
            lv = loss_np[c, : steps[c]] * bs
            first, last = spe[c], steps[c] - spe[c]
            ups[order[c]] = Update(
                client_id=job.client_id,
                round=job.round,
                experts=experts[c],
                # compact copies: a view would keep (and pickle into the replay log) the whole cohort's storage
                state={k: per_client[k][c].clone() for k in sk.keys if kept_key(k, experts[c], tc.train_shared)},
                num_samples=n[c],
                samples_per_expert=hits_np[c, last : steps[c]].sum(0).astype(np.int64),
                mean_gate_prob=gate_mean[c] if gate_mean is not None else None,
                loss_first=float(lv[:first].sum() / n[c]),
                loss_last=float(lv[last:].sum() / n[c]),
                flops=job_flops(job, len(experts[c])),
                num_steps=steps[c],
                expert_loss=eloss[c] if eloss is not None else None,
            )
        return [u for u in ups if u is not None]

    @staticmethod
    def _expert_losses(sk: _Skeleton, params: dict[str, torch.Tensor], x_pool: torch.Tensor, y_pool: torch.Tensor,
                       n: list[int], offsets: np.ndarray, experts: list[list[int]]) -> np.ndarray:  # fmt: skip
        """``Update.expert_loss`` of every client of the cohort, (C, E): one stacked forward of
        every expert over every client's rows with the received weights ``params``; NaN for
        the experts a client was not assigned (as :func:`~fedsim.learning.training.job_expert_losses`)."""
        ce_fn = vmap(lambda p, x, y: functional_call(sk.expert_ce, {"m." + k: v for k, v in p.items()}, (x, y), tie_weights=False))
        mean = _row_means(ce_fn, params, x_pool, y_pool, n, offsets, len(sk.expert_ce.m.experts))
        out = np.full_like(mean, np.nan)
        for c, ex in enumerate(experts):
            out[c, ex] = mean[c, ex]
        return out


def _row_means(fn, params: dict[str, torch.Tensor], x_pool: torch.Tensor, y_pool: torch.Tensor | None,  # noqa: ANN001
               n: list[int], offsets: np.ndarray, width: int) -> np.ndarray:  # fmt: skip
    """Mean over each client's rows of ``fn(params[:a], x (a, rows, ...), y (a, rows))`` -> (a, rows, width),
    in blocks of ``_FEEDBACK_ROWS`` rows per client (clients sorted by ``n`` descending, rows
    ``offsets[c] + [0, n[c])`` of the pools); float64, (C, width)."""
    C, dev = len(n), x_pool.device
    acc = torch.zeros(C, width, device=dev)
    with torch.no_grad():
        for s in range(0, n[0], _FEEDBACK_ROWS):
            a = sum(1 for nc in n if nc > s)
            local = torch.arange(s, min(s + _FEEDBACK_ROWS, n[0]), device=dev)
            valid = local.unsqueeze(0) < torch.tensor(n[:a], device=dev).unsqueeze(1)  # (a, rows)
            idx = torch.as_tensor(offsets[:a], device=dev).unsqueeze(1) + torch.where(valid, local, 0)
            out = fn({k: v[:a] for k, v in params.items()}, x_pool[idx], y_pool[idx] if y_pool is not None else None)
            acc[:a] += (out * valid.unsqueeze(-1)).sum(1)
    return (acc.double() / torch.tensor(n, dtype=torch.float64, device=dev).unsqueeze(1)).cpu().numpy()
