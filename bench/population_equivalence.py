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
   effect on handover counts and throughput;
3. devices: the eager :class:`~fedsim.devices.Device` objects (processes
   per device) vs the columns of :class:`~fedsim.devices.population.DevicePopulation`
   (functions of device and time), ``--devices-per-class`` of each class,
   sampled every ``--sample-s`` for ``--device-seconds``: per-class online
   fraction, background-load mean and lag-1 autocorrelation (one sample
   interval apart), OOM rate (share of online samples where a job of 42 % of
   the device's memory would not fit: the check ``compute`` makes at start)
   and, from part 1, handovers per client-minute. The last line says whether
   every statistic is within 3 % (the issue-28 target).

    python bench/population_equivalence.py --seeds 4 --seconds 120
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from fedsim.devices import DEVICE_CLASSES, Device, default_device_classes
from fedsim.devices.population import DevicePopulation
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
    net = cls(sim, g, NetworkParams(channel=ChannelParams(**{"attachment": "downlink", **ch}),  # as measured
                                   link_sample_interval_s=0.0),
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


def device_samples(model: str, seed: int, per_class: int, seconds: float, dt: float
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Per class: online (bool), load and fits (bool) arrays of shape (samples, devices)."""
    sim = Simulation(seed)
    classes = default_device_classes()
    names = [c for c in DEVICE_CLASSES for _ in range(per_class)]
    nodes = [f"d{i}" for i in range(len(names))]
    times = np.arange(0.0, seconds, dt)
    on = np.zeros((times.size, len(nodes)), dtype=bool)
    load = np.zeros((times.size, len(nodes)))
    fits = np.zeros((times.size, len(nodes)), dtype=bool)
    if model == "eager":
        devs = [Device(sim, c, classes[k]) for c, k in zip(nodes, names)]
        for s, t in enumerate(times):
            sim.env.run(until=t) if t > 0 else None
            on[s] = [d.online for d in devs]
            load[s] = [d.background_load for d in devs]
            fits[s] = [d.fits(0.42 * d.memory_total_bytes) for d in devs]
    else:
        pop = DevicePopulation(sim, nodes, names, classes)
        rows = np.arange(len(nodes))
        for s, t in enumerate(times):
            on[s] = pop.online_rows(rows, t)
            load[s] = pop.background_load_rows(rows, t)
            fits[s] = 0.42 * pop.memory_total_bytes <= pop.memory_free_rows(rows, t)
    out = {}
    for j, c in enumerate(DEVICE_CLASSES):
        sl = slice(j * per_class, (j + 1) * per_class)
        out[c] = {"on": on[:, sl], "load": load[:, sl], "fits": fits[:, sl]}
    return out


def device_stats(runs: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, float]:
    """Pooled over runs: per class online fraction, load mean, load lag-1 autocorrelation
    and OOM rate (the latter over online samples)."""
    st: dict[str, float] = {}
    for c in DEVICE_CLASSES:
        on = np.concatenate([r[c]["on"] for r in runs], axis=1)
        ld = np.concatenate([r[c]["load"] for r in runs], axis=1)
        ft = np.concatenate([r[c]["fits"] for r in runs], axis=1)
        st[f"{c}.online_frac"] = float(on.mean())
        st[f"{c}.load_mean"] = float(ld.mean())
        x = ld - ld.mean()
        st[f"{c}.load_ac1"] = float((x[1:] * x[:-1]).mean() / max((x * x).mean(), 1e-300))
        st[f"{c}.oom_rate"] = float((~ft & on).sum() / max(on.sum(), 1))
        # standard errors from the spread of per-device means (devices are independent)
        for k, v in (("online_frac", on), ("load_mean", ld), ("oom_rate", ~ft & on)):
            st[f"{c}.{k}.se"] = float(v.mean(axis=0).std() / np.sqrt(v.shape[1]))
    return st


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--skip-eager", action="store_true")
    ap.add_argument("--skip-network", action="store_true")
    ap.add_argument("--skip-devices", action="store_true", help="part 3 (devices) left out")
    ap.add_argument("--devices-per-class", type=int, default=1000)
    ap.add_argument("--device-seconds", type=float, default=7200.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    a = ap.parse_args(argv)
    ratios = {} if a.skip_devices else compare_devices(a)
    if a.skip_network:
        print_verdict(ratios)
        return
    seeds = range(a.seeds)
    lazy = [drive(LazyNetwork, s, a.seconds, a.blocks) for s in seeds]
    m = lazy[0]["bs"]
    exact = [drive(LazyNetwork, s, a.seconds, a.blocks, nearest_bs=m) for s in seeds]
    rows = {"lazy (8 nearest)": summary(lazy), "lazy (all cells)": summary(exact)}
    if not a.skip_eager:
        eager = [drive(Network, s, a.seconds, a.blocks) for s in seeds]
        rows["eager"] = summary(eager)
    for name, r in rows.items():
        print(f"{name:18s} bs={m} " + " ".join(f"{k}={v:.4g}" for k, v in r.items()))
    base = rows["lazy (all cells)"]
    for k in base:
        print(f"approximation (8 nearest / all cells) {k}: {rows['lazy (8 nearest)'][k] / base[k]:.4f}")
    if "eager" in rows:
        for k in base:
            print(f"lazy (8 nearest) / eager {k}: {rows['lazy (8 nearest)'][k] / rows['eager'][k]:.4f}")
        ratios["handovers_per_client_min"] = (rows["lazy (8 nearest)"]["ho_per_client_min"]
                                              / rows["eager"]["ho_per_client_min"])
        n_l, n_e = sum(x["ho"] for x in lazy), sum(x["ho"] for x in eager)
        # standard error of the ratio if handovers were Poisson counts (they cluster, so a floor)
        rse = ratios["handovers_per_client_min"] * np.sqrt(1 / n_l + 1 / n_e)
        print(f"handovers lazy={n_l} eager={n_e} ratio_se={rse:.4f}")
    print_verdict(ratios)


def compare_devices(a: argparse.Namespace) -> dict[str, float]:
    """Eager Device vs DevicePopulation statistics (different seeds per model); ratios lazy / eager."""
    seeds = range(a.seeds)
    eager = device_stats([device_samples("eager", s, a.devices_per_class, a.device_seconds, a.sample_s)
                          for s in seeds])
    lazy = device_stats([device_samples("lazy", 1000 + s, a.devices_per_class, a.device_seconds,
                                        a.sample_s) for s in seeds])
    ratios = {}
    for k in (k for k in eager if not k.endswith(".se")):
        ratios[k] = lazy[k] / eager[k] if eager[k] != 0 else (1.0 if lazy[k] == 0 else float("inf"))
        se = ""
        if f"{k}.se" in eager:  # standard error of the ratio from sampling alone (delta method)
            rse = np.hypot(eager[f"{k}.se"] / eager[k], lazy[f"{k}.se"] / max(lazy[k], 1e-300))
            se = f" ratio_se={rse * ratios[k]:.4f}"
        print(f"devices {k:22s} eager={eager[k]:.4f} columns={lazy[k]:.4f} ratio={ratios[k]:.4f}{se}")
    return ratios


def print_verdict(ratios: dict[str, float]) -> None:
    worst = max(ratios, key=lambda k: abs(ratios[k] - 1.0))
    ok = abs(ratios[worst] - 1.0) <= 0.03
    print(f"equivalence within 3 %: {'met' if ok else 'NOT met'} "
          f"(worst: {worst} ratio {ratios[worst]:.4f}, {len(ratios)} statistics)")


if __name__ == "__main__":
    main()
