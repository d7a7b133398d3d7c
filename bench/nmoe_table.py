"""NMoE results table, shaped like Tables I and II of "Towards Efficient Federated
Learning of Networked Mixture-of-Experts for Mobile Edge Computing".

Methods: Centralised MoE (top-k gate, all data: upper bound), Local (each client's
own extractor + classifier, own data only), FedAvg (FedAvg of the local
classifiers = the FedCE stage-1 model), and FedCE / FedSC extractors x RanGate /
RollGate / FedGate. Data settings: IID and non-IID(tau) for tau in 0.5, 0.3, 0.2
(``noniid_tau``: client i's dominant class i mod 10 holds 1 - tau of its data),
10 clients. Two tables:

- Table I ("same"): every client tests on its own test split (same distribution
  as its training data); metrics are averaged over clients. LR = share of the
  top-k expert slots of a client's test samples served by its own expert.
  For every gated method (FedCE/FedSC x RanGate/RollGate/FedGate) Table I also
  gives the serverless-inference cost of that method's own routing
  (:func:`method_latency`: :class:`~fedsim.protocols.nmoe.InferenceSim` on a
  :class:`~fedsim.net.star.StarNetwork`, 10 Mbit/s links, 5 ms latency,
  0.1 GFLOP/s clients, 2 requests/s per client for 20 s, each request a random
  sample of the client's own test split routed by the trained gate): latency
  ``P50`` / ``P95`` in ms and ``B/REQ``, the bytes moved per request (latents to
  and answers from remote experts; a local expert moves none). Baselines: ``-``.
  The request streams are the run seed's named streams ``nmoe/requests/<client>``
  (the same for every method of a setting: common random numbers).
- Table II ("iid-test"): trained non-IID, tested on the global IID test set.

Metrics: accuracy, macro-F1, macro one-vs-rest AUC, LR in percent; mean (and std
over seeds when ``--seeds`` > 1). Writes ``nmoe_table.csv`` (long format) and
``nmoe_table.md`` to ``--out`` (default ``runs/nmoe_table``) and prints the Markdown with the wall time.

Scale: the CIFAR-10 subset has 5,085 train / 1,017 test images in total (the
paper: 2,500 / 1,000 per client on full CIFAR-10 with ResNet-18), so each
client gets ~508 images (~406 train / ~102 own test) and the model is a small
CNN (two 3x3 conv layers of 8 and 16 channels, 64 features).

``--inference``: instead of the table, run the ``nmoe`` protocol (FedCE + FedGate,
top-2, non-IID tau=0.2) on a stand-in world (10 clients on a
:class:`~fedsim.net.star.StarNetwork`, 10 Mbit/s links, 5 ms latency,
0.1 GFLOP/s per client (IoT class), 10 requests/s per client for 30 s) and print the latency
percentiles and bytes per request of the serverless inference.

Usage: python bench/nmoe_table.py [--data-dir DIR] [--dataset cifar10|mnist|digits]
       [--seeds N] [--rounds R] [--threads T] [--out DIR] [--taus 0.5,0.3,0.2] [--inference]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedsim.engine import Simulation
from fedsim.learning.accounting import flops_per_sample
from fedsim.learning.datasets import load_dataset
from fedsim.learning.models import MoEClassifier, MoEConfig
from fedsim.learning.nmoe import (
    GATES,
    ClientData,
    NMoETrainConfig,
    client_data,
    train_extractor,
)
from fedsim.learning.nmoe_model import (
    NMoEModel,
    evaluate_per_client,
    local_ratio,
    train_centralised_moe,
    train_local_classifiers,
    train_nmoe,
)
from fedsim.learning.partition import partition
from fedsim.learning.threads import set_torch_threads
from fedsim.net.star import StarNetwork
from fedsim.protocols.nmoe import InferenceCosts, InferenceSim, latency_summary
from fedsim.rng import RngStreams

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = {
    "cifar10": ROOT.parent / "shared" / "data" / "cifar10-subset",
    "mnist": ROOT.parent / "shared" / "data" / "mnist",
    "digits": None,
}
METHODS = ["Centralised MoE", "Local", "FedAvg"] + [f"{e}+{g}" for e in ("FedCE", "FedSC") for g in ("RanGate", "RollGate", "FedGate")]
GATE_NAMES = dict(zip(GATES, ("RanGate", "RollGate", "FedGate")))
# serverless-inference stand-in of Table I's latency columns (module docstring)
INF_RATE_PER_S, INF_HORIZON_S, INF_LINK_BPS, INF_LATENCY_S, INF_SPEED_FLOPS = 2.0, 20.0, 10e6, 0.005, 1e8
INF_WALL_S = [0.0]  # wall time spent in method_latency (reported with the table)


def model_config(dataset: str, input_shape: tuple[int, ...], num_clients: int, top_k: int) -> MoEConfig:
    """The small CNN used for ``dataset`` (8/16 conv channels for CIFAR, 16/32 for
    MNIST, one 16-channel layer for 8x8 digits), 64 features, 64-wide expert heads."""
    widths = {"cifar10": (8, 16), "mnist": (16, 32)}.get(dataset, (16,))
    return MoEConfig(input_shape, 10, backbone="cnn", widths=widths, feature_dim=64, num_experts=num_clients, top_k=top_k, expert_hidden=64)


def model_costs(model: NMoEModel) -> InferenceCosts:
    """Per-request FLOPs and bytes of ``model`` (as the ``nmoe`` protocol computes them)."""
    cfg = model.cfg
    ext = flops_per_sample(MoEClassifier(replace(cfg, num_experts=1, top_k=1)), cfg.input_shape, experts_active=0, train=False)
    exp = flops_per_sample(model.experts[0], (cfg.feature_dim,), train=False)
    return InferenceCosts(ext, exp, 4.0 * cfg.feature_dim, 4.0 * cfg.num_classes)


def model_routes(model: NMoEModel, cl: list[ClientData], clients: list[str]) -> dict:
    """Per client: a route drawing one of its own test samples and routing it with
    the trained gate (the ``nmoe`` protocol's router)."""
    out = {}
    with torch.no_grad():
        for c, cd in zip(clients, cl):
            x, y = (cd.x_test, cd.y_test) if cd.x_test.shape[0] else (cd.x[:1], cd.y[:1])
            h = model.backbone(x)

            def route(rng: np.random.Generator, allowed: list[bool] | None, h: torch.Tensor = h, y: torch.Tensor = y) -> tuple[list[int], bool]:
                i = int(rng.integers(h.shape[0]))
                mask = None if allowed is None else torch.tensor(allowed, dtype=torch.bool)
                with torch.no_grad():
                    idx, wts = model.route(h[i : i + 1], mask)
                    p = model.expert_proba(h[i : i + 1], idx, wts)
                return [int(e) for e in idx[0]], bool(int(p.argmax(1)) == int(y[i]))

            out[c] = route
    return out


def method_latency(
    routes: dict, costs: InferenceCosts, seed: int, *, clients: list[str] | None = None,
    rate_per_s: float = INF_RATE_PER_S, horizon_s: float = INF_HORIZON_S,
    link_bps: float = INF_LINK_BPS, latency_s: float = INF_LATENCY_S, speed_flops: float = INF_SPEED_FLOPS,
) -> dict[str, float]:
    """Serverless inference of one method's ``routes`` (client id -> route, see
    :class:`~fedsim.protocols.nmoe.InferenceSim`; client i owns expert i, ids in
    ``clients`` order, default sorted ``routes``) on a fresh
    :class:`~fedsim.net.star.StarNetwork`; request streams are the run
    seed's named streams ``nmoe/requests/<client>``. Returns
    :func:`~fedsim.protocols.nmoe.latency_summary` of the requests."""
    t0 = time.perf_counter()
    ids = list(clients) if clients is not None else sorted(routes)
    sim = Simulation(seed)
    net = StarNetwork(sim.env, ids, rate_bps=link_bps, latency_s=latency_s)
    rngs = {c: sim.rng.fresh_numpy(f"nmoe/requests/{c}") for c in ids}
    InferenceSim(sim.env, sim.rec, ids, routes, net.transfer, lambda c: speed_flops, costs, rate_per_s, horizon_s, rngs).run()
    INF_WALL_S[0] += time.perf_counter() - t0
    return latency_summary(sim.rec.rows("requests"))


def run_setting(ds, setting: str, tau: float | None, seed: int, tc: NMoETrainConfig, num_clients: int) -> list[dict]:  # noqa: ANN001
    """All methods on one data setting and seed; returns long-format rows."""
    rng = RngStreams(seed)
    labels = ds.y_train.numpy()
    if tau is None:
        splits = partition("iid", labels, num_clients, rng.fresh_numpy("split"))
    else:
        splits = partition("noniid_tau", labels, num_clients, rng.fresh_numpy("split"), tau=tau)
    cl = client_data(ds, splits)
    cfg = model_config(ds.name, ds.input_shape, num_clients, tc.top_k)
    rows: list[dict] = []

    ids = [f"client{i:02d}" for i in range(num_clients)]

    def add(method: str, model, lr: float = math.nan) -> None:  # noqa: ANN001
        same = evaluate_per_client(model, cl)
        glob = evaluate_per_client(model, cl, x_global=ds.x_test, y_global=ds.y_test)
        inf = {"p50_s": math.nan, "p95_s": math.nan, "bytes_per_request": math.nan}
        if isinstance(model, NMoEModel):  # gated methods: serve with this method's own routing
            model.reseed(RngStreams(seed).seed_int(f"nmoe/inference/{method}"))  # RanGate draws
            inf = method_latency(model_routes(model, cl, ids), model_costs(model), seed, clients=ids)
        for test, m in (("same", same), ("iid-test", glob)):
            t1 = test == "same"
            rows.append({"setting": setting, "seed": seed, "method": method, "test": test,
                         "acc": 100 * m["accuracy"], "f1": 100 * m["f1"], "auc": 100 * m["auc"],
                         "lr": 100 * lr if t1 else math.nan,
                         "p50_ms": 1e3 * inf["p50_s"] if t1 else math.nan,
                         "p95_ms": 1e3 * inf["p95_s"] if t1 else math.nan,
                         "bytes_req": inf["bytes_per_request"] if t1 else math.nan})

    add("Centralised MoE", train_centralised_moe(cl, cfg, tc, seed))
    add("Local", train_local_classifiers(cl, cfg, tc, seed))
    for ext_name in ("fedce", "fedsc"):
        tce = replace(tc, extractor=ext_name)
        ext = train_extractor(cl, cfg, tce, seed, dataset=ds.name)
        if ext_name == "fedce":
            fedavg = MoEClassifier(ext.config)
            fedavg.load_state_dict(ext.full_state)
            add("FedAvg", fedavg)
        for gate in GATES:
            model, _, _ = train_nmoe(cl, cfg, replace(tce, gate=gate), seed, extractor=ext)
            add(f"{'FedCE' if ext_name == 'fedce' else 'FedSC'}+{GATE_NAMES[gate]}", model, local_ratio(model, cl))
    return rows


def fmt(vals: list[float]) -> str:
    """``mean`` or ``mean±std`` of finite values, one decimal; ``-`` if none."""
    v = [x for x in vals if not math.isnan(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.1f}" if len(v) == 1 else f"{np.mean(v):.1f}±{np.std(v):.1f}"


def markdown(rows: list[dict], settings: list[str], test: str, title: str) -> str:
    """One table: methods x settings x (Acc, F1, AUC) (+ LR, latency P50 / P95 in
    ms and bytes per request per setting for Table I)."""
    metrics = ["acc", "f1", "auc"] + (["lr", "p50_ms", "p95_ms", "bytes_req"] if test == "same" else [])
    label = {"p50_ms": "P50 ms", "p95_ms": "P95 ms", "bytes_req": "B/REQ"}
    head = ["Method"] + [f"{s} {label.get(m, m.upper())}" for s in settings for m in metrics]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meth in METHODS:
        cells = [meth]
        for s in settings:
            sel = [r for r in rows if r["method"] == meth and r["setting"] == s and r["test"] == test]
            for m in metrics:
                cells.append(fmt([r[m] for r in sel]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inference_demo(ds, args: argparse.Namespace) -> dict[str, float]:  # noqa: ANN001
    """Run the nmoe protocol on a stand-in world (see module docstring); returns the summary."""
    from types import SimpleNamespace

    from fedsim.config.schema import Scenario
    from fedsim.engine import Simulation
    from fedsim.protocols.nmoe import NMoE, latency_summary

    scen = Scenario.model_validate(
        {
            "run": {"rounds": args.rounds},
            "model": {"top_k": 2},
            "training": {"local_epochs": args.local_epochs, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
            "protocol": {"name": "nmoe", "nmoe": {"extractor": "fedce", "gate": "fedgate", "request_rate_per_s": 10.0, "inference_horizon_s": 30.0}},
        },
        strict=False,
    )
    sim = Simulation(0)
    clients = [f"client{i:02d}" for i in range(args.clients)]
    splits = partition("noniid_tau", ds.y_train.numpy(), args.clients, sim.rng.fresh_numpy("split"), tau=0.2)
    world = SimpleNamespace(
        scenario=scen, sim=sim, clients=clients, dataset=ds, splits=dict(zip(clients, splits)),
        model_config=model_config(ds.name, ds.input_shape, args.clients, 2), x_test=ds.x_test, y_test=ds.y_test,
        devices={c: SimpleNamespace(speed_flops=lambda: 1e8) for c in clients},
    )
    NMoE(world).run()
    summ = latency_summary(sim.rec.rows("requests"))
    print("nmoe_eval:", sim.rec.rows("nmoe_eval"))
    print("inference:", {k: round(v, 4) for k, v in summ.items()})
    return summ


def main() -> None:
    """Parse arguments, run every setting and seed, print and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["cifar10", "mnist", "digits"], default="cifar10")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10, help="stage-1 FL rounds (and baseline epochs)")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--taus", default="0.5,0.3,0.2")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path("runs/nmoe_table"))
    ap.add_argument("--inference", action="store_true", help="run the serverless-inference demo instead")
    args = ap.parse_args()

    set_torch_threads(args.threads)
    t0 = time.perf_counter()
    c0 = time.process_time()
    data_dir = args.data_dir if args.data_dir is not None else DEFAULT_DIRS[args.dataset]
    ds = load_dataset(args.dataset, data_dir, rng=RngStreams(0).fresh_numpy("data"))
    if args.inference:
        inference_demo(ds, args)
        print(f"wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s")
        return
    tc = NMoETrainConfig(rounds=args.rounds, local_epochs=args.local_epochs, top_k=args.top_k)
    settings = [("IID", None)] + [(f"tau={t}", float(t)) for t in args.taus.split(",") if t]
    rows: list[dict] = []
    for seed in range(args.seeds):
        for name, tau in settings:
            ts = time.perf_counter()
            rows += run_setting(ds, name, tau, seed, tc, args.clients)
            print(f"[seed {seed}] {name} done in {time.perf_counter() - ts:.0f} s", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    inf_wall = INF_WALL_S[0]
    names = [s for s, _ in settings]
    md = "\n\n".join([
        f"NMoE on {ds.name} ({len(ds.y_train)} train / {len(ds.y_test)} test), {args.clients} clients, "
        f"top-{args.top_k}, {args.rounds} rounds x {args.local_epochs} local epochs, {args.seeds} seed(s), "
        f"{args.threads} torch threads; wall {wall:.0f} s (inference simulation {inf_wall:.0f} s), CPU {cpu:.0f} s. "
        "Acc / F1 / AUC / LR in %.",
        markdown(rows, names, "same", "Table I: test on each client's own distribution (LR = local processing ratio; "
                 f"serverless inference at {INF_RATE_PER_S:g} req/s per client for {INF_HORIZON_S:g} s, "
                 f"{INF_LINK_BPS / 1e6:g} Mbit/s links, {1e3 * INF_LATENCY_S:g} ms latency, {INF_SPEED_FLOPS / 1e9:g} GFLOP/s clients: "
                 "latency P50 / P95 in ms, B/REQ = bytes moved per request)"),
        markdown(rows, names, "iid-test", "Table II: train non-IID, test on the global IID test set"),
    ])
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nmoe_table.md").write_text(md + "\n")
    with open(args.out / "nmoe_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
