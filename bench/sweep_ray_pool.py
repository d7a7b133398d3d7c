"""Wall time of a sweep of 16 short runs: in-process against the Ray backend's warm actor pool.

Both are measured in one invocation, alternating (inprocess, ray, inprocess,
ray, ...), on the same tiny scenario (smart-city-small, 2 rounds, 5 clients,
300 training samples): 4 policies x 4 seeds. The Ray sweep starts its own
local cluster (``ray.init(num_cpus=WORKERS)``) each time, so its figure
includes Ray's start-up and the actors' torch import; ``ray (warm cluster)``
reruns it on a cluster that is already up, as on a real cluster where
``ray start`` ran before the sweep. Prints a Markdown table and the
ratio ray / inprocess of each pair.

    python bench/sweep_ray_pool.py [--reps 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from fedsim.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "run.rounds=2",
    "topology.grid.clients={phone: 3, sensor: 2}",
    "protocol.fedmoe.clients_per_round=3",
    "training.local_epochs=1",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "output.figures=false",
]
GRID = {"protocol.fedmoe.alignment.policy": ["random", "greedy", "load_balanced", "deadline_aware"]}
SEEDS = [0, 1, 2, 3]


def _sweep(out: Path, backend: str, workers: int) -> tuple[float, float]:
    spec = SweepSpec(scenario=ROOT / "scenarios" / "smart-city-small.yaml", grid=dict(GRID), seeds=list(SEEDS),
                     out=out, overrides=list(TINY))
    t0 = time.perf_counter()
    res = run_sweep(spec, backend=backend, workers=workers)
    wall = time.perf_counter() - t0
    assert res.failed == 0 and res.executed == 16, res.index["error"].tolist()
    return wall, float(res.index["wall_s"].median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    import ray

    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            rows.append(("inprocess", rep, *_sweep(Path(tmp) / f"in{rep}", "inprocess", 1)))
            rows.append(("ray (cold: ray.init + actors)", rep, *_sweep(Path(tmp) / f"ray{rep}", "ray", a.workers)))
        ray.init(num_cpus=a.workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            for rep in range(a.reps):
                rows.append(("inprocess", a.reps + rep, *_sweep(Path(tmp) / f"in-w{rep}", "inprocess", 1)))
                rows.append(("ray (warm cluster)", rep, *_sweep(Path(tmp) / f"rw{rep}", "ray", a.workers)))
        finally:
            ray.shutdown()
    print(f"16 runs (4 policies x 4 seeds), workers={a.workers}\n")
    print("| backend | rep | sweep wall s | median run wall s |\n|---|---|---|---|")
    for name, rep, wall, med in rows:
        print(f"| {name} | {rep} | {wall:.1f} | {med:.2f} |")
    for kind in ("ray (cold: ray.init + actors)", "ray (warm cluster)"):
        pairs = [(rows[i][2], rows[i + 1][2]) for i in range(0, len(rows), 2) if rows[i + 1][0] == kind]
        ratios = [r / i for i, r in pairs]
        print(f"\n{kind} / inprocess (same pair): " + ", ".join(f"{x:.2f}" for x in ratios)
              + f" (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
