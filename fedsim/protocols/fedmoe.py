"""``fedmoe``: server-side federated MoE with client-expert alignment.

One round (DESIGN.md, "A fedmoe round"):

1. the server sees who is online and selects clients (over-selection allowed);
2. capacity *estimates* give each selected client an expert budget k_c;
3. the alignment policy assigns experts;
4. per client: download (backbone, gate, assigned experts) -> memory check ->
   local training -> upload, each phase timed by the systems layer; dropout,
   OOM or the deadline can end any phase, and the seconds and bytes it
   wasted are recorded;
5. at the deadline, or at the first K completions, the server aggregates
   what arrived (training jobs run here, lazily, only for clients whose
   upload completed), then updates fitness, usage and capacity estimates.

Real training runs at zero simulated time: a job's inputs are fixed at
dispatch (the round's global weights, the client's data, its experts, its
seed), so it is executed at aggregation with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from fedsim.protocols.base import ClientOutcome, Protocol, RoundState, StaleUpdate, crn_select

if TYPE_CHECKING:
    from fedsim.parts.bundle import Parts

__all__ = ["FedMoE"]


class FedMoE(Protocol):
    """The fedmoe round: the hooks of :class:`~fedsim.protocols.base.Protocol` (see module docstring)."""

    name = "fedmoe"

    def __init__(self, parts: Parts, progress: Any = None) -> None:
        super().__init__(parts, progress)
        if parts.alignment is None:
            raise ValueError("fedmoe needs the alignment services (Parts.alignment)")
        self.alignment = parts.alignment
        self.E = self.trainer.model_config.num_experts
        self.model = self.trainer.new_model()
        self.global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.align = parts.alignment.state
        self.policy = parts.alignment.policy
        self.estimator = parts.alignment.estimator
        self.acct = self.trainer.accounting(self.model)
        self.rng_select = self.sim.rng.numpy("selection")
        self.rng_policy = self.sim.rng.numpy("policy")
        self._last_load = np.zeros(self.E)  # samples routed to each expert in the last aggregation
        self._cum_load = np.zeros(self.E)  # samples routed to each expert since round 0
        # trained[i, e]: client self.clients[i] trained expert e in an aggregated update (per-client inference)
        self.trained = np.zeros((len(self.clients), self.E), dtype=bool)
        self._client_row = {c: i for i, c in enumerate(self.clients)}
        self.last_staleness: dict[int, list[int]] = {}  # expert (-1: shared) -> staleness of each update last aggregated
        self.subnets: Any = None  # expert_widths: capacity-sized sub-networks (fedsim.parts.subnet)
        if self.cfg.expert_widths:
            from fedsim.parts.subnet import Subnetworks

            self.subnets = Subnetworks(self.trainer, self.cfg.expert_widths)

    # ---------------------------------------------------------------- hooks
    def aggregation_mode(self) -> str:
        """``protocol.fedmoe.aggregation``."""
        return self.cfg.aggregation

    def select(self, r: int, slots: int | None = None, busy: Collection[str] = ()) -> list[str]:
        """Online clients with data (and not ``busy``), ``ceil(clients_per_round * over_selection)``
        of them (or ``slots``) drawn uniformly (stream ``selection``) with common random numbers
        (:func:`~fedsim.protocols.base.crn_select`): two runs that differ only in their policy
        select the same clients in every round in which the same clients are online. With
        ``slots`` (a buffered loop filling free slots) nothing is drawn when nobody is chosen."""
        cfg = self.cfg
        # a client without training data has nothing to contribute (skewed partitions can leave some empty)
        ok = [c not in busy and self.systems.is_online(c) and self.trainer.num_samples(c) > 0 for c in self.clients]
        if slots is None:
            return crn_select(self.rng_select, self.clients, ok, min(sum(ok), math.ceil(cfg.clients_per_round * cfg.over_selection)))
        n = min(slots, sum(ok))
        return crn_select(self.rng_select, self.clients, ok, n) if n > 0 else []

    def assign(self, r: int, selected: list[str], inflight: Mapping[str, list[int]] | None = None) -> dict[str, list[int]]:
        """Capacity estimates -> expert budgets k_c -> the alignment policy's assignment.
        With clients ``inflight`` (a buffered loop), the policy sees their load (each adds
        its samples, split evenly over its experts) added to the usage."""
        cfg = self.cfg
        pending = np.zeros(self.E)
        for c, task in (inflight or {}).items():
            for e in task:
                pending[e] += self.trainer.num_samples(c) / len(task)
        align = _UsageView(self.align, pending) if pending.any() else self.align
        estimates = {c: self.estimator.estimate(c) for c in selected}
        samples = {c: self.trainer.num_samples(c) for c in selected}
        for c in selected if self.subnets is not None else ():
            self.subnets.assign_width(c, estimates[c], samples[c], cfg.deadline_s, self.alignment.safety_margin)  # fixed here
        budgets = {c: self.budget(c, estimates[c]) for c in selected}
        needed = min(cfg.min_completions or cfg.clients_per_round, len(selected))
        ctx = self.acct.assign_context(estimates, cfg.deadline_s, self.alignment.safety_margin, samples, needed)
        return self.policy.assign(selected, budgets, align, self.rng_policy, ctx)

    def round_deadline_s(self) -> float:
        """``protocol.fedmoe.deadline_s``."""
        return float(self.cfg.deadline_s)

    def min_completions(self, dispatched: int) -> int:
        """``min_completions`` (default ``clients_per_round``) uploads close the round."""
        return self.cfg.min_completions or self.cfg.clients_per_round

    def server_compute_s(self) -> float:
        """``protocol.fedmoe.server_compute_s``."""
        return float(self.cfg.server_compute_s)

    def round_interval_s(self) -> float:
        """``protocol.fedmoe.round_interval_s``."""
        return float(self.cfg.round_interval_s)

    def evaluate(self, r: int) -> dict[str, float]:
        """Accuracy / F1 / AUC of the global state on the global test set (global gate), and
        the per-client inference with each client's best experts by fitness, the rare
        groups' accuracies and the group-to-expert NMI of test routing
        (:func:`fedsim.learning.routing.alignment_metrics`)."""
        ev = self.evaluator
        m = dict(ev.evaluate(self.model, self.global_state))
        fitness = np.asarray(self.align.fitness_rows(self.clients))
        m.update(ev.evaluate_alignment(self.model, self.global_state, fitness, self.alignment.inference_k, self.trained))
        return m

    def on_end(self) -> None:
        """Record each client's personalised accuracy (table ``personal``)."""
        self.evaluator.personalised_accuracy(self.model, self.global_state)

    def final_state(self) -> dict[str, Any]:
        """The global model's state dict."""
        return self.global_state

    def model_state(self) -> dict[str, Any]:
        """The global model's state dict (what a client downloads now)."""
        return self.global_state

    def trains_shared(self) -> bool:
        """``protocol.fedmoe.train_shared``."""
        return bool(self.cfg.train_shared)

    def budget(self, c: str, est: Any) -> int:
        """Expert budget k_c of client ``c`` from the server's estimate."""
        k = self.acct_of(c).budget(est, self.trainer.num_samples(c), self.cfg.deadline_s, self.alignment.safety_margin)
        if self.subnets is not None:
            k = self.subnets.fit_budget(c, est, k)
        cap = self.alignment.max_experts_per_client
        return min(k, cap) if cap is not None else k

    def acct_of(self, c: str) -> Any:
        """Bytes / FLOPs / memory figures of client ``c``'s model: its sub-network's
        (``expert_widths``, width fixed by :meth:`assign`) or the full model's."""
        return self.acct if self.subnets is None else self.subnets.accounting(c)

    # -------------------------------------------------------------- client
    def new_outcome(self, c: str, task: list[int], r: int) -> ClientOutcome:
        """Outcome with the client's sample count and serving base station at dispatch."""
        return ClientOutcome(c, r, task, float(self.env.now), num_samples=self.trainer.num_samples(c), bs=self.systems.serving_bs(c))

    def client_round(self, o: ClientOutcome):  # noqa: ANN201 - SimPy process body
        """One client's round: download -> memory check -> train -> upload (each a :meth:`phase`).

        Cut by an interrupt (deadline, dropout), the client is ``completed`` if its upload's
        last byte arrived by the cut (an upload finishing exactly at the deadline counts:
        ``events`` says ``completed``, and so do ``clients`` and the aggregation); otherwise
        it takes the cause's status, with the bytes its phase moved."""
        w = self.systems
        c, r, experts = o.client, o.round, o.experts
        acct = self.acct_of(c)
        if self.subnets is not None:
            self.rec.event(float(self.env.now), "subnetwork", node=c, round=r, width=self.subnets.width[c])
        down = acct.payload_bytes(experts)
        up = down if self.cfg.train_shared else acct.payload_bytes(experts, shared=False)
        flops = acct.job_flops(len(experts), o.num_samples)
        mem = acct.memory_bytes(len(experts))
        o.flops = flops
        steps = (
            ("download", lambda: w.transfer(w.server, c, down, r, "download")),
            ("compute", lambda: w.compute(c, flops, r, mem)),
            ("upload", lambda: w.transfer(c, w.server, up, r, "upload")),
        )
        for name, start in steps:
            if not (yield from self.phase(o, name, start)):
                return
        o.status = "completed"

    def phase(self, o: ClientOutcome, name: str, start: Any):  # noqa: ANN201 - SimPy process body
        """One phase of a client round: ``start()`` the systems process, wait for it and
        record its seconds (``o.t_<name>_s``) and, for a transfer, the bytes it moved;
        returns whether it completed (else ``o.status`` is set from the cause). An
        interrupt (the round's deadline) is passed on to the running process, whose
        bytes so far count."""
        o.phase, t0 = name, float(self.env.now)
        proc = start()
        try:
            res = yield proc
        except simpy.Interrupt as intr:
            res = None
            if proc.is_alive:
                proc.interrupt(intr.cause)
                res = yield proc
            elif proc.triggered and proc.ok:
                res = proc.value  # the phase ended at this very instant, before this process resumed
            self._account(o, name, t0, getattr(res, "delivered_bytes", 0.0))
            # the tie: an upload whose last byte arrives by the cut (the deadline) has arrived
            if name == "upload" and getattr(res, "completed", False):
                return True
            o.status = self.systems.cause_status(intr.cause)
            return False
        self._account(o, name, t0, getattr(res, "delivered_bytes", 0.0))
        if not res.completed:
            o.status = self.systems.cause_status(res.cause)
            return False
        return True

    def _account(self, o: ClientOutcome, name: str, t0: float, moved: float) -> None:
        """Seconds of phase ``name`` (since ``t0``) and the bytes it moved (transfers only)."""
        if name == "download":
            o.bytes_down += moved
        elif name == "upload":
            o.bytes_up += moved
        setattr(o, f"t_{name}_s", self.env.now - t0)

    # ---------------------------------------------------------- aggregation
    def aggregate(self, r: int, arrived: list[str]) -> list[Any]:
        """Run the arrived clients' training jobs, FedAvg them into the global state,
        update fitness, usage and capacity estimates; returns the updates (without
        their weights: FedAvg runs inside the replay seam, see :meth:`fold`)."""
        self._last_load = np.zeros(self.E)
        self.last_staleness = {}
        jobs = self.jobs(arrived, r)
        if not jobs:
            return []
        res, updates = self.trainer.train(jobs, reduce=self.fold)
        self.fedavg(updates, r, res)
        return updates

    def jobs(self, arrived: list[str], r: int) -> list[Any]:
        """The training jobs of the clients whose uploads arrived, on the current global state."""
        if self.subnets is not None:  # each client trains its sub-network of the global state
            w = self.subnets.width
            return [self.trainer.job(c, r, self.global_state, self.outcomes[c].experts, self.cfg.train_shared, w[c]) for c in arrived]
        return [self.trainer.job(c, r, self.global_state, self.outcomes[c].experts, self.cfg.train_shared) for c in arrived]

    def fold(self, updates: list[Any]) -> tuple[Any, list[Any]]:
        """Pure: FedAvg of ``updates`` into the current global state
        (:class:`~fedsim.learning.aggregation.AggregationResult`) and the updates
        without their weights (what the alignment feedback needs)."""
        import dataclasses

        from fedsim.learning.aggregation import aggregate

        res = aggregate(self.global_state, updates, self.E)
        return res, [dataclasses.replace(u, state={}) for u in updates]

    def fedavg(self, updates: list[Any], r: int, res: Any) -> None:
        """Take ``res``, the FedAvg done by :meth:`fold` inside the replay seam, as the global
        state, then update fitness, usage and capacity estimates."""
        self.global_state = res.state
        done = {c: o for c, o in self.outcomes.items() if o.status == "completed"}
        good = self.apply_feedback(updates, res.rejected, r, done, [o for o in self.outcomes.values() if o.status != "completed"])
        # sync: every update was trained on the current version (staleness 0, weight 1)
        self.last_staleness = {e: [0] * sum(1 for u in good if e in done[u.client_id].experts) for e in range(self.E)}
        self.last_staleness[-1] = [0] * len(good) if self.cfg.train_shared else []
        for u in good:
            o = done[u.client_id]
            for e in ([-1] if self.cfg.train_shared else []) + list(o.experts):
                self.rec.row("updates", version=r + 1, client=o.client, expert=int(e), t_dispatch_s=o.t_dispatch_s,
                             t_arrival_s=o.t_end_s, staleness=0, staleness_weight=1.0)

    def apply_feedback(
        self, updates: list[Any], rejected: list[Any], r: int, outcomes: dict[str, ClientOutcome], lost: list[ClientOutcome] = (),  # type: ignore[assignment]
    ) -> list[Any]:
        """After an aggregation: ``rejected_update`` events, fitness, usage, capacity
        estimates (timings and memory from ``outcomes``, the aggregated clients' outcomes
        by id; memory refusals from the OOMs in ``lost``) and the ``aggregate`` event;
        returns the accepted updates."""
        from fedsim.alignment.state import Feedback

        now = float(self.env.now)
        for cid in rejected:
            self.rec.event(now, "rejected_update", node=cid, round=r, reason="non-finite values")
        good = [u for u in updates if u.client_id not in set(rejected)]
        feedback = {
            u.client_id: Feedback(
                mean_gate_prob=None if u.mean_gate_prob is None else np.asarray(u.mean_gate_prob, dtype=float),
                trained_experts=list(outcomes[u.client_id].experts),
                loss_first=float(u.loss_first),
                loss_last=float(u.loss_last),
                samples_per_expert=np.asarray(u.samples_per_expert, dtype=float),
                expert_loss=None if u.expert_loss is None else np.asarray(u.expert_loss, dtype=float),
            )
            for u in good
        }
        self.align.update_fitness(feedback)
        load = np.zeros(self.E)
        for u in good:
            load += np.asarray(u.samples_per_expert, dtype=float)
            self.trained[self._client_row[u.client_id], list(outcomes[u.client_id].experts)] = True
        self.align.update_usage(load)
        self._last_load = load
        for o in [*outcomes.values(), *lost]:
            mem = self.acct_of(o.client).memory_bytes(len(o.experts)) if o.experts else None
            if o.status == "completed":
                self.estimator.observe(
                    o.client,
                    download_s=o.t_download_s, download_bytes=o.bytes_down,
                    compute_s=o.t_compute_s, flops=o.flops,
                    upload_s=o.t_upload_s, upload_bytes=o.bytes_up,
                    memory_ok_bytes=mem,
                )
            elif o.status == "oom":
                self.estimator.observe(o.client, memory_oom_bytes=mem)
        self.rec.event(now, "aggregate", round=r, updates=len(good), rejected=len(rejected))
        return good

    # -------------------------------------------------------------- records
    def clients_per_expert_cv(self, st: RoundState) -> float:
        """Coefficient of variation of the clients per expert in the round's assignment
        (a count of clients, not the paper's balance: see ``experts.share``)."""
        from fedsim.alignment.policies import expert_load_cv

        a = st.tasks
        return float(expert_load_cv({c: v for c, v in a.items() if v}, self.E)) if a else math.nan

    def record_round_extra(self, st: RoundState) -> None:
        """The ``experts`` rows of round ``st.round`` (clients, samples routed, usage per expert)."""
        load = self._last_load
        per_expert = np.zeros(self.E, dtype=int)
        for _c, ex in st.tasks.items():
            for e in ex:
                per_expert[e] += 1
        usage = np.asarray(self.align.usage, dtype=float)
        self._cum_load = self._cum_load + load
        share = load / load.sum() if load.sum() > 0 else np.full(self.E, math.nan)
        cum = self._cum_load / self._cum_load.sum() if self._cum_load.sum() > 0 else np.full(self.E, math.nan)
        for e in range(self.E):
            st_e = self.last_staleness.get(e, [])
            self.rec.row(
                "experts", round=st.round, expert=e, clients=int(per_expert[e]), samples=float(load[e]), usage=float(usage[e]),
                share=float(share[e]), share_cum=float(cum[e]),
                updates=len(st_e), staleness_mean=float(np.mean(st_e)) if st_e else math.nan, staleness_max=float(max(st_e)) if st_e else math.nan,
            )

    # ------------------------------------------------------ buffered modes
    def fold_stale(self, r: int, batch: list[StaleUpdate]) -> tuple[Any, list[Any]]:
        """Train ``batch`` (each job on the snapshot it downloaded, through the replay seam)
        and fold it per component with its staleness weights
        (:func:`fedsim.learning.buffered.buffered_aggregate`, ``fedbuff.server_lr``);
        returns (the aggregation result or None for an empty batch, the updates)."""
        from fedsim.learning.buffered import BufferedUpdate, buffered_aggregate

        jobs = [self.trainer.job(b.client, b.version, b.snapshot, b.task, self.cfg.train_shared) for b in batch]
        updates = self.trainer.train(jobs)
        entries = [BufferedUpdate(u, b.snapshot, b.weight_shared, b.weights) for b, u in zip(batch, updates)]
        res = buffered_aggregate(self.global_state, entries, self.E, self.cfg.fedbuff.server_lr) if entries else None
        return res, updates

    def publish(
        self, r: int, step: tuple[Any, list[Any]], outcomes: dict[str, ClientOutcome], lost: list[ClientOutcome],
        staleness: dict[str, tuple[int, dict[int, int]]],
    ) -> set[str]:
        """The folded state becomes the global state; fitness, usage and capacity estimates
        learn from it (:meth:`apply_feedback`); the accepted updates' staleness per expert
        (``-1``: shared) is kept for the ``experts`` rows. Returns the accepted clients."""
        res, updates = step
        good: list[Any] = []
        self._last_load = np.zeros(self.E)  # samples routed per expert in this aggregation (apply_feedback fills it)
        if res is not None:
            self.global_state = res.state
            good = self.apply_feedback(updates, res.rejected, r, outcomes, lost)
        ids = {u.client_id for u in good}
        gb = [c for c in outcomes if c in ids]
        self.last_staleness = {e: [staleness[c][1][e] for c in gb if e in outcomes[c].experts] for e in range(self.E)}
        self.last_staleness[-1] = [staleness[c][0] for c in gb] if self.cfg.train_shared else []
        return ids


class _UsageView:
    """The alignment state as a policy sees it at a buffered dispatch: usage plus in-flight load."""

    def __init__(self, state: Any, pending: np.ndarray) -> None:
        self._state = state
        self._pending = pending

    @property
    def usage(self) -> np.ndarray:
        """``(E,)`` usage of the alignment state plus the in-flight assignments' samples."""
        out = np.asarray(self._state.usage, dtype=float) + self._pending
        out.flags.writeable = False
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)
