"""``nmoe``: Networked Mixture-of-Experts, trained in three stages, served without a server.

Training (:mod:`fedsim.protocols.nmoe_training`: SimPy processes on the
world's clock, every byte through the flow network, every second from the
device and channel models; the learning is real PyTorch from
:mod:`fedsim.learning.nmoe_steps` on the clients whose part arrived): stage 1
learns the shared feature extractor by FL (``fedce`` or ``fedsc``,
``run.rounds`` rounds of ``training.local_epochs``, aggregator
``protocol.nmoe.server``, ``deadline_s`` / ``min_completions`` closing; with
``stage_deadline_s`` a stage round retries its missing clients until every
client has done its part, the paper's semantics),
stage 2 every client's own expert on its local data, stage 3 the shared gate
(``rangate``, ``rollgate``, ``fedgate``). There is one expert per client
(expert i belongs to the i-th client in sorted id order), so
``model.num_experts`` is ignored; ``model.top_k`` is the number of experts a
request uses. Table ``rounds`` has one row per stage round; the trained model
is evaluated (table ``nmoe_eval``: accuracy / F1 / AUC on each client's own
test split and on the global test set, LR, FedSC's epsilon spent, and each
stage's simulated seconds and bytes).

Serverless inference (:class:`InferenceSim`, on the simulated clock): every
client issues requests as a Poisson process of rate
``protocol.nmoe.request_rate_per_s`` for ``inference_horizon_s`` seconds. A
request is a random sample of the client's own test split; it is routed with
the *real* extractor and gate (so the expert choice, LR and correctness are
the trained model's). Its life:

0. an arrival while the origin is offline (the systems part's ``is_online``) is dropped;
   the gate chooses among the experts whose owners are online at issue time
   (masked top-k; with ``channel_gate_weight`` > 0 the top-k of routing probability
   and predicted latency, :mod:`fedsim.protocols.nmoe_gate`);
1. extraction on the origin's compute queue: ``extract_flops / speed``;
2. for each chosen expert, in parallel: if remote, the latent
   (``feature_dim`` float32 = ``4 * feature_dim`` bytes) travels origin -> owner
   through ``transfer`` (the flow model: concurrent flows share links, so
   contention counts); it waits in the owner's compute queue (a
   ``simpy.Resource`` of capacity 1, FIFO) and runs for ``expert_flops / speed``;
   the answer (``num_classes`` float32) travels back. A local expert skips
   both transfers;
3. the origin combines the answers when the last branch is back.

Each request is one row of table ``requests``: ``request``, ``client``,
``t_s`` (issue time), ``latency_s`` (issue -> combined answer), ``t_extract_s``
(queue + extraction at the origin), and for the slowest branch (the critical
path) ``t_network_s`` (both transfers), ``t_queue_s`` (waiting for the owner's
compute), ``t_expert_s`` (expert compute); ``bytes`` (all transfers of the
request), ``experts`` (comma-separated expert indices), ``local`` (the origin's
own expert was among them), ``remote`` (number of remote experts),
``completed`` (every transfer completed), ``failed`` (branches whose transfer
failed, e.g. the owner was offline: the origin combines the answers it got),
``fail_reason`` (``""``, ``timeout``: no answer ``request_timeout_s`` after
issue, the request is ended there, e.g. a link in permanent outage; or the
failed transfer's status, e.g. ``dropout``) and ``correct`` (the combined
answer of all chosen experts is the true label; failed branches are not
discounted; a timed-out request is not correct).

Systems interface. The transfers are the systems part's
``transfer(src, dst, nbytes, round, tag)`` (a SimPy process returning an
object with ``delivered_bytes`` and ``completed``) and a client's speed is its
``speed_flops(c)`` (FLOP/s): :class:`~fedsim.parts.systems.Systems` of a built
run, or :class:`~fedsim.parts.systems.StarSystems`, the stand-in without a
topology (unit tests): every client has an uplink and a downlink of fixed
capacity to a switch, each a FIFO ``simpy.Resource`` (one flow at a time, so
queueing is the contention), plus a fixed one-way latency and a fixed speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import simpy
import torch

from fedsim.protocols.base import Protocol
from fedsim.protocols.nmoe_gate import LatencyEstimator, channel_aware_topk, gate_probs

__all__ = ["NMoE", "InferenceSim", "InferenceCosts", "latency_summary"]


@dataclass(frozen=True)
class InferenceCosts:
    """Per-request costs: ``extract_flops`` (extractor + gate forward on one
    sample), ``expert_flops`` (one expert's forward), ``latent_bytes`` (request
    payload to a remote expert), ``reply_bytes`` (its answer)."""

    extract_flops: float
    expert_flops: float
    latent_bytes: float
    reply_bytes: float


class InferenceSim:
    """Serverless NMoE inference traffic on a SimPy environment (module docstring).

    ``clients``: node ids, client i owns expert i. ``routes[c]``: a function
    ``(rng, allowed) -> (experts, correct)`` giving the experts (indices) a new
    request of client ``c`` uses and whether the combined answer is right;
    ``allowed`` is None or a bool list over experts (owners online).
    ``transfer(src, dst, nbytes, round, tag)``: a process returning an object
    with ``delivered_bytes`` and ``completed``. ``speed(c)``: FLOP/s of client
    ``c`` now. ``rngs[c]``: the numpy Generator of client ``c``'s arrivals and
    sample choices. ``online(c)`` (optional): whether ``c`` is online; an
    arrival at an offline client is dropped and counted in ``skipped_offline``.
    ``timeout_s`` (optional): a request unanswered this long after issue is
    ended (its transfers interrupted) and fails with reason ``timeout``;
    ``status_of`` (optional) names a failed transfer's cause.
    ``gate_weight`` (``protocol.nmoe.channel_gate_weight``, >= 0): with a positive
    weight the routes are called as ``(rng, allowed, penalty)``, ``penalty`` the
    channel-aware gate's ``w * L_e / T`` per expert (:mod:`fedsim.protocols.nmoe_gate`,
    needs ``timeout_s``; ``csi(node)``, optional, whether a node's access link has
    a rate now); 0 (default) is today's gate, called as before.
    Rows go to ``rec.row("requests", ...)``.

    Raises:
        ValueError: ``rate_per_s`` or ``horizon_s`` is not > 0, ``gate_weight`` < 0, or
            ``gate_weight`` > 0 without ``timeout_s``.
    """

    def __init__(
        self,
        env: simpy.Environment,
        rec: Any,
        clients: Sequence[str],
        routes: dict[str, Callable[..., tuple[list[int], bool]]],
        transfer: Callable[..., simpy.Process],
        speed: Callable[[str], float],
        costs: InferenceCosts,
        rate_per_s: float,
        horizon_s: float,
        rngs: dict[str, np.random.Generator],
        online: Callable[[str], bool] | None = None,
        timeout_s: float | None = None,
        status_of: Callable[[Any], str] | None = None,
        gate_weight: float = 0.0,
        csi: Callable[[str], bool] | None = None,
    ) -> None:
        if rate_per_s <= 0 or horizon_s <= 0:
            raise ValueError('"request_rate_per_s" and "inference_horizon_s" must be > 0')
        self.env, self.rec = env, rec
        self.clients = list(clients)
        self.routes, self.transfer, self.speed, self.costs = routes, transfer, speed, costs
        self.rate, self.horizon = float(rate_per_s), float(horizon_s)
        self.rngs = rngs
        self.online = online
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError('"request_timeout_s" must be > 0')
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.status_of = status_of
        if not gate_weight >= 0:
            raise ValueError('"channel_gate_weight" must be >= 0')
        self.gate_weight = float(gate_weight)
        self.estimator: LatencyEstimator | None = None
        if self.gate_weight > 0:  # the channel-aware gate (fedsim.protocols.nmoe_gate); 0: today's gate
            if self.timeout_s is None:
                raise ValueError('"channel_gate_weight" > 0 needs "request_timeout_s"')
            self.estimator = LatencyEstimator(self.clients, self.timeout_s, csi)
        self.skipped_offline = 0
        self.cpu = {c: simpy.Resource(env, capacity=1) for c in self.clients}
        self.pending: list[simpy.Process] = []
        self._next_id = 0
        self.t_start = float(env.now)

    def start(self) -> list[simpy.Process]:
        """Start one request generator per client (sorted order); returns them."""
        return [self.env.process(self.generate(c)) for c in sorted(self.clients)]

    def run(self) -> None:
        """Generate requests for ``horizon_s``, then wait for the in-flight ones."""
        gens = self.start()
        self.env.run(until=self.env.all_of(gens))
        while any(p.is_alive for p in self.pending):
            self.env.run(until=self.env.all_of([p for p in self.pending if p.is_alive]))

    def generate(self, c: str) -> Any:
        """Poisson arrivals of client ``c``'s requests until the horizon."""
        rng = self.rngs[c]
        end = self.t_start + self.horizon
        while True:
            gap = float(rng.exponential(1.0 / self.rate))
            if self.env.now + gap >= end:
                return
            yield self.env.timeout(gap)
            if self.online is not None and not self.online(c):
                self.skipped_offline += 1  # an offline client issues no request
                continue
            allowed = [bool(self.online(x)) for x in self.clients] if self.online is not None else None
            if self.estimator is None:
                experts, correct = self.routes[c](rng, allowed)
            else:
                experts, correct = self.routes[c](rng, allowed, self.penalty(c))
            rid = self._next_id
            self._next_id += 1
            self.pending.append(self.env.process(self.serve(rid, c, experts, correct)))

    def penalty(self, c: str) -> list[float]:
        """Channel-aware gate: ``w * L_e / T`` of every expert for a request of ``c`` now
        (:class:`~fedsim.protocols.nmoe_gate.LatencyEstimator`)."""
        assert self.estimator is not None and self.timeout_s is not None
        cpu = self.cpu[c]
        local_s = self.costs.expert_flops / max(self.speed(c), 1e-9)
        lat = self.estimator.predict(c, float(self.env.now), len(cpu.users) + len(cpu.queue), local_s)
        return [self.gate_weight * v / self.timeout_s for v in lat]

    def _compute(self, node: str, flops: float) -> Any:
        t0 = self.env.now
        with self.cpu[node].request() as rq:
            yield rq
            t1 = self.env.now
            yield self.env.timeout(flops / max(self.speed(node), 1e-9))
        return t1 - t0, self.env.now - t1

    def _reason(self, res: Any) -> str:
        cause = getattr(res, "cause", None)
        if self.status_of is not None and cause is not None:
            return str(self.status_of(cause))
        return "transfer_failed"

    def branch(self, rid: int, origin: str, e: int) -> Any:
        """One expert's part of a request: (t_network_s, t_queue_s, t_expert_s, bytes, ok, reason).
        An interrupt (the request's timeout) ends it at once, interrupting its transfer."""
        owner = self.clients[e]
        t_sent = float(self.env.now)
        est = self.estimator if owner != origin else None
        if est is not None:
            est.start(origin, e, t_sent)
        out = yield from self._branch(origin, owner, t_sent)
        if est is not None:
            est.end(origin, e, t_sent, out[0], out[2], out[4])
        return out

    def _branch(self, origin: str, owner: str, t0: float) -> Any:
        t_net, t_queue, t_exp, nbytes = 0.0, 0.0, 0.0, 0.0
        sub: simpy.Process | None = None
        try:
            if owner != origin:
                sub = self.transfer(origin, owner, self.costs.latent_bytes, -1, "nmoe_latent")
                res = yield sub
                sub = None
                t_net += self.env.now - t0
                nbytes += float(res.delivered_bytes)
                if not res.completed:
                    return t_net, 0.0, 0.0, nbytes, False, self._reason(res)
            t_queue, t_exp = yield from self._compute(owner, self.costs.expert_flops)
            if owner != origin:
                t0 = float(self.env.now)
                sub = self.transfer(owner, origin, self.costs.reply_bytes, -1, "nmoe_reply")
                res = yield sub
                sub = None
                t_net += self.env.now - t0
                nbytes += float(res.delivered_bytes)
                if not res.completed:
                    return t_net, t_queue, t_exp, nbytes, False, self._reason(res)
            return t_net, t_queue, t_exp, nbytes, True, ""
        except simpy.Interrupt as intr:
            if sub is not None and sub.is_alive:
                sub.interrupt(intr.cause)
                res = yield sub
                nbytes += float(getattr(res, "delivered_bytes", 0.0))
                t_net += self.env.now - t0
            return t_net, t_queue, t_exp, nbytes, False, str(intr.cause)

    def _body(self, c: str, experts: list[int]) -> Any:
        """Extraction, then the branches; returns ``(t_extract, outs, reason)``."""
        t0 = float(self.env.now)
        procs: list[simpy.Process] = []
        t_extract = math.nan
        try:
            yield from self._compute(c, self.costs.extract_flops)
            t_extract = float(self.env.now) - t0
            procs = [self.env.process(self.branch(-1, c, int(e))) for e in experts]
            done = yield self.env.all_of(procs)
            outs = [done[p] for p in procs]
            bad = [o[5] for o in outs if not o[4]]
            return t_extract, outs, (bad[0] if bad else "")
        except simpy.Interrupt as intr:
            alive = [p for p in procs if p.is_alive]
            for p in alive:
                p.interrupt(intr.cause)
            outs = []
            if procs:
                done = yield self.env.all_of(procs)
                outs = [done[p] for p in procs]
            return t_extract, outs, str(intr.cause)

    def serve(self, rid: int, c: str, experts: list[int], correct: bool) -> Any:
        """The life of request ``rid`` of client ``c`` (module docstring); records its row.
        Unanswered ``timeout_s`` after issue, it is ended and fails with reason ``timeout``."""
        t0 = float(self.env.now)
        body = self.env.process(self._body(c, experts))
        if self.timeout_s is not None:
            yield body | self.env.timeout(self.timeout_s)
            if body.is_alive:
                body.interrupt("timeout")
        t_extract, outs, reason = yield body
        crit = max(outs, key=lambda o: o[0] + o[1] + o[2]) if outs else (math.nan, math.nan, math.nan)
        own = self.clients.index(c)
        timed_out = reason == "timeout"
        self.rec.row(
            "requests", request=rid, client=c, t_s=t0, latency_s=float(self.env.now) - t0,
            t_extract_s=float(t_extract), t_network_s=float(crit[0]), t_queue_s=float(crit[1]), t_expert_s=float(crit[2]),
            bytes=float(sum(o[3] for o in outs)), experts=",".join(str(int(e)) for e in experts),
            local=bool(own in [int(e) for e in experts]), remote=int(sum(1 for e in experts if int(e) != own)),
            completed=bool(not timed_out and len(outs) == len(experts) and all(o[4] for o in outs)),
            failed=int(len(experts) if timed_out and not outs else sum(1 for o in outs if not o[4])),
            fail_reason=reason, correct=bool(correct and not timed_out),
        )


