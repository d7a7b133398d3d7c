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

Baselines, trained on the same client data without simulated costs: Centralised
MoE (one MoE with one expert per client and top-k gating on all data, top-1
weighted by the gate probability so the gate trains; its LR is the share of
client i's top-k slots served by expert i), Local (each client's own
classifier), FedAvg (the FedCE stage-1 classifier; its costs are FedCE's
stage 1).

Data settings: IID and non-IID(tau) for tau in 0.5, 0.3, 0.2 with
``data.tau_definition: paper_table`` (the dominant class holds 1 / (1 + tau) of
a client's data: 66.7 / 76.9 / 83.3 %, the reading that fits the paper's Table
I Local row; ``--tau-definition outside_share`` gives 1 - tau). Table I
("same"): every client tests on its own test split; Table II ("iid-test"): the
global IID test set. Mean ± std over seeds.

``--quick``: digits (bundled), tau = 0.2, 3 stage-1 rounds, one seed, 10 s of
inference; prints one line per method::

    method=NAME acc=... lr=... train_s=... train_bytes=... p95_ms=...

(``acc``: Table I accuracy in %, ``lr`` in %, ``train_s`` simulated seconds of
the three stages, ``train_bytes`` their bytes, ``p95_ms`` inference latency).

Writes ``nmoe_table.csv`` (long format) and ``nmoe_table.md`` to ``--out``
(default ``runs/nmoe_table``) and prints the Markdown with the wall time.

Usage: python bench/nmoe_table.py [--quick] [--data-dir DIR] [--seeds N] [--rounds R] [--taus 0.5,0.3,0.2]
       [--top-k K] [--threads T] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.api import load_scenario
from fedsim.build import build_parts
from fedsim.learning.models import MoEClassifier
from fedsim.learning.nmoe_model import (
    evaluate_per_client,
    train_centralised_moe,
    train_local_classifiers,
)
from fedsim.learning.threads import set_torch_threads
from fedsim.protocols.nmoe import NMoE

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "nmoe-cifar10.yaml"
GATED = [(e, g) for e in ("fedce", "fedsc") for g in ("rangate", "rollgate", "fedgate")]
NAMES = {"fedce": "FedCE", "fedsc": "FedSC", "rangate": "RanGate", "rollgate": "RollGate", "fedgate": "FedGate"}
METHODS = ["Centralised MoE", "Local", "FedAvg"] + [f"{NAMES[e]}+{NAMES[g]}" for e, g in GATED]
TARGETS = [15.0, 20.0, 25.0, 30.0, 40.0]  # Table V's accuracy targets, %
COST_COLS = ["stage1_s", "stage2_s", "stage3_s", "train_s", "stage1_bytes", "stage2_bytes", "stage3_bytes", "train_bytes"]


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


def overrides(args: argparse.Namespace, tau: float | None, extractor: str, gate: str) -> list[str]:
    """Scenario overrides of one method and data setting."""
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
    return out


def run_setting(args: argparse.Namespace, setting: str, tau: float | None, seed: int) -> list[dict]:
    """Every method on one data setting and seed; returns long-format rows."""
    rows: list[dict] = []
    cache: dict = {}
    fedavg: dict = {}
    base = None

    def add(method: str, own: dict, glob: dict, lr: float, extra: dict) -> None:
        for test, m in (("same", own), ("iid-test", glob)):
            rows.append({"setting": setting, "seed": seed, "method": method, "test": test,
                         "acc": 100 * m["accuracy"], "f1": 100 * m["f1"], "auc": 100 * m["auc"],
                         "lr": 100 * lr if test == "same" else math.nan, **extra})

    for ext, gate in GATED:
        world = build_parts(load_scenario(SCENARIO, overrides(args, tau, ext, gate), seed=seed))
        p = NMoE(world)
        p.cache = cache
        p.run()
        rec = world.sim.rec
        own, glob = rec.rows("nmoe_eval")
        (inf,) = rec.rows("nmoe_inference")
        tot = p.training.stage_totals()
        extra = {k: tot[k] for k in COST_COLS}
        extra.update(p95_ms=1e3 * inf.get("p95_s", math.nan), p50_ms=1e3 * inf.get("p50_s", math.nan),
                     bytes_req=inf.get("bytes_per_request", math.nan), dp_epsilon=own["dp_epsilon"])
        add(f"{NAMES[ext]}+{NAMES[gate]}", own, glob, own["lr"], extra)
        if ext == "fedce" and not fedavg:
            fedavg = {"ext": p.training.ext, "costs": {k: (tot[k] if k.startswith("stage1") else 0.0) for k in COST_COLS}}
            fedavg["costs"]["train_s"], fedavg["costs"]["train_bytes"] = tot["stage1_s"], tot["stage1_bytes"]
            base = (p.clients_data, p.model_config, p.train_config(), world)
        print(f"  [{setting} seed {seed}] {ext}+{gate}: acc {100 * own['accuracy']:.1f} train {tot['train_s']:.0f} s", flush=True)

    cl, cfg, tc, world = base  # type: ignore[misc]
    xg, yg = world.evaluator.x_test, world.evaluator.y_test
    seed_int = world.sim.rng.seed_int("nmoe/train")
    none = dict.fromkeys([*COST_COLS, "p95_ms", "p50_ms", "bytes_req", "dp_epsilon"], math.nan)
    central = train_centralised_moe(cl, cfg, tc, seed_int)
    add("Centralised MoE", evaluate_per_client(central, cl), evaluate_per_client(central, cl, x_global=xg, y_global=yg), central_local_ratio(central, cl), none)
    local = train_local_classifiers(cl, cfg, tc, seed_int)
    add("Local", evaluate_per_client(local, cl), evaluate_per_client(local, cl, x_global=xg, y_global=yg), math.nan, none)
    fa = MoEClassifier(fedavg["ext"].config)
    fa.load_state_dict(fedavg["ext"].full_state)
    add("FedAvg", evaluate_per_client(fa, cl), evaluate_per_client(fa, cl, x_global=xg, y_global=yg), math.nan, {**none, **fedavg["costs"]})
    return rows


