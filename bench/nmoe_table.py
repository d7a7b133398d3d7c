"""NMoE results table with costs, shaped like Tables I and II of "Towards Efficient
Federated Learning of Networked Mixture-of-Experts for Mobile Edge Computing".

Every gated method (FedCE / FedSC extractor x RanGate / RollGate / FedGate) is a
real ``nmoe`` run of ``scenarios/nmoe-cifar10.yaml`` on its built world (10
clients under 4 cells of a Manhattan grid, UMi channel with Rayleigh fading,
device classes with their speeds, availability and dropout): the three training
stages are SimPy processes whose seconds and bytes come from the flow network
and the device models, then serverless inference runs on the same network.
Per method the table gives accuracy / macro-F1 / macro-AUC, LR (local
processing ratio), each training stage's simulated seconds and bytes and their
totals, the inference latency P50 / P95 and bytes per request, and FedSC's
privacy budget (epsilon spent over the stage-1 rounds at delta 1e-5).
Runs of one setting and seed share the learning of identical stage-1
participants (the same world and seed give the same stage-1 schedule whatever
the gate), so each extractor is trained once per setting and seed.

Stage semantics: the paper's (the scenario's ``stage_deadline_s``: a stage
round retries its missing clients as they come back online, for up to a day of
simulated time, so every client does its part of every stage) are the main
tables; the availability ablation (``stage_deadline_s: null``: one attempt,
clients offline at a stage's start miss it, their experts stay untrained) is
Table VI, with the experts left untrained and the seconds spent waiting.

Baselines, trained on the same client data without simulated costs: Centralised
MoE (one MoE with one expert per client and top-k gating on all data, top-1
weighted by the gate probability so the gate trains; trained to a plateau: 10 %
of the pooled training data held out, stopped after ``--patience`` epochs
without a better validation accuracy, the best epoch kept; its LR is the share
of client i's top-k slots served by expert i), Local (each client's own
classifier, ``--rounds`` epochs), FedAvg (the FedCE stage-1 classifier; its
costs are FedCE's stage 1).

Data settings: IID and non-IID(tau) for tau in 0.5, 0.3, 0.2 with
``data.tau_definition: paper_table`` (the dominant class holds 1 / (1 + tau) of
a client's data: 66.7 / 76.9 / 83.3 %, the reading that fits the paper's Table
I Local row; ``--tau-definition outside_share`` gives 1 - tau). Table I
("same"): every client tests on its own test split; Table II ("iid-test"): the
global IID test set. Mean ± std over seeds, and every seed. Fig. 4 (at the last
tau): the number of clients (``--clients``, the scenario's device mix scaled)
and top-k at inference (the paper variant's trained models served with 1, 2, 3
experts).

Units (setting x seed x variant) run in ``--jobs`` processes, most important
first; the tables are rewritten after each unit, so an interrupted run leaves
partial tables.

``--quick``: digits, tau = 0.2, 3 stage-1 rounds, one seed, 10 s of
inference, the paper variant only; prints one line per method::

    method=NAME acc=... f1=... auc=... lr=... train_s=... train_bytes=... p95_ms=...

(``acc`` / ``f1`` / ``auc``: Table I accuracy, macro-F1, macro-AUC in %, ``lr``
in %, ``train_s`` simulated seconds of the three stages, ``train_bytes`` their
bytes, ``p95_ms`` inference latency).

Writes ``nmoe_table.csv`` (long format) and ``nmoe_table.md`` to ``--out``
(default ``runs/nmoe_table``) and prints the Markdown with the wall time.

Usage: python bench/nmoe_table.py [--quick] [--data-dir DIR] [--seeds N] [--rounds R] [--taus 0.5,0.3,0.2]
       [--top-k K] [--clients 5,10,20] [--jobs J] [--threads T] [--out DIR] [--from-csv CSV]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from fedsim.api import load_scenario
from fedsim.build import build_parts
from fedsim.learning.models import MoEClassifier
from fedsim.learning.nmoe_model import (
    evaluate_per_client,
    local_ratio,
    train_centralised_moe_to_plateau,
    train_local_classifiers,
)
from fedsim.learning.threads import set_torch_threads
from fedsim.protocols.nmoe import NMoE

try:
    from bench.nmoe_report import from_csv, quick_lines, report
except ImportError:  # run as a script: bench/ is on sys.path
    from nmoe_report import from_csv, quick_lines, report  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "nmoe-cifar10.yaml"
GATED = [(e, g) for e in ("fedce", "fedsc") for g in ("rangate", "rollgate", "fedgate")]
NAMES = {"fedce": "FedCE", "fedsc": "FedSC", "rangate": "RanGate", "rollgate": "RollGate", "fedgate": "FedGate"}
METHODS = ["Centralised MoE", "Local", "FedAvg"] + [f"{NAMES[e]}+{NAMES[g]}" for e, g in GATED]
TARGETS = [15.0, 20.0, 25.0, 30.0, 40.0]  # Table V's accuracy targets, %
COST_COLS = ["stage1_s", "stage2_s", "stage3_s", "train_s", "stage1_bytes", "stage2_bytes", "stage3_bytes", "train_bytes"]
EXTRA_COLS = ["p95_ms", "p50_ms", "bytes_req", "dp_epsilon", "dp_epsilon_exact", "experts_untrained", "retry_wait_s", "epochs"]
COLUMNS = ["setting", "seed", "variant", "method", "test", "acc", "f1", "auc", "lr", *COST_COLS, *EXTRA_COLS]
#: Fig. 4's client counts: the scenario's mix (4 phones, 2 vehicles, 2 cameras, 2 drones) scaled
CLIENT_MIX = {5: "{phone: 2, vehicle: 1, camera: 1, drone: 1}", 10: "{phone: 4, vehicle: 2, camera: 2, drone: 2}",
              20: "{phone: 8, vehicle: 4, camera: 4, drone: 4}"}
TOPK = (1, 2, 3)


def central_local_ratio(model: MoEClassifier, clients: list) -> float:
    """LR of a centralised MoE whose expert i stands for client i: share of the
    top-k slots of client i's own test samples routed to expert i, mean over clients."""
    vals = []
    with torch.no_grad():
        for i, c in enumerate(clients):
            if c.x_test.shape[0] == 0:
                continue
            _, idx, _ = model.route(model.features(c.x_test))
            vals.append(float((idx == i).float().mean()))
    return float(np.mean(vals)) if vals else math.nan


