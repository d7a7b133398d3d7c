"""How fast is a fedsim learning run next to a bare PyTorch loop? (issues 15, 32)

The workload (the Flower comparison): the shared MNIST set (t10k: 8,000 training
pool / 2,000 global test images), IID over 100 clients, 80/20 split per client
(64 training samples each), an MLP 784-128-10 (in fedsim: mlp backbone without
feature layer, one linear expert, ``model.feature_layer=false``,
``model.expert_hidden=0``), 1 local epoch, batch 32, SGD lr 0.05 (no momentum),
20 rounds, every client every round, nobody straggling (no dropout, no memory
pressure, no deadline pressure), one thread.

**Whole processes, the way a user runs them** (the first line of each variant):

- ``bare``: ``python bench/bare_mlp.py``, a plain PyTorch FedAvg script (per
  round, per client: build an ``nn.Sequential``, load the global weights, train
  with ``torch.optim.SGD``; average the state dicts; evaluate the global model),
  with fedsim's data split and initial weights;
- ``fedsim_<executor>``: ``fedsim run scenarios/smart-city-small.yaml --quiet
  --set ...`` (the CLI; full systems simulation, records, run directory, the
  report; figures off), evaluating every round as the bare script does.

Each is a child process with ``OMP_NUM_THREADS=MKL_NUM_THREADS=1`` (and one torch
thread), at the bench's own niceness; the variants alternate (bare, batched,
sequential, bare, ...) and each figure is the median of ``--repeats`` runs. CPU
time is the child's user + system time (``getrusage``), the reliable figure on a
shared host; wall time is printed too. Each variant prints
``variant=NAME cpu_ratio_to_bare=... wall_ratio_to_bare=... final_acc=... cpu_s=... wall_s=...``
and then, as its second line (``in_process ...``), the earlier figure of issue 15:
``fedsim.run`` timed inside this interpreter after imports and scenario loading,
with one evaluation at the end (``--no-in-process`` skips it).

Then: per-round client updates per CPU second for 10, 100 and 1,000 clients
(batched and sequential executors, 64 samples each), the batched speed-up on the
default scenario's MoE, the training FLOP/s reached as a share of this machine's
single-thread matmul FLOP/s (measured here), and, with ``--profile``, where a
``fedsim run`` of the workload spends its CPU time (cProfile around the CLI, in a
child process, imports included).

Usage: python bench/learning_speed.py [--repeats 3] [--rounds 20] [--variants bare,batched,sequential] [--profile]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fedsim
from fedsim.learning.datasets import load_dataset
from fedsim.learning.executor_registry import make_executor
from fedsim.learning.partition import partition
from fedsim.learning.threads import set_torch_threads
from fedsim.learning.training import TrainConfig, TrainJob, init_state
from fedsim.rng import RngStreams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_mlp import NAMES, fedavg_round, mlp_config  # noqa: E402 - the bare script's model, beside this file

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mnist"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/mnist")
BASE = REPO / "scenarios" / "smart-city-small.yaml"
CLIENTS, SEED = 100, 0
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def overrides(executor: str, rounds: int, workers: int, every: int) -> list[str]:
    """The workload as ``--set`` overrides of the default scenario (evaluation every ``every`` rounds)."""
    return [
        f"run.rounds={rounds}", f"run.seed={SEED}", f"topology.grid.clients={{phone: {CLIENTS}}}",
        "data.dataset=mnist", f"data.dir={DATA}", "data.partition=iid", "data.test_fraction=0.2",
        "model.backbone=mlp", "model.hidden=128", "model.feature_layer=false", "model.num_experts=1",
        "model.top_k=1", "model.expert_hidden=0", "model.aux_loss_weight=0", "model.gate_noise_std=0",
        "training.optimizer=sgd", "training.lr=0.05", "training.momentum=0", "training.weight_decay=0",
        "training.local_epochs=1", "training.batch_size=32", f"training.executor={executor}",
        f"training.workers={workers}", "training.device=cpu", "training.torch_threads=1",
        f"protocol.fedmoe.clients_per_round={CLIENTS}", "protocol.fedmoe.over_selection=1.0",
        "protocol.fedmoe.deadline_s=100000", "devices.dropout=false", "devices.memory_pressure=false",
        f"evaluation.every_rounds={every}", "output.figures=false",
    ]  # fmt: skip


def cli_args(executor: str, rounds: int, workers: int, out: Path) -> list[str]:
    """``fedsim run`` of the workload, evaluating every round, as a user types it."""
    return ["run", str(BASE), "--quiet", "--out", str(out), *(a for s in overrides(executor, rounds, workers, 1) for a in ("--set", s))]


# ----------------------------------------------------------------------------- whole processes


def child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s = user + system of the child, stdout) of one child process, one thread."""
    env = {**os.environ, **ONE_THREAD}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def whole_bare(rounds: int) -> tuple[float, float, float]:
    """(wall s, CPU s, final accuracy) of ``python bench/bare_mlp.py``."""
    wall, cpu, out = child([sys.executable, str(REPO / "bench" / "bare_mlp.py"), "--data", str(DATA), "--rounds", str(rounds)])
    return wall, cpu, float(re.search(r"final_acc=([0-9.]+)", out).group(1))  # type: ignore[union-attr]


