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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from fedsim.protocols.base import Protocol

__all__ = ["FedMoE", "ClientOutcome", "Deadline"]


class Deadline:
    """Interrupt cause: the round ended before the client finished (a straggler)."""

    def __repr__(self) -> str:
        return "Deadline()"


@dataclass
class ClientOutcome:
    """What happened to one selected client in one round (times in s, sizes in bytes)."""

    client: str
    round: int
    experts: list[int]
    t_dispatch_s: float
    status: str = "running"
    t_download_s: float = 0.0
    t_compute_s: float = 0.0
    t_upload_s: float = 0.0
    t_end_s: float = math.nan
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    flops: float = 0.0
    num_samples: int = 0
    bs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class FedMoE(Protocol):
    """The fedmoe round loop (see module docstring)."""

    name = "fedmoe"

    def __init__(self, world: Any, progress: Any = None) -> None:
        super().__init__(world, progress)
        from fedsim.alignment.policies import make_policy, policy_params
        from fedsim.learning.executors import SequentialExecutor

        s = world.scenario
        self.s = s
        self.cfg = s.protocol.fedmoe
        self.E = s.model.num_experts
        self.model = world.new_model()
        self.global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.align = world.new_alignment_state()
        self.policy = make_policy(s.alignment.policy, **policy_params(s.alignment))
        self.estimator = world.new_capacity_estimator()
        self.executor = SequentialExecutor()
        self.acct = world.accounting(self.model)
        self.rng_select = self.sim.rng.numpy("selection")
        self.rng_policy = self.sim.rng.numpy("policy")
        self.bytes_moved = 0.0
        self._procs: dict[str, simpy.Process] = {}
        self._outcomes: dict[str, ClientOutcome] = {}
        self._k_event: simpy.Event | None = None
        self._k_needed = 0
        self._completed = 0
        self._online_at_selection = 0  # clients online when round r selected its clients
        self._last_load = np.zeros(self.E)  # samples routed to each expert in the last aggregation

    # ----------------------------------------------------------------- run
    def run(self) -> None:
        """Run all rounds (or until ``run.horizon_s``)."""
        server = self.env.process(self.serve())
        self.env.run(until=server)
        self.world.finish()

    def serve(self):  # noqa: ANN201 - SimPy process
        """The server process: the round loop."""
        s = self.s
        rounds = s.run.rounds
        self.progress(round=0, rounds=rounds, t_s=0.0, bytes=0.0)
        for r in range(rounds):
            if s.run.horizon_s is not None and self.env.now >= s.run.horizon_s:
                break
            yield from self.play_round(r)
        self.world.personalised_accuracy(self.model, self.global_state)

    # --------------------------------------------------------------- round
    def play_round(self, r: int):  # noqa: ANN201 - SimPy process body
        """One round: select, budget, assign, dispatch, wait, aggregate, evaluate."""
        w, s, cfg = self.world, self.s, self.cfg
        t0 = float(self.env.now)
        self.rec.event(t0, "round_start", round=r)
        # a client without training data has nothing to contribute (skewed partitions can leave some empty)
        self._online_at_selection = sum(1 for c in w.clients if w.is_online(c))  # the rounds table's ``online``
        online = [c for c in w.clients if w.is_online(c) and w.num_samples(c) > 0]
        n_sel = min(len(online), math.ceil(cfg.clients_per_round * cfg.over_selection))
        idx = self.rng_select.choice(len(online), size=n_sel, replace=False) if n_sel else []
        selected = sorted(online[i] for i in idx)

        estimates = {c: self.estimator.estimate(c) for c in selected}
        budgets = {c: self.budget(c, estimates[c]) for c in selected}
        ctx = self.acct.assign_context(estimates, cfg.deadline_s, s.alignment.capacity.safety_margin, {c: w.num_samples(c) for c in selected})
        assignment = self.policy.assign(selected, budgets, self.align, self.rng_policy, ctx) if selected else {}

        self._outcomes = {}
        self._procs = {}
        self._completed = 0
        self._last_load = np.zeros(self.E)
        dispatched = [c for c in selected if assignment.get(c)]
        for c in selected:
            if not assignment.get(c):
                self._outcomes[c] = ClientOutcome(c, r, [], t0, status="skipped", t_end_s=t0, bs=w.serving_bs(c))
        self._k_needed = min(cfg.min_completions or cfg.clients_per_round, len(dispatched))
        self._k_event = self.env.event()
        for c in dispatched:
            proc = self.env.process(self.client_round(c, list(assignment[c]), r))
            self._procs[c] = proc

        if dispatched:
            waits = [self.env.timeout(cfg.deadline_s), self._k_event, self.env.all_of(list(self._procs.values()))]
            yield self.env.any_of(waits)
        else:
            yield self.env.timeout(min(cfg.deadline_s, 10.0))
        t_close = float(self.env.now)
        late = [p for p in self._procs.values() if p.is_alive]
        for p in late:
            p.interrupt(Deadline())
        if late:
            yield self.env.all_of(late)

        # aggregation: run the training jobs of clients whose upload arrived
        arrived = sorted(c for c, o in self._outcomes.items() if o.status == "completed")
        updates = self.train(arrived, r)
        if updates:
            self.aggregate(updates, r)
        if cfg.server_compute_s > 0:
            yield self.env.timeout(cfg.server_compute_s)
        t_end = float(self.env.now)

        acc = f1 = auc = math.nan
        if (r + 1) % s.evaluation.every_rounds == 0 or r == s.run.rounds - 1:
            m = w.evaluate(self.model, self.global_state)
            acc, f1, auc = m["accuracy"], m["f1"], m["auc"]
        self.record_round(r, t0, t_close, t_end, selected, assignment, updates, acc, f1, auc)
        self.rec.event(t_end, "round_end", round=r, seconds=t_end - t0)
        self.progress(round=r + 1, t_s=t_end, accuracy=acc, bytes=self.bytes_moved)

    def budget(self, c: str, est: Any) -> int:
        """Expert budget k_c of client ``c`` from the server's estimate."""
        k = self.acct.budget(est, self.world.num_samples(c), self.cfg.deadline_s, self.s.alignment.capacity.safety_margin)
        cap = self.s.alignment.max_experts_per_client
        return min(k, cap) if cap is not None else k

    # -------------------------------------------------------------- client
    def client_round(self, c: str, experts: list[int], r: int):  # noqa: ANN201 - SimPy process
        """One client's round: download -> memory check -> train -> upload."""
        w = self.world
        now = self.env.now
        o = ClientOutcome(c, r, experts, float(now), num_samples=w.num_samples(c), bs=w.serving_bs(c))
        self._outcomes[c] = o
        down = self.acct.payload_bytes(experts)
        up = down if self.cfg.train_shared else self.acct.payload_bytes(experts, shared=False)
        flops = self.acct.job_flops(len(experts), o.num_samples)
        mem = self.acct.memory_bytes(len(experts))
        o.flops = flops
        phase: simpy.Process | None = None
        phase_name = ""
        t_phase = float(now)
        try:
            phase_name, t_phase = "download", float(self.env.now)
            phase = w.transfer(w.server, c, down, r, "download")
            res = yield phase
            o.bytes_down += res.delivered_bytes
            o.t_download_s = self.env.now - t_phase
            if not res.completed:
                o.status = w.cause_status(res.cause)
                return
            phase_name, t_phase = "compute", float(self.env.now)
            phase = w.compute(c, flops, r, mem)
            cres = yield phase
            o.t_compute_s = self.env.now - t_phase
            if not cres.completed:
                o.status = w.cause_status(cres.cause)
                return
            phase_name, t_phase = "upload", float(self.env.now)
            phase = w.transfer(c, w.server, up, r, "upload")
            res = yield phase
            o.bytes_up += res.delivered_bytes
            o.t_upload_s = self.env.now - t_phase
            if not res.completed:
                o.status = w.cause_status(res.cause)
                return
            o.status = "completed"
            self._completed += 1
            if self._completed >= self._k_needed and self._k_event is not None and not self._k_event.triggered:
                self._k_event.succeed()
        except simpy.Interrupt as intr:
            cause = intr.cause
            if phase is not None and phase.is_alive:
                phase.interrupt(cause)
                res = yield phase
                moved = getattr(res, "delivered_bytes", 0.0)
                if phase_name == "download":
                    o.bytes_down += moved
                elif phase_name == "upload":
                    o.bytes_up += moved
            dt = self.env.now - t_phase
            if phase_name == "download":
                o.t_download_s = dt
            elif phase_name == "compute":
                o.t_compute_s = dt
            elif phase_name == "upload":
                o.t_upload_s = dt
            o.status = "straggler" if isinstance(cause, Deadline) else w.cause_status(cause)
        finally:
            o.t_end_s = float(self.env.now)
            self.bytes_moved += o.bytes_down + o.bytes_up
            if o.status not in ("completed",):
                # one row per lost client-round; the device already logged the oom / dropout itself
                self.rec.event(
                    self.env.now, "client_lost", node=c, round=r, bytes=o.bytes_down + o.bytes_up,
                    seconds=o.t_end_s - o.t_dispatch_s, phase=phase_name, status=o.status,
                )

    # ---------------------------------------------------------- aggregation
    def train(self, arrived: list[str], r: int) -> list[Any]:
        """Run the training jobs of the clients whose uploads arrived (reference executor)."""
        jobs = [self.world.train_job(c, r, self.global_state, self._outcomes[c].experts, self.cfg.train_shared) for c in arrived]
        return self.executor.run(jobs) if jobs else []

    def aggregate(self, updates: list[Any], r: int) -> None:
        """FedAvg into the global state, then update fitness, usage and capacity estimates."""
        from fedsim.alignment.state import Feedback
        from fedsim.learning.aggregation import aggregate

        res = aggregate(self.global_state, updates, self.E)
        self.global_state = res.state
        now = float(self.env.now)
        for cid in res.rejected:
            self.rec.event(now, "rejected_update", node=cid, round=r, reason="non-finite values")
        good = [u for u in updates if u.client_id not in set(res.rejected)]
        feedback = {
            u.client_id: Feedback(
                mean_gate_prob=np.asarray(u.mean_gate_prob, dtype=float),
                trained_experts=list(self._outcomes[u.client_id].experts),
                loss_first=float(u.loss_first),
                loss_last=float(u.loss_last),
                samples_per_expert=np.asarray(u.samples_per_expert, dtype=float),
            )
            for u in good
        }
        self.align.update_fitness(feedback)
        load = np.zeros(self.E)
        for u in good:
            load += np.asarray(u.samples_per_expert, dtype=float)
        self.align.update_usage(load)
        self._last_load = load
        for c, o in self._outcomes.items():
            if o.status == "completed":
                self.estimator.observe(
                    c,
                    download_s=o.t_download_s, download_bytes=o.bytes_down,
                    compute_s=o.t_compute_s, flops=o.flops,
                    upload_s=o.t_upload_s, upload_bytes=o.bytes_up,
                )
        self.rec.event(now, "aggregate", round=r, updates=len(good), rejected=len(res.rejected))

    # -------------------------------------------------------------- records
    def record_round(self, r, t0, t_close, t_end, selected, assignment, updates, acc, f1, auc) -> None:  # noqa: ANN001
        """Write the rounds, clients, assignments and experts rows of round ``r``."""
        from fedsim.alignment.policies import expert_load_cv

        w = self.world
        outs = [self._outcomes[c] for c in selected if c in self._outcomes]
        done = [o for o in outs if o.status == "completed"]
        count = {st: sum(1 for o in outs if o.status == st) for st in ("completed", "straggler", "dropout", "oom", "skipped")}

        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else math.nan

        self.rec.row(
            "rounds",
            round=r, t_start_s=t0, t_end_s=t_end, duration_s=t_end - t0,
            accuracy=acc, f1=f1, auc=auc,
            selected=len(selected), completed=count["completed"], stragglers=count["straggler"],
            dropouts=count["dropout"], ooms=count["oom"], skipped=count["skipped"],
            bytes_up=float(sum(o.bytes_up for o in outs)), bytes_down=float(sum(o.bytes_down for o in outs)),
            expert_load_cv=float(expert_load_cv({c: v for c, v in assignment.items() if v}, self.E)) if assignment else math.nan,
            t_download_s=mean([o.t_download_s for o in done]), t_compute_s=mean([o.t_compute_s for o in done]),
            t_upload_s=mean([o.t_upload_s for o in done]), t_wait_s=mean([t_close - o.t_end_s for o in done]),
            t_server_s=t_end - t_close,
            online=self._online_at_selection,
        )
        for o in outs:
            wasted = o.status != "completed"
            self.rec.row(
                "clients",
                round=r, client=o.client, device_class=w.device_class(o.client), bs=o.bs, k=len(o.experts),
                experts=",".join(str(e) for e in o.experts), status=o.status, t_dispatch_s=o.t_dispatch_s,
                t_download_s=o.t_download_s, t_compute_s=o.t_compute_s, t_upload_s=o.t_upload_s, t_end_s=o.t_end_s,
                latency_s=o.t_end_s - o.t_dispatch_s, bytes_down=o.bytes_down, bytes_up=o.bytes_up,
                wasted_s=(o.t_end_s - o.t_dispatch_s) if wasted else 0.0,
                wasted_bytes=(o.bytes_down + o.bytes_up) if wasted else 0.0,
                num_samples=o.num_samples, flops=o.flops,
            )
            for e in o.experts:
                self.rec.row("assignments", round=r, client=o.client, expert=int(e))
        load = self._last_load
        per_expert = np.zeros(self.E, dtype=int)
        for _c, ex in assignment.items():
            for e in ex:
                per_expert[e] += 1
        usage = np.asarray(self.align.usage, dtype=float)
        for e in range(self.E):
            self.rec.row("experts", round=r, expert=e, clients=int(per_expert[e]), samples=float(load[e]), usage=float(usage[e]))
