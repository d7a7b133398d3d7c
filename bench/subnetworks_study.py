"""Capacity-sized sub-networks against equal-size experts (issue 33 item 4; pre-registered in
docs/subnetworks-prereg.md).

Runs ``scenarios/subnetworks.yaml`` with its ``expert_widths`` (arm ``subnetworks``) and with
``protocol.fedmoe.expert_widths=null`` (arm ``equal``) for each seed, reads each run's own tables
and writes ``summary.csv`` (one row per arm and seed) to ``--out`` (default
``runs/subnetworks_study``), then prints per measure the mean and standard deviation over seeds
per arm and the per-seed paired difference ``subnetworks - equal``. Runs already complete in
``--out`` are reused.

Usage: python bench/subnetworks_study.py [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "subnetworks.yaml"
ARMS = {"subnetworks": [], "equal": ["protocol.fedmoe.expert_widths=null"]}
SMALL = ("sensor", "camera")
MEASURES = ("bytes", "bytes_per_update", "time_s", "accuracy", "accuracy_client", "ooms", "dropouts",
            "stragglers", "skipped", "completed", "small_completed")


def run_one(arm: str, seed: int, out: Path) -> Path:
    """Run one arm and seed into ``out/<arm>-seed<seed>`` (reused when its rounds table exists)."""
    d = out / f"{arm}-seed{seed}"
    if not (d / "rounds.parquet").exists():
        cmd = [sys.executable, "-m", "fedsim.cli", "run", str(SCENARIO), "--out", str(d), "--seed", str(seed),
               "--quiet", "--no-figures", *(f"--set={o}" for o in ARMS[arm])]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return d


def measures(d: Path) -> dict[str, float]:
    """The pre-registered measures of one run directory."""
    r = pd.read_parquet(d / "rounds.parquet")
    c = pd.read_parquet(d / "clients.parquet")
    b = float((r.bytes_up + r.bytes_down).sum())
    done = int(r.completed.sum())
    return {
        "bytes": b, "bytes_per_update": b / done if done else float("nan"), "time_s": float(r.t_end_s.iloc[-1]),
        "accuracy": float(r.accuracy.tail(3).mean()), "accuracy_client": float(r.accuracy_client.iloc[-1]),
        "ooms": int(r.ooms.sum()), "dropouts": int(r.dropouts.sum()), "stragglers": int(r.stragglers.sum()),
        "skipped": int(r.skipped.sum()), "completed": done,
        "small_completed": int(((c.status == "completed") & c.device_class.isin(SMALL)).sum()),
    }


def report(df: pd.DataFrame) -> str:
    """Markdown table: per measure, mean ± sd per arm and the paired differences per seed."""
    lines = ["| measure | subnetworks (mean ± sd) | equal (mean ± sd) | paired diff per seed (sub - equal) |",
             "|---|---|---|---|"]
    sub, eq = (df[df.arm == a].set_index("seed").sort_index() for a in ("subnetworks", "equal"))
    for m in MEASURES:
        diff = (sub[m] - eq[m]).tolist()
        lines.append(f"| {m} | {sub[m].mean():.4g} ± {sub[m].std():.2g} | {eq[m].mean():.4g} ± {eq[m].std():.2g} | "
                     + ", ".join(f"{x:+.4g}" for x in diff) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "subnetworks_study")
    args = ap.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append({"arm": arm, "seed": seed, **measures(run_one(arm, seed, args.out))})
            print(f"{arm} seed {seed}: done", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "summary.csv", index=False)
    print(df.to_string(index=False))
    print(report(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
