"""City scale: 1k / 10k / 100k / 1M devices, a fixed cohort (metro-100k, metro-1m).

Sizes up to 100k run scenarios/metro-100k.yaml scaled (every device class and
the synthetic data pool, 5 samples per device, by the same factor; the city,
the cells and the cohort of 300 of 360 selected per round stay the same);
1,000,000 runs scenarios/metro-1m.yaml as shipped (a larger city, the same
cohort). Each size runs (real training of the cohort included) in a fresh
subprocess so that its peak memory is its own. Prints per size: build and
run seconds, SimPy events (all, and per round), peak RSS, cost per
cohort-client-round (run seconds / selected clients), and the bare-SimPy
rate measured in the same process (timeouts/s of a bare timeout loop), so
the figures can be normalised across machines (``run_simpy_Mt`` = run
seconds x that rate / 1e6: the run's cost in bare-SimPy timeouts). The last
lines check the issue-28 targets, each ``met`` / ``NOT met``.

    python bench/city_scale.py --sizes 1000 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "metro-100k.yaml"
SCENARIO_1M = REPO / "scenarios" / "metro-1m.yaml"


def simpy_rate(n: int = 300_000) -> float:
    """Bare SimPy timeouts per second on this machine (one process yielding timeouts)."""
    import simpy

    env = simpy.Environment()

    def loop():
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(loop())
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def child(size: int, rounds: int | None, extra: list[str]) -> dict[str, float]:
    """Build and run the scenario at ``size`` devices (in this process)."""
    import gc

    import torch

    from fedsim.build import build_parts
    from fedsim.config import load_scenario
    from fedsim.protocols import make_protocol

    torch.set_num_threads(1)
    path = SCENARIO_1M if size == 1_000_000 else SCENARIO
    base = load_scenario(path).scenario
    counts = base.topology.grid.clients
    total = sum(counts.values())
    scaled = {c: max(1, round(v * size / total)) for c, v in counts.items()}
    n = sum(scaled.values())
    sets = [] if path == SCENARIO_1M else [f"topology.grid.clients={json.dumps(scaled)}",
                                           f"data.synthetic_samples={5 * n}"]
    sets += extra
    if rounds is not None:
        sets.append(f"run.rounds={rounds}")
    rate = simpy_rate()
    c0 = time.process_time()
    t0 = time.perf_counter()
    world = build_parts(load_scenario(path, sets))
    proto = make_protocol(world)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    t1 = time.perf_counter()
    c1 = time.process_time()
    proto.run()
    t2 = time.perf_counter()
    c2 = time.process_time()
    env = world.sim.env
    rows = world.sim.rec.rows("rounds")
    selected = sum(int(r.get("selected", 0)) for r in rows)
    n_rounds = len(rows)
    net = world.systems.network
    return {"devices": n, "bs": len(net.bs_ids), "rounds": n_rounds, "selected": selected,
            "build_s": t1 - t0, "run_s": t2 - t1, "build_cpu_s": c1 - c0, "run_cpu_s": c2 - c1, "wall_s": t2 - t0, "events": float(next(env._eid)),
            "sim_s": float(env.now), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "simpy_rate": (rate + simpy_rate()) / 2.0, "handovers": net.handovers,
            "scenario": path.name,
            "evaluations": float(getattr(net, "evaluations", 0))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--rounds", type=int, default=None, help="override run.rounds")
    ap.add_argument("--set", action="append", default=[], help="extra scenario override key=value")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(a.child, a.rounds, a.set)))
        return
    res = []
    for size in a.sizes:
        cmd = [sys.executable, __file__, "--child", str(size)] + (
            ["--rounds", str(a.rounds)] if a.rounds else []) + sum((["--set", s] for s in a.set), [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {size} failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(r)
        print(row(r), flush=True)
    targets(res)


def row(r: dict) -> str:
    """One table line of a size's figures."""
    ccr = r["run_s"] / max(r["selected"], 1)
    return (f"devices={r['devices']} scenario={r['scenario']} bs={r['bs']} rounds={r['rounds']} "
            f"build_s={r['build_s']:.1f} run_s={r['run_s']:.1f} wall_s={r['wall_s']:.1f} "
            f"build_cpu_s={r['build_cpu_s']:.1f} run_cpu_s={r['run_cpu_s']:.1f} "
            f"events={r['events']:.0f} events_per_round={r['events'] / max(r['rounds'], 1):.0f} "
            f"peak_rss_gb={r['peak_rss_gb']:.2f} simpy_timeouts_per_s={r['simpy_rate']:.0f} "
            f"run_simpy_Mt={r['run_s'] * r['simpy_rate'] / 1e6:.1f} "
            f"ms_per_cohort_client_round={1e3 * ccr:.2f} handovers={r['handovers']}")


def targets(res: list[dict]) -> None:
    """Print the issue-28 targets that the measured sizes allow, each met / NOT met."""
    by = {r["devices"]: r for r in res}
    lo, hi = res[0], res[-1]

    def say(name: str, value: float, limit: float, unit: str = "") -> None:
        print(f"target {name}: {value:.2f}{unit} <= {limit}{unit}: {'met' if value <= limit else 'NOT met'}")

    big = by.get(100_000)
    if big is not None:
        say("metro-100k build (wall)", big["build_s"], 30, " s")
        say("metro-100k build (CPU)", big["build_cpu_s"], 30, " s")
        say("metro-100k whole run (wall)", big["wall_s"], 300, " s")
        say("metro-100k whole run (CPU)", big["build_cpu_s"] + big["run_cpu_s"], 300, " s")
    m = by.get(1_000_000)
    if m is not None:
        say("metro-1m whole run (wall)", m["wall_s"], 900, " s")
        say("metro-1m whole run (CPU)", m["build_cpu_s"] + m["run_cpu_s"], 900, " s")
        say("metro-1m peak RSS", m["peak_rss_gb"], 8, " GB")
    if hi is not lo:
        ev = (hi["events"] / max(hi["rounds"], 1)) / (lo["events"] / max(lo["rounds"], 1))
        say(f"events per round {hi['devices']} / {lo['devices']}", ev, 1.5)
        # normalised by each process's bare-SimPy rate: load on a shared machine cancels
        c0 = lo["run_s"] * lo["simpy_rate"] / max(lo["selected"], 1)
        c1 = hi["run_s"] * hi["simpy_rate"] / max(hi["selected"], 1)
        say(f"cost per cohort-client-round {hi['devices']} / {lo['devices']} (SimPy-normalised)",
            c1 / c0, 1.3)
        c0 = lo["run_cpu_s"] / max(lo["selected"], 1)
        c1 = hi["run_cpu_s"] / max(hi["selected"], 1)
        say(f"cost per cohort-client-round {hi['devices']} / {lo['devices']} (CPU seconds)", c1 / c0, 1.3)


if __name__ == "__main__":
    main()
