"""Lazy population vs the eager model, and the effect of the lazy model's approximations.

Every client downloads 4 MB again and again for ``--seconds`` (so all are
connected all the time) on a Manhattan grid with macro and small cells.
Prints, summed over ``--seeds``:

1. eager (``Network``) vs lazy (``LazyNetwork``), different random draws:
   handovers per client-minute, median and mean per-transfer throughput,
   mean downlink spectral efficiency of connected clients (sampled each
   second), and their ratios (lazy / eager);
2. the candidate-set approximation alone: lazy with the default 8 nearest
   cells vs lazy with every cell a candidate (``nearest_bs`` = number of
   cells), the *same* keyed draws, so the difference is the approximation's
   effect on handover counts and throughput.

    python bench/population_equivalence.py --seeds 4 --seconds 120
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from fedsim.devices import default_device_classes
from fedsim.engine import Simulation
from fedsim.net import NetworkParams, manhattan_grid
from fedsim.net.network import Network
from fedsim.net.params import ChannelParams
from fedsim.net.population import LazyNetwork


def drive(cls: type[Network], seed: int, seconds: float, blocks: int, **ch: Any) -> dict[str, Any]:
    """One run; returns handovers, per-transfer rates and sampled SEs."""
    sim = Simulation(seed)
    sites = [(ix, iy, "macro" if (ix + iy) % 4 == 0 else "small")
             for ix in range(1, blocks, 2) for iy in range(1, blocks, 2)]
    per = {"vehicle": 80, "phone": 40, "sensor": 30}
    g = manhattan_grid(blocks_x=blocks, blocks_y=blocks, block_m=150.0, bs_sites=sites,
                       clients_per_class=per, rng=sim.rng.numpy("topology"))
    net = cls(sim, g, NetworkParams(channel=ChannelParams(**ch), link_sample_interval_s=0.0),
              server="cloud", classes=default_device_classes())
    rates: list[float] = []
    se: list[float] = []

    def loop(c: str) -> Any:
        while sim.env.now < seconds:
            res = yield net.transfer("cloud", c, 4e6)
            rates.append(res.delivered_bytes * 8.0 / res.seconds)

    def sample() -> Any:
        while True:
            yield sim.env.timeout(1.0)
            se.extend(net.se_down[np.array(sorted(net._active), dtype=np.int64)].tolist())

    for c in net.client_ids:
        sim.env.process(loop(c))
    sim.env.process(sample())
    sim.env.run(until=seconds)
    return {"ho": net.handovers, "client_min": len(net.client_ids) * seconds / 60.0,
            "rates": rates, "se": se, "bs": len(net.bs_ids)}


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    r = np.concatenate([x["rates"] for x in runs])
    return {"ho_per_client_min": sum(x["ho"] for x in runs) / sum(x["client_min"] for x in runs),
            "rate_median_bps": float(np.median(r)), "rate_mean_bps": float(r.mean()),
            "se_mean": float(np.mean(np.concatenate([x["se"] for x in runs])))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--skip-eager", action="store_true")
    a = ap.parse_args(argv)
    seeds = range(a.seeds)
    lazy = [drive(LazyNetwork, s, a.seconds, a.blocks) for s in seeds]
    m = lazy[0]["bs"]
    exact = [drive(LazyNetwork, s, a.seconds, a.blocks, nearest_bs=m) for s in seeds]
    rows = {"lazy (8 nearest)": summary(lazy), "lazy (all cells)": summary(exact)}
    if not a.skip_eager:
        rows["eager"] = summary([drive(Network, s, a.seconds, a.blocks) for s in seeds])
    for name, r in rows.items():
        print(f"{name:18s} bs={m} " + " ".join(f"{k}={v:.4g}" for k, v in r.items()))
    base = rows["lazy (all cells)"]
    for k in base:
        print(f"approximation (8 nearest / all cells) {k}: {rows['lazy (8 nearest)'][k] / base[k]:.4f}")
    if "eager" in rows:
        for k in base:
            print(f"lazy (8 nearest) / eager {k}: {rows['lazy (8 nearest)'][k] / rows['eager'][k]:.4f}")


if __name__ == "__main__":
    main()
