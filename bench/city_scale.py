"""City scale: scenarios/metro-100k.yaml at 1k / 10k / 100k devices, a fixed cohort.

Runs the scenario (real training of the cohort included) once per
population size, each in a fresh subprocess so that its peak memory is its
own, scaling every device class and the synthetic data pool (5 samples per
device) by the same factor; the city, the cells and the cohort (300 of 360
selected per round) stay the same. Prints per size: wall seconds (build and
run), SimPy events, peak RSS, cost per device-round and per
cohort-client-round (wall / (rounds x selected clients)), and the raw SimPy
event rate measured in the same process (a bare timeout loop), so the ratio
to the engine's ceiling is visible. The last line is the ratio of the cost
per cohort-client-round at the largest size to the smallest (target <= 1.5).

    python bench/city_scale.py --sizes 1000 10000 100000
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
    base = load_scenario(SCENARIO).scenario
    counts = base.topology.grid.clients
    total = sum(counts.values())
    scaled = {c: max(1, round(v * size / total)) for c, v in counts.items()}
    n = sum(scaled.values())
    sets = [f"topology.grid.clients={json.dumps(scaled)}",
            f"data.synthetic_samples={5 * n}"] + extra
    if rounds is not None:
        sets.append(f"run.rounds={rounds}")
    t0 = time.perf_counter()
    world = build_parts(load_scenario(SCENARIO, sets))
    proto = make_protocol(world)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    t1 = time.perf_counter()
    proto.run()
    t2 = time.perf_counter()
    env = world.sim.env
    rows = world.sim.rec.rows("rounds")
    selected = sum(int(r.get("selected", 0)) for r in rows)
    n_rounds = len(rows)
    net = world.systems.network
    return {"devices": n, "bs": len(net.bs_ids), "rounds": n_rounds, "selected": selected,
            "build_s": t1 - t0, "run_s": t2 - t1, "wall_s": t2 - t0, "events": float(next(env._eid)),
            "sim_s": float(env.now), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "simpy_rate": simpy_rate(), "handovers": net.handovers,
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
        ccr = r["run_s"] / max(r["selected"], 1)
        print(f"devices={r['devices']} bs={r['bs']} rounds={r['rounds']} build_s={r['build_s']:.1f} "
              f"run_s={r['run_s']:.1f} wall_s={r['wall_s']:.1f} events={r['events']:.0f} "
              f"events_per_s={r['events'] / r['run_s']:.0f} simpy_ceiling_per_s={r['simpy_rate']:.0f} "
              f"peak_rss_gb={r['peak_rss_gb']:.2f} "
              f"ms_per_device_round={1e3 * r['wall_s'] / (r['devices'] * r['rounds']):.4f} "
              f"ms_per_cohort_client_round={1e3 * ccr:.2f} handovers={r['handovers']}", flush=True)
    c0 = res[0]["run_s"] / max(res[0]["selected"], 1)
    c1 = res[-1]["run_s"] / max(res[-1]["selected"], 1)
    print(f"cost_per_cohort_client_round({res[-1]['devices']})/({res[0]['devices']})={c1 / c0:.2f}")


if __name__ == "__main__":
    main()
