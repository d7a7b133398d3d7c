"""Cost of one flow event (a flow ends, another starts) against the number of active flows.

A city-like flow topology: ``--cells`` cells (uplink, coefficient 1 / SE
per flow) behind ``--edges`` edge links and one shared cloud link whose
capacity is a quarter of what the cells offer, so the cloud couples every
active flow into one max-min component (the worst case of issue 16). For
each population (default 1k, 10k, 60k active flows) it starts the flows,
then times ``--events`` flow events (stop one flow, start another on a
random cell) and the completions of a short simulated interval, and prints
the mean wall time per event. ``--impl old`` runs the same workload through
another implementation of ``fedsim.net.flows`` given as a file (e.g. the one
on main before the incremental update: ``git show main~:fedsim/net/flows.py >
/tmp/old_flows.py``), so both are measured in one run on one machine.

    python bench/flow_events.py --sizes 1000 10000 60000 --old /tmp/old_flows.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
from types import ModuleType

import numpy as np
import simpy


def _load(path: str | None) -> ModuleType:
    if path is None:
        from fedsim.net import flows
        return flows
    spec = importlib.util.spec_from_file_location("old_flows", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_flows"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def measure(mod: ModuleType, n_flows: int, cells: int, edges: int, events: int, seed: int,
            budget_s: float) -> dict[str, float]:
    """Mean seconds per flow event at ``n_flows`` active flows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    env = simpy.Environment()
    fs = mod.FlowSystem(env, defer=True)
    cell_hz = 20e6
    se_mean = 2.0
    cloud = fs.add_link("edge->cloud", "wired", "edge", 0.25 * cells * cell_hz * se_mean)
    edge = [fs.add_link(f"e{k}", "wired", f"e{k}", cells * cell_hz * se_mean / edges)
            for k in range(edges)]
    cell = [fs.add_link(f"bs{j}/up", "uplink", f"bs{j}", cell_hz) for j in range(cells)]
    for lk in cell:
        lk.min_coeff = 1.0 / 8.0

    def path(j: int) -> tuple[list, list[float]]:
        se = float(rng.uniform(0.3, 6.0))
        return [cell[j], edge[j % edges], cloud], [1.0 / se, 1.0, 1.0]

    flows = []
    with fs.batch():
        for _ in range(n_flows):
            p, c = path(int(rng.integers(cells)))
            flows.append(fs.start(p, c, 1e12))  # long flows: the population stays put
    env.run(until=env.now + 1e-3)
    gc.collect()
    t0 = time.perf_counter()
    done = 0
    for k in range(events):
        i = int(rng.integers(len(flows)))
        fs.stop(flows[i])
        p, c = path(int(rng.integers(cells)))
        flows[i] = fs.start(p, c, 1e12)
        env.run(until=env.now + 1e-3)  # the deferred recomputation runs
        done = k + 1
        if time.perf_counter() - t0 > budget_s:
            break
    dt = time.perf_counter() - t0
    return {"flows": n_flows, "events": done, "s_per_event": dt / (2 * done)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 60000])
    ap.add_argument("--cells", type=int, default=1089)
    ap.add_argument("--edges", type=int, default=8)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="stop timing a population after this many wall seconds")
    ap.add_argument("--old", default=None, help="file of another flows.py to compare with")
    a = ap.parse_args(argv)
    impls = [("new", _load(None))] + ([("old", _load(a.old))] if a.old else [])
    res: dict[tuple[str, int], float] = {}
    for n in a.sizes:
        for name, mod in impls:
            r = measure(mod, n, a.cells, a.edges, a.events, a.seed, a.budget_s)
            res[(name, n)] = r["s_per_event"]
            print(f"impl={name} flows={n} events={2 * r['events']:.0f} "
                  f"ms_per_flow_event={1e3 * r['s_per_event']:.3f}", flush=True)
    n0 = a.sizes[0]
    for name, _ in impls:
        for n in a.sizes[1:]:
            print(f"impl={name} cost({n})/cost({n0})={res[(name, n)] / res[(name, n0)]:.2f} "
                  f"for {n / n0:.0f}x the flows")


if __name__ == "__main__":
    main()
