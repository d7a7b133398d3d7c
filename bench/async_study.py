"""sync vs async (FedBuff) vs semi_async fedmoe on downtown-grid and stadium-event, 3 seeds.

Settings fixed before running (issue 17):

- every mode runs for the same simulated horizon (downtown-grid 200 s, stadium-event
  300 s; ``run.rounds`` is only a cap), with the scenario's clients_per_round,
  over_selection, deadline and server_compute_s (5 s per aggregation);
- async: concurrency = ceil(clients_per_round * over_selection) (the clients sync
  selects), buffer_size = clients_per_round / 2, server_lr 1, polynomial staleness
  weight (1 + tau)^-0.5;
- semi_async: period_s = 6 s (downtown-grid) / 16 s (stadium-event), about a sync
  round's client phase, the same concurrency;
- target accuracy 0.6 (downtown-grid) / 0.4 (stadium-event).

Metrics: simulated seconds to the target (first evaluated aggregation at or above it),
bytes moved (every transfer event: async work still in flight or buffered at the end
counts too), wasted compute seconds (compute seconds of client runs that never
reached the server: ``clients`` rows whose status is not ``completed``), wasted
client seconds (dispatch to loss of those runs), uploads that arrived but were never
folded in (async backlog at the end), final accuracy. Mean and min..max over seeds.

Usage: ``python bench/async_study.py OUT_DIR`` (about 15 min on 2 busy cores); it
writes ``OUT_DIR/<scenario>-<mode>-seed<k>/`` run directories, ``study.csv`` and
``study.md`` (the README table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from fedsim.api import run
from fedsim.build import load_checked
from fedsim.engine.headline import headline_metrics

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "downtown-grid": {"horizon_s": 200.0, "buffer": 12, "period_s": 6.0, "target": 0.6},
    "stadium-event": {"horizon_s": 300.0, "buffer": 25, "period_s": 16.0, "target": 0.4},
}
MODES = ("sync", "async", "semi_async")
SEEDS = (0, 1, 2)


def overrides(scenario: str, mode: str) -> list[str]:
    """The ``--set`` overrides of one cell."""
    st = SETTINGS[scenario]
    out = [f"run.horizon_s={st['horizon_s']}", "run.rounds=1000", f"protocol.fedmoe.aggregation={mode}"]
    if mode == "async":
        out += [f"protocol.fedmoe.fedbuff.buffer_size={st['buffer']}"]
    if mode == "semi_async":
        out += [f"protocol.fedmoe.fedbuff.period_s={st['period_s']}"]
    return out


def measure(run_dir: Path, target: float) -> dict[str, float]:
    """The study's metrics of one run directory."""
    rounds = pd.read_parquet(run_dir / "rounds.parquet")
    clients = pd.read_parquet(run_dir / "clients.parquet")
    events = pd.read_parquet(run_dir / "events.parquet")
    transfers = events[events["kind"] == "transfer"]
    uploads = int(((transfers["tag"] == "upload") & (transfers["completed"] == True)).sum())  # noqa: E712 - nullable column
    h = headline_metrics(rounds, target)
    lost = clients[clients["status"] != "completed"]
    return {
        # every byte moved, from the transfer events (async: also work still in flight or buffered at the end)
        "sim_s_to_target": h["sim_s_to_target"], "bytes_gb": float(transfers["bytes"].sum()) / 1e9,
        "wasted_compute_s": float(lost["t_compute_s"].sum()), "wasted_client_s": float(lost["wasted_s"].sum()),
        "unfolded_uploads": float(uploads - rounds["updates"].sum()), "final_accuracy": h["final_accuracy"],
        "aggregations": float(len(rounds)), "updates": float(rounds["updates"].sum()),
        "staleness_mean": float((rounds["staleness_mean"] * rounds["updates"]).sum() / max(rounds["updates"].sum(), 1)),
        "sim_s_total": h["sim_s_total"],
    }


def main(out: Path) -> None:
    """Run every cell (skipping finished ones) and write ``study.csv`` / ``study.md``."""
    rows = []
    for scenario, st in SETTINGS.items():
        for mode in MODES:
            for seed in SEEDS:
                d = out / f"{scenario}-{mode}-seed{seed}"
                if not (d / "rounds.parquet").exists():
                    loaded = load_checked(REPO / "scenarios" / f"{scenario}.yaml", overrides(scenario, mode), seed=seed)
                    run(loaded, d, figures=False)
                    print(f"done {d.name}", flush=True)
                rows.append({"scenario": scenario, "mode": mode, "seed": seed, **measure(d, st["target"])})
    df = pd.DataFrame(rows)
    df.to_csv(out / "study.csv", index=False)
    lines = ["| scenario | mode | s to target | GB moved | wasted compute s | wasted client s | uploads never folded "
             "| final accuracy | aggregations | mean staleness |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (scenario, mode), g in df.groupby(["scenario", "mode"], sort=False):
        def cell(col: str, fmt: str, g: pd.DataFrame = g) -> str:
            v = g[col]
            hit = v.notna().sum()
            if hit == 0:
                return "not reached"
            s = f"{v.mean():{fmt}} ({v.min():{fmt}}..{v.max():{fmt}})"
            return s if hit == len(v) else s + f", {hit}/{len(v)} seeds"
        lines.append(f"| {scenario} | {mode} | {cell('sim_s_to_target', '.0f')} | {cell('bytes_gb', '.2f')} | "
                     f"{cell('wasted_compute_s', '.1f')} | {cell('wasted_client_s', '.0f')} | {cell('unfolded_uploads', '.0f')} | "
                     f"{cell('final_accuracy', '.3f')} | {cell('aggregations', '.0f')} | "
                     f"{cell('staleness_mean', '.2f')} |")
    (out / "study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/async_study"))