def overrides(args: argparse.Namespace, tau: float | None, extractor: str, gate: str, variant: str = "paper") -> list[str]:
    """Scenario overrides of one method, data setting and variant (``paper``: the
    scenario's stage semantics; ``one-attempt``: ``stage_deadline_s=null``;
    ``K=<n>``: n clients)."""
    out = [
        f"run.rounds={args.rounds}", f"model.top_k={args.top_k}", f"training.torch_threads={args.threads}",
        f"protocol.nmoe.extractor={extractor}", f"protocol.nmoe.gate={gate}",
        f"protocol.nmoe.inference_horizon_s={args.horizon}", "output.figures=false",
        f"data.tau_definition={args.tau_definition}",
    ]
    out += ["data.partition=iid"] if tau is None else ["data.partition=noniid_tau", f"data.tau={tau}"]
    if args.dataset == "digits":
        out += ["data.dataset=digits", "data.dir=null"]
    elif args.data_dir is not None:
        out += [f"data.dir={args.data_dir.resolve()}"]
    if variant == "one-attempt":
        out += ["protocol.nmoe.stage_deadline_s=null"]
    elif variant.startswith("K="):
        out += [f"topology.grid.clients={CLIENT_MIX[int(variant[2:])]}"]
    return out


def _row(setting: str, seed: int, variant: str, method: str, test: str, m: dict, lr: float, extra: dict) -> dict:
    r = dict.fromkeys(COLUMNS, math.nan)
    r.update(setting=setting, seed=seed, variant=variant, method=method, test=test,
             acc=100 * m["accuracy"], f1=100 * m["f1"], auc=100 * m["auc"], lr=100 * lr if test == "same" else math.nan, **extra)
    return r


