"""Systems-only scale benchmark: no learning, just the network and devices.

Each round every online client downloads a payload from the cloud server,
runs a compute job and uploads the payload back, under dropout, OOM,
fading and mobility, with a round deadline. Prints figures; the last line is
``wall_s=... events=... events_per_s=...`` (events = SimPy events scheduled).

    python bench/systems_scale.py --clients 1000 --rounds 50
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Mapping
from typing import Any

import simpy

from fedsim.devices import DEVICE_CLASSES, Device, default_device_classes
from fedsim.engine import Simulation
from fedsim.net import Network, NetworkParams, manhattan_grid
from fedsim.net.params import ChannelParams


def build(n_clients: int, seed: int, mobility_interval_s: float, nearest_bs: int = 0,
          population: str = "eager") -> tuple[Simulation, Network, Mapping[str, Device], Any]:
    """The network and devices; lazy: devices as columns (DevicePopulation), returned last."""
    sim = Simulation(seed)
    blocks = max(3, math.ceil(math.sqrt(n_clients / 10.0)))
    sites = [(ix, iy, "macro" if (ix // 3 + iy // 3) % 2 == 0 else "small")
             for ix in range(1, blocks, 3) for iy in range(1, blocks, 3)]
    per = {c: n_clients // len(DEVICE_CLASSES) for c in DEVICE_CLASSES}
    per["phone"] += n_clients - sum(per.values())
    graph = manhattan_grid(blocks_x=blocks, blocks_y=blocks, block_m=100.0, bs_sites=sites,
                           clients_per_class=per, rng=sim.rng.numpy("topology"))
    classes = default_device_classes()
    params = NetworkParams(channel=ChannelParams(coherence_s=1.0, nearest_bs=nearest_bs,  # attachment: as measured
                                                 population=population, attachment="downlink"),
                           mobility_interval_s=mobility_interval_s, link_sample_interval_s=10.0)
    cls: type[Network] = Network
    if population == "lazy":
        from fedsim.net.population import LazyNetwork

        cls = LazyNetwork
    net = cls(sim, graph, params, server="cloud", classes=classes)
    if population == "lazy":
        from fedsim.devices.population import DevicePopulation

        pop = DevicePopulation(sim, net.client_ids, [graph.nodes[c]["device_class"] for c in net.client_ids],
                               classes)
        return sim, net, pop.devices, pop
    devices = {c: Device(sim, c, classes[graph.nodes[c]["device_class"]]) for c in net.client_ids}
    return sim, net, devices, None


def client_round(sim: Simulation, net: Network, dev: Device, r: int, payload: float,
                 flops: float, mem: float) -> Any:
    child = None
    try:
        child = dev.watch(net.transfer("cloud", dev.node, payload, round=r, tag="down"), hazard=True)
        res = yield child
        if not res.completed:
            return "down_failed"
        child = dev.compute(flops, memory_bytes=mem, round=r)
        cres = yield child
        if not cres.completed:
            return "compute_failed"
        child = dev.watch(net.transfer(dev.node, "cloud", payload, round=r, tag="up"), hazard=True)
        res = yield child
        return "ok" if res.completed else "up_failed"
    except simpy.Interrupt as intr:
        if child is not None and child.is_alive:
            child.interrupt(intr.cause)
        return "deadline"


def server(sim: Simulation, net: Network, devices: Mapping[str, Device], rounds: int, payload: float,
           flops: float, mem: float, deadline_s: float, stats: dict[str, int], pop: Any = None) -> Any:
    env = sim.env
    for r in range(rounds):
        t0 = env.now
        online = pop.is_online if pop is not None else (lambda c: devices[c].online)
        procs = [env.process(client_round(sim, net, devices[c], r, payload, flops, mem))
                 for c in devices if online(c)]
        yield env.all_of(procs) | env.timeout(deadline_s)
        for p in procs:
            if p.is_alive:
                p.interrupt("deadline")
        yield env.timeout(0)
        for p in procs:
            if p.triggered:
                stats[p.value] = stats.get(p.value, 0) + 1
        sim.rec.row("rounds", round=r, t_s=env.now, seconds=env.now - t0, selected=len(procs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--payload-mb", type=float, default=1.0)
    ap.add_argument("--gflops", type=float, default=200.0, help="compute job size (GFLOP)")
    ap.add_argument("--mem-gb", type=float, default=0.3)
    ap.add_argument("--deadline-s", type=float, default=60.0)
    ap.add_argument("--mobility-interval-s", type=float, default=1.0)
    ap.add_argument("--nearest-bs", type=int, default=0,
                    help="ChannelParams.nearest_bs approximation (0 = exact, every BS)")
    ap.add_argument("--population", choices=("eager", "lazy"), default="eager",
                    help="channel.population: eager (every client advanced periodically) or lazy")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--gc", choices=("default", "freeze", "tuned"), default="tuned",
                    help="garbage collector setting (no effect on results): 'freeze' moves the "
                         "objects built before the run out of the collector's reach, 'tuned' also "
                         "collects the young generation 20x less often")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    c_start = time.process_time()
    sim, net, devices, pop = build(a.clients, a.seed, a.mobility_interval_s, a.nearest_bs, a.population)
    t_built = time.perf_counter()
    c_built = time.process_time()
    if a.gc != "default":
        gc.collect()
        gc.freeze()
    if a.gc == "tuned":
        gc.set_threshold(20_000, 10, 10)
    stats: dict[str, int] = {}
    proc = sim.env.process(server(sim, net, devices, a.rounds, a.payload_mb * 1e6,
                                  a.gflops * 1e9, a.mem_gb * 1e9, a.deadline_s, stats, pop))
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(sim.env.run, until=proc)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    else:
        sim.env.run(until=proc)
    net.finish()
    wall = time.perf_counter() - t_start
    events = next(sim.env._eid)  # SimPy's running count of scheduled events
    ev = sim.rec.frame("events")
    print(f"clients={a.clients} bs={len(net.bs_ids)} rounds={a.rounds} sim_s={sim.now:.1f} "
          f"build_s={t_built - t_start:.2f}")
    print("outcomes:", dict(sorted(stats.items())))
    print("net:", net.stats())
    print("event rows:", ev["kind"].value_counts().to_dict())
    print(f"link rows: {len(sim.rec.rows('links'))}")
    import resource

    print(f"cpu_s={time.process_time() - c_start:.2f} run_cpu_s={time.process_time() - c_built:.2f} "
          f"gc={a.gc} "
          f"peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f}")
    print(f"wall_s={wall:.2f} events={events} events_per_s={events / wall:.0f}")


if __name__ == "__main__":
    main()
