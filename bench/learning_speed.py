"""How fast is a fedsim learning run next to a bare PyTorch loop? (issue 15)

The workload: the shared MNIST set (t10k: 8,000 training pool / 2,000 global
test images), IID over 100 clients, 80/20 split per client (64 training samples
each), an MLP 784-128-10 (in fedsim: mlp backbone without feature layer, one
linear expert, the 128 -> 1 gate), 1 local epoch, batch 32, SGD lr 0.05 (no
momentum), 20 rounds, every client every round, nobody straggling (no dropout,
no memory pressure, no deadline pressure), one thread.

Variants, run alternately (bare, sequential, batched, parallel, bare, ...), the
median of ``--repeats`` runs each:

- ``bare``: per round, per client: build an ``nn.Sequential``, load the global
  weights, train with ``torch.optim.SGD``; average the state dicts. Same splits
  and same initial weights as fedsim.
- ``fedsim_<executor>``: ``fedsim.run`` of the scenario with the full systems
  simulation (topology, channels, flows, devices, records, run directory).

Prints one line per variant (``variant=NAME wall_s=... ratio_to_bare=...
final_acc=...``; ratios are of medians; ``cpu_s`` is this process's CPU time,
not the parallel workers': on a shared host the CPU ratio is the reliable one for the
single-process variants), then per-round client updates per CPU second for 10,
100 and 1,000 clients (batched and sequential executors, 64 samples each),
the batched speed-up on the default scenario's MoE, the training FLOP/s reached
as a share of this machine's single-thread matmul FLOP/s (measured here), and,
with ``--profile``, where sequential and batched fedsim runs spend their CPU time.

Usage: python bench/learning_speed.py [--repeats 3] [--rounds 20] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fedsim
from fedsim.learning.datasets import load_dataset
from fedsim.learning.executor_registry import make_executor
from fedsim.learning.models import MoEConfig
from fedsim.learning.partition import partition
from fedsim.learning.threads import set_torch_threads
from fedsim.learning.training import TrainConfig, TrainJob, init_state
from fedsim.rng import RngStreams

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mnist"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/mnist")
BASE = REPO / "scenarios" / "smart-city-small.yaml"
CLIENTS, SEED = 100, 0


def overrides(executor: str, rounds: int, workers: int) -> list[str]:
    """The workload as ``--set`` overrides of the default scenario."""
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
        f"evaluation.every_rounds={rounds}", "output.figures=false",
    ]  # fmt: skip


def run_fedsim(executor: str, rounds: int, workers: int) -> tuple[float, float, float]:
    """(wall s, cpu s, final accuracy) of one fedsim run."""
    loaded = fedsim.load_scenario(BASE, overrides(executor, rounds, workers))
    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        res = fedsim.run(loaded, Path(tmp) / "run", figures=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return wall, cpu, float(res.rounds["accuracy"].iloc[-1])


def run_bare(rounds: int) -> tuple[float, float, float]:
    """(wall s, cpu s, final accuracy) of the bare per-client PyTorch loop."""
    from torch import nn

    w0, c0 = time.perf_counter(), time.process_time()
    rng = RngStreams(SEED)
    ds = load_dataset("mnist", DATA, rng=rng.fresh_numpy("data/load"))
    splits = partition("iid", ds.y_train.numpy(), CLIENTS, rng.fresh_numpy("data/split"), test_fraction=0.2, num_classes=10)
    xs = [ds.x_train[torch.as_tensor(s.train_idx)].reshape(len(s.train_idx), -1) for s in splits]
    ys = [ds.y_train[torch.as_tensor(s.train_idx)] for s in splits]
    cfg = _mlp_config()
    init = init_state(cfg, rng.seed_int("model/init"))  # the same initial weights as fedsim
    names = {"0.weight": "backbone.1.weight", "0.bias": "backbone.1.bias", "2.weight": "experts.0.fc2.weight", "2.bias": "experts.0.fc2.bias"}
    state = {k: init[v].clone() for k, v in names.items()}
    for r in range(rounds):
        new = []
        for c, (x, y) in enumerate(zip(xs, ys)):
            model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
            model.load_state_dict(state)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            gen = torch.Generator().manual_seed(r * 1_000_003 + c)
            perm = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), 32):
                idx = perm[s : s + 32]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            new.append(model.state_dict())
        state = {k: torch.stack([sd[k] for sd in new]).mean(0) for k in state}
    model.load_state_dict(state)
    with torch.no_grad():
        acc = float((model(ds.x_test.reshape(len(ds.y_test), -1)).argmax(1) == ds.y_test).float().mean())
    return time.perf_counter() - w0, time.process_time() - c0, acc


def _mlp_config() -> MoEConfig:
    return MoEConfig((1, 28, 28), 10, widths=(128,), feature_dim=128, num_experts=1, top_k=1, expert_hidden=0, aux_loss_weight=0.0, feature_layer=False)


def throughput(n_clients: int, executor: str) -> tuple[float, float]:
    """(client updates per CPU s, training FLOP per CPU s) of one round of ``n_clients`` x 64
    samples (median of 3; CPU time of this single-threaded process: robust on a shared host)."""
    rng = RngStreams(SEED)
    ds = load_dataset("mnist", DATA, rng=rng.fresh_numpy("data/load"))
    cfg = _mlp_config()
    state = init_state(cfg, 0)
    tc = TrainConfig(lr=0.05, batch_size=32)
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


def moe_speedup() -> tuple[float, int]:
    """Batched over sequential on one round of the default scenario (its MoE, all clients, 2 experts each)."""
    from fedsim.build import build_parts

    world = build_parts(fedsim.load_scenario(BASE, ["training.device=cpu"])).trainer
    state = init_state(world.model_config, 0)
    jobs = [world.job(c, 0, state, [i % 4, (i + 1) % 4], True) for i, c in enumerate(world.clients) if world.num_samples(c) > 0]
    out = {}
    for name in ("sequential", "batched", "sequential", "batched"):
        ex = make_executor(name)
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


def profile_outside_torch(executor: str, rounds: int) -> None:
    """CPU-time profile (cProfile with a process-time clock) of one fedsim run: the
    phases of the run, and how much of the whole is torch's own code."""
    import cProfile
    import pstats

    run_fedsim(executor, 1, 2)  # warm: lazy imports (scikit-learn at the first evaluation) are not the run's cost
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    run_fedsim(executor, rounds, 2)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    in_torch = sum(v[2] for (file, _l, fn), v in stats.items() if "/torch/" in file or "torch._C" in fn)
    phases = {
        "world build (data, topology, devices)": ("fedsim/build.py", "build_parts"),
        "training (executor.run)": ("fedsim/protocols/fedmoe.py", "train"),
        "FedAvg + alignment feedback": ("fedsim/protocols/fedmoe.py", "fedavg"),
        "global evaluation": ("fedsim/build.py", "evaluate"),
        "personalised accuracy": ("fedsim/build.py", "personalised_accuracy"),
        "records of a round": ("fedsim/protocols/base.py", "record_round"),
        "network flows (max-min sharing)": ("fedsim/net/flows.py", "_flush"),
        "writing the run directory": ("fedsim/api.py", "_write_frames"),
    }
    print(f"profile fedsim_{executor}, {rounds} rounds: {total:.2f} s CPU, {100 * in_torch / total:.0f} % inside torch (its Python and C++ ops)")
    rest = total
    for label, (file, fn) in phases.items():
        cum = sum(v[3] for (f, _l, name), v in stats.items() if f.endswith(file) and name == fn)
        rest -= cum
        print(f"  {label:40s} {cum:6.2f} s  {100 * cum / total:5.1f} %")
    print(f"  {'the rest (SimPy, devices, channels, ...)':40s} {rest:6.2f} s  {100 * rest / total:5.1f} %")
    print("  (cProfile's per-call cost inflates Python-heavy parts; the shares are indicative)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default="bare,sequential,batched,parallel")
    ap.add_argument("--profile", action="store_true", help="also profile a sequential and a batched fedsim run")
    ap.add_argument("--only-profile", action="store_true", help="just the profiles")
    args = ap.parse_args()
    set_torch_threads(1)

    if args.only_profile:
        for ex in ("sequential", "batched"):
            profile_outside_torch(ex, args.rounds)
        return
    variants = args.variants.split(",")
    res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:  # alternate: every repeat runs every variant once
            res[v].append(run_bare(args.rounds) if v == "bare" else run_fedsim(v, args.rounds, args.workers))
            print(f"  repeat {rep} {v}: wall {res[v][-1][0]:.2f} s, cpu {res[v][-1][1]:.2f} s, acc {res[v][-1][2]:.4f}", flush=True)
    med = {v: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2]) for v, rs in res.items()}
    base = med.get("bare", (float("nan"),) * 3)
    for v, (wall, cpu, acc) in med.items():
        name = v if v == "bare" else f"fedsim_{v}"
        print(f"variant={name} wall_s={wall:.2f} ratio_to_bare={wall / base[0]:.2f} final_acc={acc:.4f} cpu_s={cpu:.2f} cpu_ratio_to_bare={cpu / base[1]:.2f}")

    peak = matmul_flops()
    print(f"single-thread matmul: {peak / 1e9:.1f} GFLOP/s")
    for n in (10, 100, 1000):
        ub, fb = throughput(n, "batched")
        us, fs = throughput(n, "sequential")
        print(f"clients={n} batched_updates_per_s={ub:.1f} sequential_updates_per_s={us:.1f} speedup={ub / us:.2f} "
              f"batched_flops_share={fb / peak:.2f} sequential_flops_share={fs / peak:.2f}")  # fmt: skip
    sp, n = moe_speedup()
    print(f"default scenario MoE ({n} clients, 2 experts each, one round): batched speedup over sequential={sp:.2f}")
    if args.profile:
        for ex in ("sequential", "batched"):
            profile_outside_torch(ex, args.rounds)


if __name__ == "__main__":
    main()