def run_setting(args: argparse.Namespace, setting: str, tau: float | None, seed: int, variant: str = "paper") -> list[dict]:
    """Every method on one data setting, seed and variant; returns long-format rows
    (variant ``paper`` also: the baselines, and at the last τ the top-k re-evaluation)."""
    rows: list[dict] = []
    cache: dict = {}
    fedavg: dict = {}
    base = None

    def add(method: str, own: dict, glob: dict, lr: float, extra: dict, var: str = variant) -> None:
        rows.extend(_row(setting, seed, var, method, test, m, lr, extra) for test, m in (("same", own), ("iid-test", glob)))

    for ext, gate in GATED:
        world = build_parts(load_scenario(SCENARIO, overrides(args, tau, ext, gate, variant), seed=seed))
        p = NMoE(world)
        p.cache = cache
        p.run()
        rec = world.sim.rec
        own, glob = rec.rows("nmoe_eval")
        (inf,) = rec.rows("nmoe_inference")
        tot = p.training.stage_totals()
        extra = {k: tot[k] for k in COST_COLS}
        extra.update(p95_ms=1e3 * inf.get("p95_s", math.nan), p50_ms=1e3 * inf.get("p50_s", math.nan),
                     bytes_req=inf.get("bytes_per_request", math.nan),
                     **{k: own[k] for k in ("dp_epsilon", "dp_epsilon_exact", "experts_untrained", "retry_wait_s")})
        name = f"{NAMES[ext]}+{NAMES[gate]}"
        add(name, own, glob, own["lr"], extra)
        if variant == "paper" and args.topk_setting == setting:  # Fig. 4 (top-k): the same trained model served with k experts
            cl = p.clients_data
            for k in TOPK:
                p.model.top_k = min(k, len(cl))
                add(name, evaluate_per_client(p.model, cl), evaluate_per_client(p.model, cl, x_global=world.evaluator.x_test, y_global=world.evaluator.y_test),
                    local_ratio(p.model, cl), {}, var=f"top-k={k}")
        if ext == "fedce" and not fedavg:
            fedavg = {"ext": p.training.ext, "costs": {k: (tot[k] if k.startswith("stage1") else 0.0) for k in COST_COLS}}
            fedavg["costs"]["train_s"], fedavg["costs"]["train_bytes"] = tot["stage1_s"], tot["stage1_bytes"]
            base = (p.clients_data, p.model_config, p.train_config(), world)
        print(f"  [{setting} seed {seed} {variant}] {ext}+{gate}: acc {100 * own['accuracy']:.1f} train {tot['train_s']:.0f} s"
              f" untrained {own['experts_untrained']}", flush=True)

    cl, cfg, tc, world = base  # type: ignore[misc]
    xg, yg = world.evaluator.x_test, world.evaluator.y_test
    fa = MoEClassifier(fedavg["ext"].config)
    fa.load_state_dict(fedavg["ext"].full_state)
    add("FedAvg", evaluate_per_client(fa, cl), evaluate_per_client(fa, cl, x_global=xg, y_global=yg), math.nan, fedavg["costs"])
    if variant != "paper":
        return rows
    seed_int = world.sim.rng.seed_int("nmoe/train")
    central, epochs = train_centralised_moe_to_plateau(cl, cfg, tc, seed_int, patience=args.patience, max_epochs=args.max_epochs)
    add("Centralised MoE", evaluate_per_client(central, cl), evaluate_per_client(central, cl, x_global=xg, y_global=yg), central_local_ratio(central, cl), {"epochs": float(epochs)})
    local = train_local_classifiers(cl, cfg, tc, seed_int)
    add("Local", evaluate_per_client(local, cl), evaluate_per_client(local, cl, x_global=xg, y_global=yg), math.nan, {})
    return rows


def run_unit(args: argparse.Namespace, unit: tuple[str, float | None, int, str]) -> tuple[tuple, list[dict], float, float]:
    """One (setting, tau, seed, variant) unit in a worker: ``(unit, rows, wall s, CPU s)``."""
    set_torch_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    rows = run_setting(args, unit[0], unit[1], unit[2], unit[3])
    return unit, rows, time.perf_counter() - t0, time.process_time() - c0