def latency_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``n``, latency ``p50_s`` / ``p95_s`` / ``p99_s`` / ``mean_s``, ``bytes_per_request``,
    ``local_share`` (requests that used the own expert) and ``accuracy`` of ``requests`` rows."""
    if not rows:
        return {"n": 0.0}
    lat = np.array([r["latency_s"] for r in rows], dtype=float)
    return {
        "n": float(len(rows)),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "p99_s": float(np.percentile(lat, 99)),
        "mean_s": float(lat.mean()),
        "bytes_per_request": float(np.mean([r["bytes"] for r in rows])),
        "local_share": float(np.mean([r["local"] for r in rows])),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
    }


class NMoE(Protocol):
    """The nmoe protocol: three-stage training, evaluation, serverless inference.

    Not one round loop: it overrides :meth:`run` (the template's documented
    edge case): the three training stages are the exchanges and hops of
    :class:`~fedsim.protocols.nmoe_training.NMoETraining` (FedSC has two
    exchanges per round, RollGate hops client to client), whose ``rounds``
    rows (one per stage round) go through
    :meth:`~fedsim.protocols.base.Protocol.record_rounds_row`.
    """

    name = "nmoe"

    def __init__(self, parts: Any, progress: Any = None) -> None:
        super().__init__(parts, progress)
        self.model: Any = None
        self.cache: dict | None = None  # optional: learning results shared by runs of one world and seed (bench)
        self.server = self.aggregator()

    def aggregator(self) -> str:
        """Node id of the stage-1 / FedGate aggregator: ``protocol.nmoe.server``
        (a base station, the cloud, or a volunteer client), default the
        systems part's server. A built run has checked that the node exists
        (:func:`fedsim.build.check_world_rules`).

        Raises:
            ValueError: the systems part has a topology and the node is not in it.
        """
        node = self.cfg.server or self.systems.server
        graph = self.systems.graph
        if graph is not None and node not in graph:
            raise ValueError(f'"protocol.nmoe.server": node {node!r} is not in the topology')
        return str(node)

    # --------------------------------------------------------------- training
    def train_config(self) -> Any:
        """The :class:`~fedsim.learning.nmoe.NMoETrainConfig` of the scenario."""
        from fedsim.learning.nmoe import NMoETrainConfig

        c, t = self.cfg, self.trainer.train_config
        return NMoETrainConfig(
            extractor=c.extractor, gate=c.gate, top_k=min(self.trainer.model_config.top_k, len(self.clients)),
            rounds=self.settings.rounds, local_epochs=t.local_epochs, batch_size=t.batch_size,
            lr=t.lr, momentum=t.momentum, dp_epsilon=c.dp_epsilon, dp_delta=c.dp_delta,
            rollgate_p=c.rollgate_p, fedgate_fraction=c.fedgate_fraction, fedgate_loss=c.fedgate_loss,
            gate_noise_std=c.fedgate_noise_std, fedgate_load_weight=c.fedgate_load_weight,
        )

    def train(self) -> Any:
        """Run the three stages on the simulated clock
        (:class:`~fedsim.protocols.nmoe_training.NMoETraining`); record
        ``rounds``, ``nmoe_stage1`` and ``nmoe_eval``; return the model."""
        from fedsim.learning.datasets import Dataset
        from fedsim.learning.nmoe import client_data
        from fedsim.learning.nmoe_model import evaluate_per_client, local_ratio
        from fedsim.protocols.nmoe_training import NMoETraining

        t, ev = self.trainer, self.evaluator
        ds: Dataset = t.dataset
        splits = [t.splits[c] for c in self.clients]
        self.clients_data = client_data(ds, splits)
        tc = self.train_config()
        self.model_config = replace(t.model_config, num_experts=len(self.clients), top_k=tc.top_k)
        tr = NMoETraining(self, self.clients_data, tc, self.model_config, self.sim.rng.seed_int("nmoe/train"), cache=self.cache)
        self.training = tr
        self.env.run(until=self.env.process(tr.serve()))
        model = tr.model

        def evaluate() -> tuple[dict[str, float], dict[str, float], float]:
            own = evaluate_per_client(model, self.clients_data)
            glob = evaluate_per_client(model, self.clients_data, x_global=ev.x_test, y_global=ev.y_test)
            return own, glob, float(local_ratio(model, self.clients_data))

        # real PyTorch work goes through the replay seam (checkpoint / resume)
        own, glob, lr = self.trainer.replayed("nmoe/evaluate", evaluate)
        tr.finish(glob)
        tot = tr.stage_totals()
        extra = {"dp_epsilon": float(tr.info.get("dp_epsilon", math.nan)), "dp_epsilon_exact": float(tr.info.get("dp_epsilon_exact", math.nan)),
                 "experts_untrained": int(tr.info.get("experts_untrained", 0)), "retry_wait_s": float(tr.info.get("retry_wait_s", 0.0))}
        for test, m in (("own", own), ("global", glob)):
            self.rec.row("nmoe_eval", extractor=tc.extractor, gate=tc.gate, test=test, accuracy=m["accuracy"], f1=m["f1"], auc=m["auc"], lr=lr, **extra, **tot)
        for h in tr.ext.history:
            self.rec.row("nmoe_stage1", extractor=tc.extractor, round=int(h["round"]), loss=float(h["loss"]))
        self.progress(round=tr.total_rounds, rounds=tr.total_rounds, t_s=float(self.env.now), accuracy=glob["accuracy"], bytes=tr.bytes_moved)
        self.model = model
        self.checkpoint(tc.rounds, force=True)
        return model

    def final_state(self) -> dict[str, Any] | None:
        """The trained NMoE's state dict (after :meth:`train`)."""
        return None if self.model is None else self.model.state_dict()

    # -------------------------------------------------------------- inference
    def costs(self) -> Any:
        """FLOPs and bytes of one request, from the actual modules."""
        from fedsim.learning.accounting import flops_per_sample
        from fedsim.learning.models import MoEClassifier

        cfg = self.model_config
        ext = flops_per_sample(MoEClassifier(replace(cfg, num_experts=1, top_k=1)), cfg.input_shape, experts_active=0, train=False)
        exp = flops_per_sample(self.model.experts[0], (cfg.feature_dim,), train=False)
        return InferenceCosts(ext, exp, 4.0 * cfg.feature_dim, 4.0 * cfg.num_classes)

    def routes(self) -> dict[str, Callable[..., tuple[list[int], bool]]]:
        """Per client: draw one of its test samples, route it with the real model."""
        m = self.model
        out = {}
        with torch.no_grad():
            for c, cd in zip(self.clients, self.clients_data):
                if cd.x_test.shape[0] == 0:
                    cd_x, cd_y = cd.x[:1], cd.y[:1]
                else:
                    cd_x, cd_y = cd.x_test, cd.y_test
                h = m.backbone(cd_x)
                out[c] = self._router(h, cd_y)
        return out

    def _router(self, h: torch.Tensor, y: torch.Tensor) -> Callable[..., tuple[list[int], bool]]:
        from fedsim.learning.nmoe_model import RanGate

        m = self.model

        def route(rng: np.random.Generator, allowed: list[bool] | None, penalty: list[float] | None = None) -> tuple[list[int], bool]:
            i = int(rng.integers(h.shape[0]))
            mask = None if allowed is None else torch.tensor(allowed, dtype=torch.bool)
            with torch.no_grad():
                if penalty is None:  # today's gate
                    idx, wts = m.route(h[i : i + 1], mask)
                else:  # channel-aware (fedsim.protocols.nmoe_gate)
                    rand = isinstance(m.gate, RanGate)
                    chosen, w = channel_aware_topk(gate_probs(m, h[i : i + 1], mask), penalty, m.top_k, m.generator if rand else None)
                    idx = torch.tensor([chosen])
                    wts = torch.full((1, len(chosen)), 1.0 / len(chosen)) if rand else w[None, :]
                p = m.expert_proba(h[i : i + 1], idx, wts)
            return [int(e) for e in idx[0]], bool(int(p.argmax(1)) == int(y[i]))

        return route

    def inference(self) -> InferenceSim:
        """Build the inference simulation on the systems part (transfers, speeds, availability)."""
        sy = self.systems
        rngs = {c: self.sim.rng.numpy(f"nmoe/requests/{c}") for c in self.clients}
        return InferenceSim(
            self.env, self.rec, self.clients, self.routes(), sy.transfer, sy.speed_flops, self.costs(),
            self.cfg.request_rate_per_s, self.cfg.inference_horizon_s, rngs,
            online=sy.is_online, timeout_s=self.cfg.request_timeout_s, status_of=sy.cause_status,
            gate_weight=self.cfg.channel_gate_weight, csi=self.csi(),
        )

    def csi(self) -> Callable[[str], bool] | None:
        """Whether a client's access link has a non-zero rate in the current fading block,
        both ways (the network's spectral efficiencies; with ``channel.population: lazy`` an
        idle client's as of its last evaluation); None without a cellular network."""
        net = getattr(self.systems, "network", None)
        se = getattr(net, "spectral_efficiency", None)
        if se is None:
            return None
        cl = set(self.clients)
        return lambda c: c not in cl or (se(c, "up") > 0 and se(c, "down") > 0)

    def run(self) -> None:
        """Train (the three stages on the simulated clock), evaluate, then simulate the inference traffic."""
        self.train()
        sim = self.inference()
        sim.run()
        summ = latency_summary(self.rec.rows("requests"))
        summ["skipped_offline"] = float(sim.skipped_offline)
        rows = self.rec.rows("requests")
        summ["completed_share"] = float(np.mean([r["completed"] for r in rows])) if rows else math.nan
        self.rec.row("nmoe_inference", **{k: (v if not isinstance(v, float) or math.isfinite(v) else math.nan) for k, v in summ.items()})
        self.parts.finish()
