"""Peak memory of async against sync aggregation (issue 29, item 3).

Runs ``scenarios/downtown-grid.yaml`` for ``--rounds`` aggregations (default 12)
with the batched executor, once per aggregation mode, each in a fresh child
process, and prints each child's peak resident set size (``ru_maxrss``) and
the ratio to sync's. The modes alternate over ``--repeats`` so machine noise
hits both alike. Before issue 29 async peaked at 9.4 GB against sync's
0.78 GB: each update's tensors were views of the cohort's stacked parameters,
so the replay log pickled whole cohorts, and async never checkpointed, so the
records were never released.

    nice -n 10 python bench/async_memory.py [--rounds 12] [--repeats 1] [--out runs/bench_async_memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "downtown-grid.yaml"

_CHILD = r"""
import json, resource, sys, time
from fedsim.api import run
from fedsim.build import load_checked
scenario, out, rounds, mode = sys.argv[1:5]
t0 = time.perf_counter()
r = run(load_checked(scenario, [f"run.rounds={rounds}", f"protocol.fedmoe.aggregation={mode}",
                                "training.executor=batched"]), out, figures=False)
print(json.dumps({"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": time.perf_counter() - t0, "rows": len(r.rounds),
                  "checkpoints": r.manifest["checkpoint"]["writes"]}))
"""


def measure(mode: str, rounds: int, out: Path) -> dict:
    """Run one mode in a child process; its peak RSS (MB), wall time (s), rounds rows and checkpoints."""
    p = subprocess.run([sys.executable, "-c", _CHILD, str(SCENARIO), str(out), str(rounds), mode],
                       capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                                        "OMP_NUM_THREADS": "1"})
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", default="sync,async,semi_async")
    args = ap.parse_args()
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for mode in modes if rep % 2 == 0 else modes[::-1]:
                res = measure(mode, args.rounds, Path(tmp) / f"{mode}-{rep}")
                rows.append(res)
                print(json.dumps(res), flush=True)
    peak = {m: max(r["peak_rss_mb"] for r in rows if r["mode"] == m) for m in modes}
    print(f"\ndowntown-grid, batched executor, {args.rounds} aggregations: peak RSS (MB, max over {args.repeats} repeat(s))")
    for m in modes:
        ratio = peak[m] / peak["sync"] if "sync" in peak else float("nan")
        print(f"  {m:<11} {peak[m]:8.0f} MB   x{ratio:.2f} of sync")


if __name__ == "__main__":
    main()
