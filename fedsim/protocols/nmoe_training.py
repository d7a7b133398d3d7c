"""nmoe's three training stages as SimPy processes on the world's clock.

The learning is :mod:`fedsim.learning.nmoe_steps` (real PyTorch, zero
simulated time, on the inputs fixed at dispatch); the seconds and bytes are
the exchanges of :mod:`fedsim.protocols.nmoe_stages` over the world's flow
network and devices. Costs come from the actual modules
(:mod:`fedsim.learning.accounting`): payload bytes are the tensors sent,
FLOPs forward (+ backward when training) per sample, memory as in fedmoe.

Stage 1 (``run.rounds`` rounds, aggregator ``protocol.nmoe.server``, every
client online at the round's start selected):

- ``fedce``: one exchange per round: download the classifier (extractor +
  predictor head), ``local_epochs`` of training (``n_c`` samples), upload it.
- ``fedsc``: two exchanges per round. *Share*: download the extractor +
  projection head, one forward pass over the local data, upload the
  ``proj_dim x proj_dim`` float32 correlation matrix (DP-noised).
  *Train*: download the weighted sum of the others' matrices (one
  ``proj_dim x proj_dim`` float32 matrix; only clients whose share arrived
  take part), ``local_epochs`` of training on two augmented views (2x the
  per-sample FLOPs), upload the extractor + head.

Stage 2 (one "round"): every client extracts the features of its local data
(forward FLOPs) and trains its expert for ``expert_epochs`` on its own device;
no bytes, except with ``fedgate``, where each client then uploads its expert
to the aggregator (for the scoring below). A client whose leg failed keeps its
initial expert (which the aggregator can rebuild: the stage-1 head for fedce,
a seeded init for fedsc).

Stage 3 by gate:

- ``rangate``: nothing to train, nothing moved (one row of zero cost).
- ``rollgate``: ``gate_rounds`` passes; in each the gate hops client 0 -> 1 ->
  ... -> K-1 (client -> client through the flow network, the gate's bytes),
  each receiver training it for ``gate_local_epochs``. A client that cannot
  receive or finish in time is skipped: the gate stays with its holder (so a
  holder that goes offline takes the gate with it: the hops fail, as
  dropouts, until it is back).
- ``fedgate``: first a *scoring* round: each client downloads the other
  ``K - 1`` experts from the aggregator (which collected them in stage 2;
  downloading experts is cheaper here than sending the latents of all its
  samples to every owner and back, and does not need the owners online) and
  evaluates every expert on its features (forward FLOPs); a client whose
  scoring did not complete cannot train the gate. Then
  ``gate_rounds`` exchanges with the aggregator: download the gate, train it
  locally, upload it; the round's clients are the learning stage's random
  selection, and only those whose leg completed are averaged.

Stage semantics (``protocol.nmoe.stage_deadline_s``). ``null``: every stage
round above is one attempt; a client offline at its start (or dropped, late,
out of memory) misses it, so e.g. its expert stays at its initial state (the
availability ablation). A number: the paper's semantics, a stage round
completes when every client has done its part; the clients whose part did not
complete are retried every ``stage_retry_s`` (those online then; a RollGate hop
waits for its receiver) until all are done or ``stage_deadline_s`` after the
round began, an attempt's own deadline cut to what is left
(:meth:`NMoETraining._until_all`). The seconds spent waiting between attempts
are ``nmoe_eval.retry_wait_s``; the experts stage 2 left untrained
``nmoe_eval.experts_untrained``. With ``min_completions`` there are no retries.

Table ``rounds``: one row per stage round (``round`` numbers all training
rounds of the run in order, ``stage`` ``extractor`` / ``experts`` / ``gate``,
``stage_round`` the round within its stage, ``phase`` the method: fedce,
fedsc, experts, rangate, rollgate, fedgate_scoring, fedgate), with the
exchanges' seconds and bytes, selected / completed / stragglers / dropouts /
ooms / skipped (a client counted once, by its last leg of the last attempt), ``t_wait_s``, the
stage's ``loss`` (stage 1: mean local loss; gate: RollGate's pseudo-label
cross-entropy or FedGate's mixture NLL over all clients; NaN otherwise),
``dp_epsilon`` (FedSC: epsilon spent so far, composed over rounds by an RDP
accountant) and, on the last row, the trained NMoE's ``accuracy`` / ``f1`` /
``auc`` on the global test set. The ``transfer`` / ``compute`` /
``client_lost`` events of a stage round carry that row's ``round`` and a tag
``nmoe_s<stage>_<what>``.
"""