def units(args: argparse.Namespace, settings: list[tuple[str, float | None]], seeds: int) -> list[tuple[str, float | None, int, str]]:
    """The runs: first Fig. 4's largest client count for every seed (the longest
    units by far, ~2,000 CPU s each against ~300 for a paper unit: RollGate's
    20 sequential hops wait for offline clients over ~17 simulated days of
    channel updates), so that two processes end together; then, most important
    first (so that partial tables stay useful), per seed, the paper variant at the
    last setting (the hardest non-IID one) and its one-attempt ablation, the paper
    variant at the other settings, Fig. 4's other client counts; then the
    one-attempt ablation at the other settings."""
    if args.quick:
        return [(n, t, 0, "paper") for n, t in settings]
    last = settings[-1]
    big = max((k for k in args.clients if k > 10), default=None)
    out: list[tuple[str, float | None, int, str]] = [(last[0], last[1], s, f"K={big}") for s in range(seeds)] if big else []
    for s in range(seeds):
        out += [(last[0], last[1], s, "paper"), (last[0], last[1], s, "one-attempt")]
        out += [(n, t, s, "paper") for n, t in settings[:-1]]
        out += [(last[0], last[1], s, f"K={k}") for k in args.clients if k not in (10, big)]
    out += [(n, t, s, "one-attempt") for s in range(seeds) for n, t in settings[:-1]]
    return out


def main() -> None:
    """Parse arguments, run every unit (``--jobs`` processes), print and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits, tau=0.2, 3 rounds, 1 seed; one line per method")
    ap.add_argument("--dataset", choices=["cifar10", "digits"], default=None)
    ap.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 subset directory (default: the scenario's data.dir)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None, help="stage-1 FL rounds (and Local's epochs); default 10 (quick: 3)")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--taus", default=None, help="comma-separated; default 0.5,0.3,0.2 (quick: 0.2); IID is always run except with --quick")
    ap.add_argument("--tau-definition", choices=["paper_table", "outside_share"], default="paper_table")
    ap.add_argument("--horizon", type=float, default=None, help="inference horizon, s (default 60; quick: 10)")
    ap.add_argument("--clients", default="5,10,20", help="Fig. 4: client counts (10 = the main run)")
    ap.add_argument("--patience", type=int, default=5, help="centralised MoE: epochs without a better validation accuracy before stopping")
    ap.add_argument("--max-epochs", type=int, default=60, help="centralised MoE: epoch limit")
    ap.add_argument("--jobs", type=int, default=2, help="units run in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    ap.add_argument("--out", type=Path, default=Path("runs/nmoe_table"))
    ap.add_argument("--from-csv", type=Path, default=None, help="rebuild the tables from a written nmoe_table.csv (no runs)")
    args = ap.parse_args()
    q = args.quick
    args.dataset = args.dataset or ("digits" if q else "cifar10")
    args.rounds = args.rounds or (3 if q else 10)
    args.horizon = args.horizon or (10.0 if q else 60.0)
    args.clients = [int(k) for k in args.clients.split(",") if k]
    if q:
        args.patience, args.max_epochs = min(args.patience, 3), min(args.max_epochs, 15)
    seeds = 1 if q else args.seeds
    taus = args.taus or ("0.2" if q else "0.5,0.3,0.2")
    set_torch_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.from_csv is not None:
        print(from_csv(args))
        return
    settings = ([] if q else [("IID", None)]) + [(f"τ={t}", float(t)) for t in taus.split(",") if t]
    args.topk_setting = settings[-1][0]
    todo = units(args, settings, seeds)
    rows: list[dict] = []
    cpu = 0.0
    print(f"{len(todo)} units, {args.jobs} process(es)", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(run_unit, args, u) for u in todo]
        for f in as_completed(futs):
            try:
                unit, got, wall, ucpu = f.result()
            except Exception as e:  # noqa: BLE001 - one failed unit must not lose the others' rows
                print(f"unit failed: {e!r}", flush=True)
                continue
            rows += got
            cpu += ucpu
            print(f"[{unit[3]} seed {unit[2]}] {unit[0]} done in {wall:.0f} s wall, {ucpu:.0f} s CPU", flush=True)
            report(args, rows, [s for s, _ in settings], time.perf_counter() - t0, cpu)  # partial tables survive an interrupted run
    md = report(args, rows, [s for s, _ in settings], time.perf_counter() - t0, cpu)
    print(md)
    if q:
        quick_lines(rows)
    print(f"wall {time.perf_counter() - t0:.0f} s, CPU {cpu + time.process_time() - c0:.0f} s (all processes)")


if __name__ == "__main__":
    main()