def fmt(vals: list[float], digits: int = 1) -> str:
    """``mean`` or ``mean±std`` of finite values; ``-`` if none."""
    v = [x for x in vals if not math.isnan(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.{digits}f}" if len(v) == 1 else f"{np.mean(v):.{digits}f}±{np.std(v):.{digits}f}"


def markdown(rows: list[dict], settings: list[str], test: str, metrics: list[str], title: str, scale: dict | None = None) -> str:
    """One table: methods x settings x metrics (``scale`` divides a metric, e.g. bytes -> MB)."""
    scale = scale or {}
    label = {"p50_ms": "P50 ms", "p95_ms": "P95 ms", "bytes_req": "B/REQ", "train_s": "train s", "train_bytes": "train MB",
             "stage1_s": "s1 s", "stage2_s": "s2 s", "stage3_s": "s3 s", "stage1_bytes": "s1 MB", "stage3_bytes": "s3 MB", "dp_epsilon": "ε"}
    head = ["Method"] + [f"{s} {label.get(m, m.upper())}" for s in settings for m in metrics]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meth in METHODS:
        cells = [meth]
        for s in settings:
            sel = [r for r in rows if r["method"] == meth and r["setting"] == s and r["test"] == test]
            for m in metrics:
                cells.append(fmt([r[m] / scale.get(m, 1.0) for r in sel], 2 if m in ("stage3_bytes",) else 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cheapest(rows: list[dict], settings: list[str], targets: list[float]) -> str:
    """Table V: per setting and target Table-I accuracy (%), the method with a
    simulated training cost that reaches it (mean accuracy over seeds >= target)
    in the fewest seconds and the one in the fewest bytes."""
    lines = ["### Table V: cheapest method reaching a Table-I accuracy (mean over seeds; methods with a simulated cost)", "",
             "| setting | target acc % | fewest seconds | fewest bytes | fewest seconds, NMoE only | fewest bytes, NMoE only |", "|---|---|---|---|---|---|"]
    for s_ in settings:
        stats = {}
        for meth in METHODS:
            sel = [r for r in rows if r["method"] == meth and r["setting"] == s_ and r["test"] == "same" and not math.isnan(r["train_s"])]
            if sel:
                stats[meth] = (np.mean([r["acc"] for r in sel]), np.mean([r["train_s"] for r in sel]), np.mean([r["train_bytes"] for r in sel]))
        for t in targets:
            cells = [s_, f"{t:g}"]
            for pool in (stats, {m: v for m, v in stats.items() if "+" in m}):
                ok = {m: v for m, v in pool.items() if v[0] >= t}
                if not ok:
                    cells += ["none", "none"]
                    continue
                fs = min(ok, key=lambda m: (ok[m][1], ok[m][2]))
                fb = min(ok, key=lambda m: (ok[m][2], ok[m][1]))
                cells += [f"{fs} ({ok[fs][1]:.1f} s, {ok[fs][0]:.1f} %)", f"{fb} ({ok[fb][2] / 1e6:.1f} MB, {ok[fb][0]:.1f} %)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace, rows: list[dict], settings: list, seeds: int, t0: float | None, c0: float | None) -> str:
    """The Markdown tables of ``rows``; also written with the CSV to ``args.out``
    (``t0`` / ``c0`` None: rebuilt from a CSV, no timing)."""
    timing = "rebuilt from its CSV" if t0 is None or c0 is None else f"wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s"
    names = [s for s, _ in settings]
    mb = {k: 1e6 for k in COST_COLS if k.endswith("bytes")}
    md = "\n\n".join([
        f"NMoE on {args.dataset}, scenario nmoe-cifar10 (10 clients), top-{args.top_k}, {args.rounds} stage-1 rounds, "
        f"{seeds} seed(s), non-IID(τ) as {args.tau_definition}; {timing}. "
        "Acc / F1 / AUC / LR in %, mean±std over seeds.",
        markdown(rows, names, "same", ["acc", "f1", "auc", "lr"], "Table I: test on each client's own distribution"),
        markdown(rows, names, "iid-test", ["acc", "f1", "auc"], "Table II: train non-IID, test on the global IID test set"),
        markdown(rows, names, "same", ["stage1_s", "stage2_s", "stage3_s", "train_s", "stage1_bytes", "stage3_bytes", "train_bytes"],
                 "Table III: simulated training cost per stage (s = seconds, MB = 10^6 bytes; stage 2 moves bytes only with FedGate)", mb),
        markdown(rows, names, "same", ["p50_ms", "p95_ms", "bytes_req", "dp_epsilon"], "Table IV: serverless inference latency, bytes per request, FedSC's epsilon spent"),
        cheapest(rows, names, TARGETS),
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nmoe_table.md").write_text(md + "\n")
    with open(args.out / "nmoe_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return md


def from_csv(args: argparse.Namespace) -> str:
    """The tables of a written ``nmoe_table.csv`` (``args.from_csv``), rewritten to ``args.out``."""
    with open(args.from_csv, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = [{k: (v if k in ("setting", "method", "test") else (int(v) if k == "seed" else float(v))) for k, v in r.items()} for r in raw]
    order = list(dict.fromkeys(r["setting"] for r in rows))
    seeds = len({r["seed"] for r in rows})
    return report(args, rows, [(s, None) for s in order], seeds, None, None)


def main() -> None:
    """Parse arguments, run every setting and seed, print and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits, tau=0.2, 3 rounds, 1 seed; one line per method")
    ap.add_argument("--dataset", choices=["cifar10", "digits"], default=None)
    ap.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 subset directory (default: the scenario's data.dir)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None, help="stage-1 FL rounds (and baseline epochs); default 10 (quick: 3)")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--taus", default=None, help="comma-separated; default 0.5,0.3,0.2 (quick: 0.2); IID is always run except with --quick")
    ap.add_argument("--tau-definition", choices=["paper_table", "outside_share"], default="paper_table")
    ap.add_argument("--horizon", type=float, default=None, help="inference horizon, s (default 60; quick: 10)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path("runs/nmoe_table"))
    ap.add_argument("--from-csv", type=Path, default=None, help="rebuild the tables from a written nmoe_table.csv (no runs)")
    args = ap.parse_args()
    q = args.quick
    args.dataset = args.dataset or ("digits" if q else "cifar10")
    args.rounds = args.rounds or (3 if q else 10)
    args.horizon = args.horizon or (10.0 if q else 60.0)
    seeds = 1 if q else args.seeds
    taus = args.taus or ("0.2" if q else "0.5,0.3,0.2")
    set_torch_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.from_csv is not None:
        print(from_csv(args))
        return
    settings = ([] if q else [("IID", None)]) + [(f"τ={t}", float(t)) for t in taus.split(",") if t]
    rows: list[dict] = []
    for seed in range(seeds):
        for name, tau in settings:
            ts = time.perf_counter()
            rows += run_setting(args, name, tau, seed)
            print(f"[seed {seed}] {name} done in {time.perf_counter() - ts:.0f} s", flush=True)
            report(args, rows, settings, seed + 1, t0, c0)  # partial tables survive an interrupted run
    md = report(args, rows, settings, seeds, t0, c0)
    print(md)
    if q:
        for meth in METHODS:
            sel = [r for r in rows if r["method"] == meth and r["test"] == "same"]
            if not sel:
                continue

            def m(k: str, sel: list[dict] = sel) -> float:
                return float(np.nanmean([r[k] for r in sel])) if any(not math.isnan(r[k]) for r in sel) else math.nan

            print(f"method={meth.replace(' ', '_')} acc={m('acc'):.1f} lr={m('lr'):.1f} train_s={m('train_s'):.1f} train_bytes={m('train_bytes'):.0f} p95_ms={m('p95_ms'):.1f}")
    print(f"wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s")


if __name__ == "__main__":
    main()