def whole_fedsim(executor: str, rounds: int, workers: int) -> tuple[float, float, float]:
    """(wall s, CPU s, final accuracy) of ``fedsim run`` (the CLI, evaluating every round)."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu, out = child([sys.executable, "-m", "fedsim.cli", *cli_args(executor, rounds, workers, Path(tmp) / "run")])
    return wall, cpu, float(re.search(r"final accuracy ([0-9.]+)", out).group(1))  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- in this process (issue 15's figure)


def run_fedsim(executor: str, rounds: int, workers: int) -> tuple[float, float, float]:
    """(wall s, cpu s, final accuracy) of one ``fedsim.run`` in this process (one evaluation, at the end)."""
    loaded = fedsim.load_scenario(BASE, overrides(executor, rounds, workers, rounds))
    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        res = fedsim.run(loaded, Path(tmp) / "run", figures=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return wall, cpu, float(res.rounds["accuracy"].iloc[-1])


def run_bare(rounds: int) -> tuple[float, float, float]:
    """(wall s, cpu s, final accuracy) of the bare loop in this process (after imports, one evaluation)."""
    from torch import nn

    w0, c0 = time.perf_counter(), time.process_time()
    rng = RngStreams(SEED)
    ds = load_dataset("mnist", DATA, rng=rng.fresh_numpy("data/load"))
    splits = partition("iid", ds.y_train.numpy(), CLIENTS, rng.fresh_numpy("data/split"), test_fraction=0.2, num_classes=10)
    xs = [ds.x_train[torch.as_tensor(s.train_idx)].reshape(len(s.train_idx), -1) for s in splits]
    ys = [ds.y_train[torch.as_tensor(s.train_idx)] for s in splits]
    init = init_state(mlp_config(), rng.seed_int("model/init"))  # the same initial weights as fedsim
    state = {k: init[v].clone() for k, v in NAMES.items()}
    for r in range(rounds):
        state = fedavg_round(state, xs, ys, r)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    model.load_state_dict(state)
    with torch.no_grad():
        acc = float((model(ds.x_test.reshape(len(ds.y_test), -1)).argmax(1) == ds.y_test).float().mean())
    return time.perf_counter() - w0, time.process_time() - c0, acc


# ----------------------------------------------------------------------------- executors alone


def throughput(n_clients: int, executor: str) -> tuple[float, float]:
    """(client updates per CPU s, training FLOP per CPU s) of one round of ``n_clients`` x 64
    samples (median of 3; CPU time of this single-threaded process: robust on a shared host)."""
    rng = RngStreams(SEED)
    ds = load_dataset("mnist", DATA, rng=rng.fresh_numpy("data/load"))
    cfg = mlp_config()
    state = init_state(cfg, 0)
    tc = TrainConfig(lr=0.05, batch_size=32, expert_loss=False)  # as a run with the default reward (gate_prob)
    pool = len(ds.y_train)
    jobs = []
    for c in range(n_clients):
        idx = (torch.arange(64) + 64 * c) % pool  # 1,000 clients need more than the pool: wrap around
        jobs.append(TrainJob(c, 0, state, cfg, [0], ds.x_train[idx], ds.y_train[idx], tc, seed=c))
    ex = make_executor(executor)
    times = []
    for _ in range(3):
        t0 = time.process_time()
        ups = ex.run(jobs)
        times.append(time.process_time() - t0)
    t = statistics.median(times)
    return n_clients / t, sum(u.flops for u in ups) / t


def moe_jobs() -> list[TrainJob]:
    """One round of the default scenario's jobs (its MoE, every client with data, 2 experts each, its reward)."""
    from fedsim.build import build_parts

    world = build_parts(fedsim.load_scenario(BASE, ["training.device=cpu"])).trainer
    state = init_state(world.model_config, 0)
    return [world.job(c, 0, state, [i % 4, (i + 1) % 4], True) for i, c in enumerate(world.clients) if world.num_samples(c) > 0]


