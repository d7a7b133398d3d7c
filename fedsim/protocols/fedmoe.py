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
from typing import Any

import numpy as np
import simpy

from fedsim.devices.causes import Deadline
from fedsim.protocols.base import ClientOutcome, Protocol, RoundState, crn_select

__all__ = ["FedMoE", "ClientOutcome", "Deadline"]


class FedMoE(Protocol):
    """The fedmoe round: the hooks of :class:`~fedsim.protocols.base.Protocol` (see module docstring)."""

    name = "fedmoe"

    def __init__(self, world: Any, progress: Any = None) -> None:
        super().__init__(world, progress)
        from fedsim.alignment.policies import make_policy, policy_params

        s = world.scenario
        self.s = s
        self.cfg = s.protocol.fedmoe
        self.E = s.model.num_experts
        self.model = world.new_model()
        self.global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.align = world.new_alignment_state()
        self.policy = make_policy(s.alignment.policy, **policy_params(s.alignment))
        self.estimator = world.new_capacity_estimator()
        self.executor = world.new_executor()  # training.executor
        self.acct = world.accounting(self.model)
        self.rng_select = self.sim.rng.numpy("selection")
        self.rng_policy = self.sim.rng.numpy("policy")
        self._last_load = np.zeros(self.E)  # samples routed to each expert in the last aggregation
        self._cum_load = np.zeros(self.E)  # samples routed to each expert since round 0
        # trained[i, e]: client world.clients[i] trained expert e in an aggregated update (per-client inference)
        self.trained = np.zeros((len(world.clients), self.E), dtype=bool)
        self._client_row = {c: i for i, c in enumerate(world.clients)}
        self.last_staleness: dict[int, list[int]] = {}  # expert (-1: shared) -> staleness of each update last aggregated
        self.buffered: Any = None  # the async / semi_async loop and its state (fedsim.protocols.fedbuff)

    # ---------------------------------------------------------------- hooks
    def select(self, r: int) -> list[str]:
        """Online clients with data, ``ceil(clients_per_round * over_selection)`` drawn uniformly
        (stream ``selection``) with common random numbers (:func:`~fedsim.protocols.base.crn_select`):
        two runs that differ only in their policy select the same clients in every round in
        which the same clients are online."""
        w, cfg = self.world, self.cfg
        self._last_load = np.zeros(self.E)
        self.last_staleness = {}
        # a client without training data has nothing to contribute (skewed partitions can leave some empty)
        online = [w.is_online(c) and w.num_samples(c) > 0 for c in w.clients]
        n_sel = min(sum(online), math.ceil(cfg.clients_per_round * cfg.over_selection))
        return crn_select(self.rng_select, w.clients, online, n_sel)

    def assign(self, r: int, selected: list[str]) -> dict[str, list[int]]:
        """Capacity estimates -> expert budgets k_c -> the alignment policy's assignment."""
        w, s, cfg = self.world, self.s, self.cfg
        estimates = {c: self.estimator.estimate(c) for c in selected}
        budgets = {c: self.budget(c, estimates[c]) for c in selected}
        needed = min(cfg.min_completions or cfg.clients_per_round, len(selected))
        ctx = self.acct.assign_context(estimates, cfg.deadline_s, s.alignment.capacity.safety_margin, {c: w.num_samples(c) for c in selected}, needed)
        return self.policy.assign(selected, budgets, self.align, self.rng_policy, ctx)

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
        w = self.world
        m = dict(w.evaluate(self.model, self.global_state))
        m.update(w.evaluate_alignment(self.model, self.global_state, np.asarray(self.align.fitness_rows(w.clients)), self.trained))
        return m

    def on_end(self) -> None:
        """Record each client's personalised accuracy (table ``personal``)."""
        self.world.personalised_accuracy(self.model, self.global_state)

    def final_state(self) -> dict[str, Any]:
        """The global model's state dict."""
        return self.global_state

    def budget(self, c: str, est: Any) -> int:
        """Expert budget k_c of client ``c`` from the server's estimate."""
        k = self.acct.budget(est, self.world.num_samples(c), self.cfg.deadline_s, self.s.alignment.capacity.safety_margin)
        cap = self.s.alignment.max_experts_per_client
        return min(k, cap) if cap is not None else k

    # -------------------------------------------------------------- client
    def new_outcome(self, c: str, task: list[int], r: int) -> ClientOutcome:
        """Outcome with the client's sample count and serving base station at dispatch."""
        w = self.world
        return ClientOutcome(c, r, task, float(self.env.now), num_samples=w.num_samples(c), bs=w.serving_bs(c))

    def client_round(self, o: ClientOutcome):  # noqa: ANN201 - SimPy process body
        """One client's round: download -> memory check -> train -> upload."""
        w = self.world
        c, r, experts = o.client, o.round, o.experts
        down = self.acct.payload_bytes(experts)
        up = down if self.cfg.train_shared else self.acct.payload_bytes(experts, shared=False)
        flops = self.acct.job_flops(len(experts), o.num_samples)
        mem = self.acct.memory_bytes(len(experts))
        o.flops = flops
        phase: simpy.Process | None = None
        t_phase = float(self.env.now)
        try:
            o.phase, t_phase = "download", float(self.env.now)
            phase = w.transfer(w.server, c, down, r, "download")
            res = yield phase
            o.bytes_down += res.delivered_bytes
            o.t_download_s = self.env.now - t_phase
            if not res.completed:
                o.status = w.cause_status(res.cause)
                return
            o.phase, t_phase = "compute", float(self.env.now)
            phase = w.compute(c, flops, r, mem)
            cres = yield phase
            o.t_compute_s = self.env.now - t_phase
            if not cres.completed:
                o.status = w.cause_status(cres.cause)
                return
            o.phase, t_phase = "upload", float(self.env.now)
            phase = w.transfer(c, w.server, up, r, "upload")
            res = yield phase
            o.bytes_up += res.delivered_bytes
            o.t_upload_s = self.env.now - t_phase
            if not res.completed:
                o.status = w.cause_status(res.cause)
                return
            o.status = "completed"
        except simpy.Interrupt as intr:
            cause = intr.cause
            if phase is not None and phase.is_alive:
                phase.interrupt(cause)
                res = yield phase
                moved = getattr(res, "delivered_bytes", 0.0)
                if o.phase == "download":
                    o.bytes_down += moved
                elif o.phase == "upload":
                    o.bytes_up += moved
            dt = self.env.now - t_phase
            if o.phase == "download":
                o.t_download_s = dt
            elif o.phase == "compute":
                o.t_compute_s = dt
            elif o.phase == "upload":
                o.t_upload_s = dt
            o.status = w.cause_status(cause)

    # ---------------------------------------------------------- aggregation
    def aggregate(self, r: int, arrived: list[str]) -> list[Any]:
        """Run the arrived clients' training jobs, FedAvg them into the global state,
        update fitness, usage and capacity estimates; returns the updates (without
        their weights: FedAvg runs inside the replay seam, see :meth:`fold`)."""
        jobs = self.jobs(arrived, r)
        if not jobs:
            return []
        res, updates = self.world.run_jobs(self.executor, jobs, reduce=self.fold)
        self.fedavg(updates, r, res)
        return updates

    def jobs(self, arrived: list[str], r: int) -> list[Any]:
        """The training jobs of the clients whose uploads arrived, on the current global state."""
        return [self.world.train_job(c, r, self.global_state, self.outcomes[c].experts, self.cfg.train_shared) for c in arrived]

    def train(self, arrived: list[str], r: int) -> list[Any]:
        """Run the training jobs of the clients whose uploads arrived (``training.executor``, through the world's replay seam)."""
        return self.world.run_jobs(self.executor, self.jobs(arrived, r))

    def fold(self, updates: list[Any]) -> tuple[Any, list[Any]]:
        """Pure: FedAvg of ``updates`` into the current global state
        (:class:`~fedsim.learning.aggregation.AggregationResult`) and the updates
        without their weights (what the alignment feedback needs)."""
        import dataclasses

        from fedsim.learning.aggregation import aggregate

        res = aggregate(self.global_state, updates, self.E)
        return res, [dataclasses.replace(u, state={}) for u in updates]

    def fedavg(self, updates: list[Any], r: int, res: Any = None) -> None:
        """FedAvg into the global state (or take ``res``, the FedAvg already done
        by :meth:`fold`), then update fitness, usage and capacity estimates."""
        if res is None:
            res = self.fold(updates)[0]
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
                mean_gate_prob=np.asarray(u.mean_gate_prob, dtype=float),
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
            mem = self.acct.memory_bytes(len(o.experts)) if o.experts else None
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

    # ------------------------------------------------------------- modes
    def serve(self):  # noqa: ANN201 - SimPy process body
        """``aggregation: sync``: the base's round loop; ``async`` / ``semi_async``: :mod:`fedsim.protocols.fedbuff`."""
        if self.cfg.aggregation == "sync":
            return (yield from super().serve())
        from fedsim.protocols.fedbuff import BufferedLoop

        self.buffered = BufferedLoop(self)
        return (yield from self.buffered.serve())
