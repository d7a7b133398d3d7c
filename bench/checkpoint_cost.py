"""Cost of checkpointing (issue 19), measured on ``downtown-grid``.

Runs the scenario with checkpoints off, at the default interval
(``max(1, rounds // 10)``) and every round; for each, the host seconds spent
pickling results and writing checkpoints (measured inside the run) and their
share of the run's wall time, seconds per checkpoint and the log size. Then a
run is stopped after half its checkpoints and resumed: the wall time of the
resume (replaying the stored results, then running the rest live) against a
full run. Wall times of separate runs on a shared machine are noisy; the
shares measured inside one run are not.

    python bench/checkpoint_cost.py [--rounds 30] [--out runs/bench_checkpoint]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Stop(BaseException):
    """Stops a run at a checkpoint write (like a kill right after the previous checkpoint)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default=str(ROOT / "scenarios" / "downtown-grid.yaml"))
    p.add_argument("--rounds", type=int, default=None, help="override run.rounds")
    p.add_argument("--out", default="runs/bench_checkpoint")
    a = p.parse_args()

    import torch

    from fedsim.api import checkpoint_interval, load_scenario, resume, run
    from fedsim.engine import checkpoint as cp

    torch.set_num_threads(1)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    base = [f"run.rounds={a.rounds}"] if a.rounds else []
    rounds = load_scenario(a.scenario, base).scenario.run.rounds
    default = checkpoint_interval(rounds, None)
    rows = []
    walls = {}
    for label, every in (("off", 0), (f"default ({default})", None), ("every round", 1)):
        ov = [*base] + ([f"output.checkpoint_every_rounds={every}"] if every is not None else [])
        d = out / label.split()[0]
        res = run(load_scenario(a.scenario, ov), d, figures=False)
        c = res.manifest["checkpoint"]
        wall = res.manifest["wall_s"]
        walls[label] = wall
        cost = c["write_s"] + c["pickle_s"]
        log_mb = c.get("log_bytes", 0) / 1e6
        rows.append((label, wall, c["writes"], c["write_s"], c["pickle_s"], cost / max(c["writes"], 1) if c["writes"] else 0.0, 100 * cost / wall, log_mb))

    # stop a default-interval run at its checkpoint after the middle one, then resume it
    d = out / "resumed"
    orig, n = cp.Checkpointer.write, {"writes": 0}
    half = max(1, (rounds // default) // 2)

    def write(self: cp.Checkpointer, rounds_done: int, t_s: float) -> None:
        n["writes"] += 1
        if n["writes"] == half + 1:
            raise _Stop
        orig(self, rounds_done, t_s)

    cp.Checkpointer.write = write  # type: ignore[method-assign]
    try:
        run(load_scenario(a.scenario, base), d, figures=False)
    except _Stop:
        pass
    finally:
        cp.Checkpointer.write = orig  # type: ignore[method-assign]
    stopped = json.loads((d / "manifest.json").read_text())
    res = resume(d, figures=False)
    same = all((d / f).read_bytes() == (out / "default" / f).read_bytes() for f in ("rounds.parquet", "events.parquet", "clients.parquet", "model.pt"))

    print(f"{Path(a.scenario).name}, {rounds} rounds, default interval {default} rounds")
    print("| checkpoints | wall_s | writes | write_s | pickle_s | s / checkpoint | share of wall | log MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.2f}% | {r[7]:.1f} |")
    print(
        f"stopped after round {res.manifest['resumed_from_round']} ({stopped['wall_s']:.1f} s); resume took {res.manifest['wall_s']:.1f} s "
        f"({res.manifest['checkpoint']['replayed_calls']} calls replayed) vs {walls[f'default ({default})']:.1f} s for a full run; "
        f"tables and model identical to the uninterrupted run: {same}"
    )


if __name__ == "__main__":
    main()