def moe_speedup(repeats: int = 3) -> tuple[float, int]:
    """Batched over sequential CPU time on one round of the default scenario (best of ``repeats``, alternating)."""
    jobs = moe_jobs()
    out: dict[str, list[float]] = {}
    exs = {name: make_executor(name) for name in ("sequential", "batched")}
    for _ in range(repeats):
        for name, ex in exs.items():
            t0 = time.process_time()
            ex.run(jobs)
            out.setdefault(name, []).append(time.process_time() - t0)
    return min(out["sequential"]) / min(out["batched"]), len(jobs)


def matmul_flops() -> float:
    """Single-thread float32 matmul FLOP per CPU second of this machine (512 x 512 x 512, best of 5)."""
    a, b = torch.ones(512, 512), torch.ones(512, 512)
    best = 0.0
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(10):
            torch.mm(a, b)
        best = max(best, 10 * 2 * 512**3 / (time.process_time() - t0))
    return best


# ----------------------------------------------------------------------------- profile of the CLI run

_PHASES = {
    "imports": ("<frozen importlib._bootstrap>", "_find_and_load"),
    "world build (data, topology, devices)": ("fedsim/build.py", "build_parts"),
    "training (executor.run, in the replay seam)": ("fedsim/parts/learning.py", "train"),
    "  of which per-expert-loss passes": ("fedsim/learning/training.py", "_expert_losses"),
    "global evaluation": ("fedsim/parts/learning.py", "evaluate"),
    "alignment metrics (per-client inference)": ("fedsim/parts/learning.py", "evaluate_alignment"),
    "personalised accuracy (end)": ("fedsim/parts/learning.py", "personalised_accuracy"),
    "records of a round": ("fedsim/protocols/base.py", "record_round"),
    "network flows (max-min sharing)": ("fedsim/net/flows.py", "_flush"),
    "writing the run directory": ("fedsim/api.py", "_write_frames"),
    "the report": ("fedsim/cli.py", "_write_report"),
}

_PROFILE_CHILD = """
import cProfile, sys, time
prof = cProfile.Profile(time.process_time)
prof.enable()
from fedsim.cli import main
code = main(sys.argv[2:])
prof.disable()
prof.dump_stats(sys.argv[1])
sys.exit(code)
"""