from __future__ import annotations

import math
from typing import Any

from fedsim.protocols.nmoe_stages import STATUSES, ExchangeResult, Leg, StageRunner, StageSystems

__all__ = ["NMoETraining", "StageCosts", "STAGES"]

#: ``rounds.stage`` of the three training stages.
STAGES = {1: "extractor", 2: "experts", 3: "gate"}


class StageCosts:
    """Bytes, FLOPs and memory of each stage's work, from the actual modules."""

    def __init__(self, cfg: Any, tc: Any, optimizer: str) -> None:
        from fedsim.learning.accounting import (
            flops_per_sample,
            payload_bytes,
            state_bytes,
            training_memory_bytes,
        )
        from fedsim.learning.models import Expert, MoEClassifier
        from fedsim.learning.nmoe import classifier_cfg

        head_classes = cfg.num_classes if tc.extractor == "fedce" else tc.proj_dim
        clf = MoEClassifier(classifier_cfg(cfg, num_classes=head_classes))
        self.model_bytes = float(payload_bytes(clf, [0]))
        self.train_flops = float(flops_per_sample(clf, cfg.input_shape, train=True))
        self.forward_flops = float(flops_per_sample(clf, cfg.input_shape, train=False))
        self.train_memory = float(training_memory_bytes(clf, tc.batch_size, cfg.input_shape, optimizer, 1, momentum=tc.momentum))
        self.corr_bytes = 4.0 * tc.proj_dim * tc.proj_dim
        base = MoEClassifier(classifier_cfg(cfg))
        self.extract_flops = float(flops_per_sample(base, cfg.input_shape, experts_active=0, train=False))
        ex = Expert(cfg)
        self.expert_bytes = float(state_bytes(ex.state_dict()))
        self.expert_train_flops = float(flops_per_sample(ex, (cfg.feature_dim,), train=True))
        self.expert_forward_flops = float(flops_per_sample(ex, (cfg.feature_dim,), train=False))
        self.expert_memory = float(training_memory_bytes(ex, tc.batch_size, (cfg.feature_dim,), "adam"))
        self.gate_cfg = cfg

    def gate(self, num_experts: int, batch_size: int) -> tuple[float, float, float]:
        """``(bytes, train FLOPs per sample, training memory)`` of the learned gate."""
        from fedsim.learning.accounting import flops_per_sample, state_bytes, training_memory_bytes
        from fedsim.learning.nmoe_gates import gate_module

        g = gate_module(self.gate_cfg, num_experts)
        fd = (self.gate_cfg.feature_dim,)
        return float(state_bytes(g.state_dict())), float(flops_per_sample(g, fd, train=True)), float(training_memory_bytes(g, batch_size, fd, "sgd"))


class NMoETraining:
    """The three stages of one nmoe run (module docstring)."""

    def __init__(self, proto: Any, clients_data: list[Any], tc: Any, model_config: Any, seed: int, cache: dict | None = None) -> None:
        self.p, self.cd, self.tc, self.cfg, self.seed = proto, clients_data, tc, model_config, seed
        self.cache = cache  # learning results by participants (bench: several gates on one world)
        self.env, self.rec = proto.env, proto.rec
        self.clients: list[str] = list(proto.clients)
        self.server: str = proto.server
        self.ncfg = proto.cfg
        self.sys = StageSystems(proto.systems)
        self.run = StageRunner(self.env, self.rec, self.sys)
        self.costs = StageCosts(model_config, tc, proto.trainer.train_config.optimizer)
        self.rows: list[dict[str, Any]] = []
        self.bytes_moved = 0.0
        self.total_rounds = tc.rounds + 1 + {"rangate": 1, "rollgate": tc.gate_rounds, "fedgate": tc.gate_rounds + 1}[tc.gate]
        self.n = {c: int(d.n) for c, d in zip(self.clients, self.cd)}
        self.ext: Any = None
        self.model: Any = None
        self.info: dict[str, Any] = {}
        self.stage1_key: tuple | None = None  # the cache key of stage 1's learning (stage 2's key starts with it)

    # ------------------------------------------------------------- records
    def _row(self, stage: int, stage_round: int, phase: str, res: list[ExchangeResult], t0: float, loss: float, selected: int) -> None:
        """One ``rounds`` row from the exchanges of one stage round (a client
        counts once: its status is that of its last leg)."""
        status: dict[str, str] = {}
        last: dict[str, Leg] = {}
        for x in res:
            for c, g in x.legs.items():
                status[c] = g.status
                last[c] = g
        counts = {s: sum(1 for v in status.values() if v == s) for s in STATUSES}
        up = float(sum(x.bytes_up for x in res))
        down = float(sum(x.bytes_down for x in res))
        self.bytes_moved += up + down
        t1 = float(self.env.now)
        done = [g for g in last.values() if g.status == "completed"]
        g = len(self.rows)
        self.rows.append({
            "round": g, "t_start_s": t0, "t_end_s": t1, "duration_s": t1 - t0,
            "accuracy": math.nan, "f1": math.nan, "auc": math.nan,
            "selected": selected, "completed": counts["completed"], "stragglers": counts["straggler"],
            "dropouts": counts["dropout"], "ooms": counts["oom"], "skipped": counts["skipped"],
            "bytes_up": up, "bytes_down": down, "clients_per_expert_cv": math.nan,
            **{f"t_{ph}_s": (float(sum(x.seconds.get(ph, 0.0) for x in done) / len(done)) if done else math.nan) for ph in ("download", "compute", "upload")},
            "t_wait_s": float(sum(t1 - x.t_end_s for x in done) / len(done)) if done else math.nan,
            "t_server_s": 0.0, "online": sum(1 for c in self.clients if self.sys.is_online(c)),
            "stage": STAGES[stage], "loss": float(loss), "stage_round": stage_round, "phase": phase, "dp_epsilon": math.nan,
        })
        self.rec.event(t1, "round_end", round=g, seconds=t1 - t0, bytes=up + down, phase=phase)
        self.p.progress(round=g + 1, rounds=self.total_rounds, t_s=t1, bytes=self.bytes_moved)

    def _online(self) -> list[str]:
        return [c for c in self.clients if self.n[c] > 0]

    def _idx(self, names: list[str]) -> list[int]:
        pos = {c: i for i, c in enumerate(self.clients)}
        return sorted(pos[c] for c in names)

    def _exchange(self, stage: int, r: int, clients: list[str], down: float, flops_per_sample: float, mem: float, up: float, tag: str, epochs: float = 1.0, *, t0: float | None = None) -> Any:
        """The stage round's exchange with ``clients``, with the retries of
        :meth:`_until_all`; returns the attempts (``ExchangeResult`` list)."""

        def attempt(cs: list[str], deadline_s: float) -> Any:
            return (yield from self.run.exchange(
                stage, len(self.rows), self.server, cs,
                down_bytes=lambda c: down, flops=lambda c: epochs * self.n[c] * flops_per_sample,
                memory_bytes=lambda c: mem, up_bytes=lambda c: up,
                deadline_s=deadline_s, k_needed=self.ncfg.min_completions, tag=tag,
            ))

        return (yield from self._until_all(clients, attempt, t0))

    def _until_all(self, clients: list[str], attempt: Any, t0: float | None = None) -> Any:
        """Stage semantics (``protocol.nmoe.stage_deadline_s``). One attempt with
        ``clients`` (``attempt(clients, deadline_s)``, a process body returning an
        ``ExchangeResult``); with a stage deadline, the clients whose part did
        not complete are retried every ``stage_retry_s`` (those online then)
        until all are done or ``stage_deadline_s`` after ``t0`` (the stage
        round's start; default now); an attempt's own deadline is cut to what
        is left. The seconds waited between attempts add to ``info["retry_wait_s"]``.
        Returns the attempts in order."""
        start = float(self.env.now) if t0 is None else t0
        dl = self.ncfg.stage_deadline_s
        first_deadline = self.ncfg.deadline_s if dl is None else min(self.ncfg.deadline_s, max(start + dl - float(self.env.now), 1e-9))
        out = [(yield from attempt(list(clients), first_deadline))]
        if dl is None or self.ncfg.min_completions is not None:
            return out
        done = set(out[0].completed)
        retry = float(self.ncfg.stage_retry_s)
        while True:
            left = [c for c in clients if c not in done]
            if not left or float(self.env.now) + retry >= start + dl:
                return out
            yield self.env.timeout(retry)
            self.info["retry_wait_s"] = self.info.get("retry_wait_s", 0.0) + retry
            online = [c for c in left if self.sys.is_online(c)]
            if online:
                res = yield from attempt(online, min(self.ncfg.deadline_s, start + dl - float(self.env.now)))
                out.append(res)
                done |= set(res.completed)

    @staticmethod
    def _completed(attempts: list[ExchangeResult]) -> list[str]:
        """Clients whose part completed in any of the attempts, sorted."""
        return sorted({c for x in attempts for c in x.completed})

    # -------------------------------------------------------------- stages
    def serve(self) -> Any:
        """SimPy process: stage 1, 2, 3, then the assembled model's evaluation."""
        self.p.progress(round=0, rounds=self.total_rounds, t_s=float(self.env.now), bytes=0.0)
        yield from self.stage1()
        self.p.checkpoint(1, force=True)  # any moment is replay-safe: a stage is a natural one
        yield from self.stage2()
        self.p.checkpoint(2, force=True)
        yield from self.stage3()

    def stage1(self) -> Any:
        """Federated feature extractor (``fedce`` or ``fedsc``). The exchanges
        are simulated first (their timing does not depend on the weights), then
        the learning runs round by round on each round's participants; with a
        ``cache`` the result of identical participants is reused."""
        tc, c = self.tc, self.costs
        fedsc = tc.extractor == "fedsc"
        self.rec.event(self.env.now, "stage_start", phase=tc.extractor)
        plan: list[tuple[list[int], list[int]]] = []
        first = len(self.rows)
        for r in range(tc.rounds):
            t0 = float(self.env.now)
            sel = self._online()
            if fedsc:
                share = yield from self._exchange(1, r, sel, c.model_bytes, c.forward_flops, c.train_memory, c.corr_bytes, "share", t0=t0)
                sharers = self._completed(share)
                train = yield from self._exchange(1, r, sharers, c.corr_bytes, 2.0 * c.train_flops, c.train_memory, c.model_bytes, "train", tc.local_epochs, t0=t0)
                plan.append((self._idx(sharers), self._idx(self._completed(train))))
                self._row(1, r, "fedsc", [*share, *train], t0, math.nan, len(sel))
            else:
                res = yield from self._exchange(1, r, sel, c.model_bytes, c.train_flops, c.train_memory, c.model_bytes, "train", tc.local_epochs, t0=t0)
                plan.append(([], self._idx(self._completed(res))))
                self._row(1, r, "fedce", res, t0, math.nan, len(sel))
        self.ext, eps = self._learn_stage1(plan)
        for row, h in zip(self.rows[first:], self.ext.history):
            row["loss"] = float(h["loss"])
            row["dp_epsilon"] = float(h.get("epsilon", math.nan))
        self.info["dp_epsilon"], self.info["dp_epsilon_exact"] = eps

    def _learn_stage1(self, plan: list[tuple[list[int], list[int]]]) -> tuple[Any, tuple[float, float]]:
        """Stage-1 learning for ``plan`` (per round: sharers, trainers); cached by plan.
        Returns the extractor and FedSC's epsilon spent (RDP, PRV; NaN for fedce)."""
        from fedsim.learning.nmoe_steps import FedCESteps, FedSCSteps

        tc = self.tc
        key = ("stage1", tc.extractor, tuple((tuple(a), tuple(b)) for a, b in plan))
        self.stage1_key = key  # stage 2's cache key starts with it, on a hit as on a miss
        if self.cache is not None and key in self.cache:
            return self.cache[key]

        def learn() -> tuple[Any, tuple[float, float]]:
            if tc.extractor == "fedsc":
                steps: Any = FedSCSteps(self.cd, self.cfg, tc, self.seed, dataset=self.p.trainer.dataset.name)
                for r, (sharers, trainers) in enumerate(plan):
                    steps.share(r, sharers)
                    steps.round(r, trainers)
                return steps.result(), (steps.epsilon_spent(), steps.epsilon_spent_exact())
            # training.executor runs each round's jobs (FedSC's loss is not a TrainJob's)
            steps = FedCESteps(self.cd, self.cfg, tc, self.seed, executor=self.p.trainer.executor())
            for r, (_, trainers) in enumerate(plan):
                steps.round(r, trainers)
            return steps.result(), (math.nan, math.nan)

        # the real learning goes through the replay seam (checkpoint / resume)
        out = self.p.trainer.replayed(f"nmoe/stage1/{tc.extractor}", learn)
        if self.cache is not None:
            self.cache[key] = out
        return out

    def stage2(self) -> Any:
        """Local experts: feature extraction + ``expert_epochs`` on each device
        (+ the expert's upload with fedgate)."""
        from fedsim.learning.nmoe import extract_features, train_experts

        tc, c = self.tc, self.costs
        t0 = float(self.env.now)
        sel = self._online()
        up = c.expert_bytes if tc.gate == "fedgate" else 0.0

        def attempt(cs: list[str], deadline_s: float) -> Any:
            return (yield from self.run.exchange(
                2, len(self.rows), self.server, cs, down_bytes=lambda _c: 0.0,
                flops=lambda x: self.n[x] * (c.extract_flops + tc.expert_epochs * c.expert_train_flops),
                memory_bytes=lambda _c: c.expert_memory, up_bytes=lambda _c: up,
                deadline_s=deadline_s, k_needed=None, tag="experts",
            ))

        res = yield from self._until_all(sel, attempt)
        done = self._idx(self._completed(res))
        self.info["experts_untrained"] = len(self.clients) - len(done)
        key = (self.stage1_key, "stage2", tuple(done))
        if self.cache is not None and key[0] is not None and key in self.cache:
            self.feats, self.experts = self.cache[key]
        else:

            def learn() -> tuple[Any, Any]:
                feats = [extract_features(self.cfg, self.ext.backbone, d.x) for d in self.cd]
                init = self.ext.head if self.ext.kind == "fedce" else None
                return feats, train_experts(feats, [d.y for d in self.cd], self.cfg, tc, self.seed, init=init, trained=set(done))

            self.feats, self.experts = self.p.trainer.replayed("nmoe/stage2", learn)
            if self.cache is not None and key[0] is not None:
                self.cache[key] = (self.feats, self.experts)
        self.ys = [d.y for d in self.cd]
        self._row(2, 0, "experts", res, t0, math.nan, len(sel))

    def stage3(self) -> Any:
        """The gate (``rangate`` / ``rollgate`` / ``fedgate``), then the assembled model."""
        from fedsim.learning.nmoe_gates import RanGate, gate_module
        from fedsim.learning.nmoe_model import NMoEModel
        from fedsim.rng import RngStreams

        tc = self.tc
        K = len(self.clients)
        if tc.gate == "rangate":
            t0 = float(self.env.now)
            gate: Any = RanGate(K, tc.rangate_probs)
            self._row(3, 0, "rangate", [], t0, math.nan, 0)
        elif tc.gate == "rollgate":
            gate = gate_module(self.cfg, K)
            gate.load_state_dict((yield from self.rollgate()))
        else:
            gate = gate_module(self.cfg, K)
            gate.load_state_dict((yield from self.fedgate()))
        self.model = NMoEModel(self.cfg, self.ext.backbone, gate, self.experts, tc.top_k, seed=RngStreams(self.seed).seed_int("nmoe/rangate/eval"))
        self.model.eval()

    def rollgate(self) -> Any:
        """RollGate's passes of hops (module docstring); returns the gate state."""
        from fedsim.learning.nmoe_steps import RollGateSteps

        tc = self.tc
        steps = RollGateSteps(self.feats, self.cfg, tc, self.seed)
        gbytes, gflops, gmem = self.costs.gate(len(self.clients), tc.batch_size)
        holder = self.clients[0]
        first = True
        for r in range(tc.gate_rounds):
            t0 = float(self.env.now)
            hops: list[ExchangeResult] = []
            n_sel = 0
            for i, c in enumerate(self.clients):
                if self.n[c] == 0:
                    continue
                n_sel += 1

                def attempt(cs: list[str], deadline_s: float, c: str = c, src: str = holder if not first else c) -> Any:
                    th = float(self.env.now)
                    leg = yield from self.run.hop(3, len(self.rows), src, c, gbytes, tc.gate_local_epochs * self.n[c] * gflops, gmem, deadline_s, "rollgate")
                    return ExchangeResult({c: leg}, th, float(self.env.now))

                tries = yield from self._until_all([c], attempt)
                hops += tries
                if self._completed(tries):
                    # the hop's training through the replay seam: the stepper after the hop is the result
                    steps = self.p.trainer.replayed(f"nmoe/rollgate/{r}/{i}", lambda s=steps, r=r, i=i: (s.hop(r, i), s)[1])
                    holder, first = c, False
            self._row(3, r, "rollgate", hops, t0, steps.loss(), n_sel)
        return steps.state()

    def fedgate(self) -> Any:
        """FedGate's scoring round, then its FedAvg rounds; returns the gate state."""
        from fedsim.learning.nmoe_steps import FedGateSteps

        tc, c = self.tc, self.costs
        K = len(self.clients)
        t0 = float(self.env.now)
        sel = self._online()
        score = yield from self._exchange(3, 0, sel, (K - 1) * c.expert_bytes, K * c.expert_forward_flops, 0.0, 0.0, "scoring")
        scored = set(self._completed(score))
        steps = FedGateSteps(self.feats, self.ys, self.experts, self.cfg, tc, self.seed)
        self._row(3, 0, "fedgate_scoring", score, t0, steps.loss(), len(sel))
        gbytes, gflops, gmem = c.gate(K, tc.batch_size)
        for r in range(tc.gate_rounds):
            t0 = float(self.env.now)
            chosen = [self.clients[i] for i in steps.select(r)]
            able = [x for x in chosen if x in scored and self.n[x] > 0]
            res = yield from self._exchange(3, r, able, gbytes, gflops, gmem, gbytes, "fedgate", tc.gate_local_epochs)
            for x in chosen:  # chosen but unscored (or without data): counted as skipped
                if x not in res[0].legs:
                    res[0].legs[x] = Leg(x, t0, status="skipped", t_end_s=t0)
            idx = self._idx(self._completed(res))
            # the round's training through the replay seam: (loss, the stepper after the round)
            loss, steps = self.p.trainer.replayed(f"nmoe/fedgate/{r}", lambda s=steps, r=r, idx=idx: (s.round(r, idx), s))
            self._row(3, r + 1, "fedgate", res, t0, loss, len(chosen))
        self.info["participants"] = steps.history
        return steps.gate_state

    # ------------------------------------------------------------ results
    def finish(self, metrics: dict[str, float]) -> None:
        """Put the assembled model's global-test metrics on the last row and write the rows."""
        if self.rows:
            self.rows[-1].update(accuracy=metrics["accuracy"], f1=metrics["f1"], auc=metrics["auc"])
        for row in self.rows:
            self.p.record_rounds_row(**row)

    def stage_totals(self) -> dict[str, float]:
        """Simulated seconds and bytes of each stage and in total (``train_s``, ``train_bytes``)."""
        out: dict[str, float] = {}
        for st in (1, 2, 3):
            rows = [r for r in self.rows if r["stage"] == STAGES[st]]
            out[f"stage{st}_s"] = float(sum(r["duration_s"] for r in rows))
            out[f"stage{st}_bytes"] = float(sum(r["bytes_up"] + r["bytes_down"] for r in rows))
        out["train_s"] = out["stage1_s"] + out["stage2_s"] + out["stage3_s"]
        out["train_bytes"] = out["stage1_bytes"] + out["stage2_bytes"] + out["stage3_bytes"]
        return out