def profile_cli(executor: str, rounds: int) -> None:
    """CPU-time profile (cProfile with a process-time clock) of one ``fedsim run`` of the workload in a
    child process, imports included: the phases of the run, and how much of it is torch's own code."""
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "prof.out"
        child([sys.executable, "-c", _PROFILE_CHILD, str(stats_file), *cli_args(executor, rounds, 2, Path(tmp) / "run")])
        stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    in_torch = sum(v[2] for (file, _l, fn), v in stats.items() if "/torch/" in file or "torch._C" in fn)
    print(f"profile fedsim run ({executor}, {rounds} rounds, evaluation every round): {total:.2f} s CPU under cProfile, "
          f"{100 * in_torch / total:.0f} % inside torch (its Python and C++ ops)")  # fmt: skip
    rest = total
    for label, (file, fn) in _PHASES.items():
        cum = sum(v[3] for (f, _l, name), v in stats.items() if f.endswith(file) and name == fn)  # recursion counted once
        rest -= 0 if label.startswith("  ") else cum
        print(f"  {label:44s} {cum:6.2f} s  {100 * cum / total:5.1f} %")
    print(f"  {'the rest (SimPy, devices, channels, ...)':44s} {rest:6.2f} s  {100 * rest / total:5.1f} %")
    print("  (cProfile's per-call cost inflates Python-heavy parts; the shares are indicative)")


# ----------------------------------------------------------------------------- main


def whole_process_table(variants: list[str], rounds: int, repeats: int, workers: int, in_process: bool) -> None:
    """The whole-process lines (and the in-process lines) of ``variants``, alternating."""
    res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    inp: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for rep in range(repeats):
        for v in variants:  # alternate: every repeat runs every variant once
            res[v].append(whole_bare(rounds) if v == "bare" else whole_fedsim(v, rounds, workers))
            print(f"  repeat {rep} {v}: wall {res[v][-1][0]:.2f} s, cpu {res[v][-1][1]:.2f} s, acc {res[v][-1][2]:.4f}", flush=True)
        if in_process:
            for v in variants:
                inp[v].append(run_bare(rounds) if v == "bare" else run_fedsim(v, rounds, workers))
    for table, label in ((res, ""), (inp, "in_process ")):
        if not any(table.values()):
            continue
        med = {v: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2]) for v, rs in table.items()}
        base = med.get("bare", (float("nan"),) * 3)
        for v, (wall, cpu, acc) in med.items():
            name = v if v == "bare" else f"fedsim_{v}"
            print(f"{label}variant={name} cpu_ratio_to_bare={cpu / base[1]:.2f} wall_ratio_to_bare={wall / base[0]:.2f} "
                  f"final_acc={acc:.4f} cpu_s={cpu:.2f} wall_s={wall:.2f}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default="bare,batched,sequential", help="bare and executor names (sequential, batched, parallel)")
    ap.add_argument("--no-in-process", dest="in_process", action="store_false", help="skip the in-process lines")
    ap.add_argument("--profile", action="store_true", help="also profile a batched and a sequential `fedsim run`")
    ap.add_argument("--only", choices=["whole", "executors", "moe", "profile"], help="just one part")
    args = ap.parse_args()
    set_torch_threads(1)

    if args.only in (None, "whole"):
        whole_process_table(args.variants.split(","), args.rounds, args.repeats, args.workers, args.in_process)
    if args.only in (None, "executors"):
        peak = matmul_flops()
        print(f"single-thread matmul: {peak / 1e9:.1f} GFLOP/s")
        for n in (10, 100, 1000):
            ub, fb = throughput(n, "batched")
            us, fs = throughput(n, "sequential")
            print(f"clients={n} batched_updates_per_s={ub:.1f} sequential_updates_per_s={us:.1f} speedup={ub / us:.2f} "
                  f"batched_flops_share={fb / peak:.2f} sequential_flops_share={fs / peak:.2f}")  # fmt: skip
    if args.only in (None, "moe"):
        sp, n = moe_speedup()
        print(f"default scenario MoE ({n} clients, 2 experts each, one round): batched speedup over sequential={sp:.2f}")
    if args.profile or args.only == "profile":
        for ex in ("batched", "sequential"):
            profile_cli(ex, args.rounds)


if __name__ == "__main__":
    main()
