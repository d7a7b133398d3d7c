"""The client-expert alignment study (after Fig. 3 of the federated-MoE design paper).

Runs ``scenarios/alignment-fig3.yaml`` once per policy and seed, every other
setting identical (the same root seed gives every policy the same data,
partition, initial weights, topology, device traces and selection stream):

- ``random``, ``greedy``;
- ``load_balanced`` at ``w_u`` 0.25, 0.5 and 1.0 (the paper's rule, ``w_r = 0``);
- ``optimal`` (max total fitness, at most ``max_load`` clients per expert);
- ``deadline_aware`` and ``systems_aware`` (capacity *estimates* only).

Per run it reads ``rounds.parquet``, ``clients.parquet``, ``assignments.parquet``
and ``personal.parquet`` (client groups) and writes to ``--out``
(default ``runs/alignment_study``):

- ``summary.csv``: one row per run (policy, seed and every metric below);
- ``summary.md``: per policy, mean and 95% confidence interval (Student t over
  seeds) of: final accuracy with the global gate (``acc``) and with each
  client's own best experts by fitness (``acc_client``; the paper's
  inference), both as the mean of the last 3 rounds; the same on the two
  rarest groups; rounds and simulated seconds to ``evaluation.target_accuracy``
  (global gate; runs that never reach it are counted in ``reached``); mean
  expert-load CV; group-to-expert NMI of test routing in the last round; bytes
  moved and stragglers per run; and ``same_sel``, the share of rounds in which
  the selected clients equal those of ``random`` with the same seed (selection
  draws from the same stream, but who is online depends on simulated time);
- ``assignment_<policy>.png`` / one panel figure ``assignments.png``: group x
  expert assignment counts summed over seeds and rounds (the paper's Fig. 3
  panels).

``--quick``: 1 seed and few rounds (under 3 minutes on 2 cores); prints one
line per policy ``policy=NAME acc=... acc_client=... nmi=... t_target_s=...``.
Runs already complete in ``--out`` are reused (the study can be resumed).

Usage: python bench/alignment_study.py [--quick] [--seeds N] [--rounds R]
       [--workers W] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "alignment-fig3.yaml"

#: (label, overrides) per policy; every other setting comes from the scenario file.
POLICIES: list[tuple[str, list[str]]] = [
    ("random", ["alignment.policy=random"]),
    ("greedy", ["alignment.policy=greedy"]),
    ("lb_wu0.25", ["alignment.policy=load_balanced", "alignment.w_u=0.25"]),
    ("lb_wu0.5", ["alignment.policy=load_balanced", "alignment.w_u=0.5"]),
    ("lb_wu1", ["alignment.policy=load_balanced", "alignment.w_u=1.0"]),
    ("optimal", ["alignment.policy=optimal"]),
    ("deadline_aware", ["alignment.policy=deadline_aware"]),
    ("systems_aware", ["alignment.policy=systems_aware"]),
]

QUICK_ROUNDS = 12
QUICK_TEST = 1000


def _run_one(args: tuple[str, list[str], int, int | None, Path, list[str]]) -> str:
    """Run one (policy, seed); returns the run directory. Skips a run already complete."""
    label, overrides, seed, rounds, out, extra = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from fedsim.api import load_scenario, run

    torch.set_num_threads(1)
    run_dir = out / "runs" / f"{label}-seed{seed}"
    man = run_dir / "manifest.json"
    if man.exists() and json.loads(man.read_text()).get("status") == "ok" and (run_dir / "rounds.parquet").exists():
        return str(run_dir)
    if run_dir.exists():
        for f in sorted(run_dir.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    ov = [*overrides, *extra, "output.figures=false"]
    if rounds is not None:
        ov.append(f"run.rounds={rounds}")
    loaded = load_scenario(SCENARIO, ov, seed=seed)
    run(loaded, run_dir, figures=False)
    return str(run_dir)


def _final(r: pd.DataFrame, col: str, last: int = 3) -> float:
    v = r[col].dropna()
    return float(v.tail(last).mean()) if len(v) else math.nan


def run_metrics(run_dir: Path, target: float) -> dict:
    """The per-run metrics of the module docstring."""
    r = pd.read_parquet(run_dir / "rounds.parquet").sort_values("round")
    c = pd.read_parquet(run_dir / "clients.parquet")
    hit = r[r["accuracy"] >= target]
    return {
        "acc": _final(r, "accuracy"),
        "acc_client": _final(r, "accuracy_client"),
        "acc_rare": _final(r, "accuracy_rare"),
        "acc_client_rare": _final(r, "accuracy_client_rare"),
        "rounds_to_target": float(hit["round"].iloc[0] + 1) if len(hit) else math.nan,
        "t_target_s": float(hit["t_end_s"].iloc[0]) if len(hit) else math.nan,
        "reached": float(len(hit) > 0),
        "load_cv": float(r["expert_load_cv"].mean()),
        "nmi": float(r["routing_nmi"].dropna().iloc[-1]) if r["routing_nmi"].notna().any() else math.nan,
        "nmi_round0": float(r["routing_nmi"].dropna().iloc[0]) if r["routing_nmi"].notna().any() else math.nan,
        "bytes_mb": float((c["bytes_up"].sum() + c["bytes_down"].sum()) / 1e6),
        "stragglers": float((c["status"] == "straggler").sum()),
        "dispatched": float((c["k"] > 0).sum()),
        "sim_time_s": float(r["t_end_s"].iloc[-1]),
        "rounds": float(len(r)),
    }


def group_expert_counts(run_dir: Path, num_experts: int) -> np.ndarray:
    """Assignment counts (groups, experts) over all rounds of one run."""
    a = pd.read_parquet(run_dir / "assignments.parquet")
    g = pd.read_parquet(run_dir / "personal.parquet")[["client", "group"]]
    a = a.merge(g, on="client")
    G = int(g["group"].max()) + 1
    out = np.zeros((G, num_experts))
    np.add.at(out, (a["group"].to_numpy(), a["expert"].to_numpy()), 1)
    return out


def selection_overlap(runs: dict[tuple[str, int], Path]) -> dict[tuple[str, int], float]:
    """Share of rounds whose selected clients equal those of ``random`` for the same seed."""
    def sel(p: Path) -> dict[int, frozenset]:
        c = pd.read_parquet(p / "clients.parquet")
        return {int(k): frozenset(v) for k, v in c.groupby("round")["client"]}

    out = {}
    for (label, seed), p in runs.items():
        ref = runs.get(("random", seed))
        if ref is None:
            out[(label, seed)] = math.nan
            continue
        a, b = sel(p), sel(ref)
        common = sorted(set(a) & set(b))
        out[(label, seed)] = float(np.mean([a[k] == b[k] for k in common])) if common else math.nan
    return out


def ci95(x: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (NaNs dropped)."""
    from scipy.stats import t

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


COLUMNS = [
    ("acc", "acc (global gate)", "{:.3f}"),
    ("acc_client", "acc_client (own experts)", "{:.3f}"),
    ("acc_rare", "acc rare groups", "{:.3f}"),
    ("acc_client_rare", "acc_client rare groups", "{:.3f}"),
    ("rounds_to_target", "rounds to target", "{:.1f}"),
    ("t_target_s", "sim s to target", "{:.1f}"),
    ("load_cv", "expert-load CV", "{:.2f}"),
    ("nmi", "group-expert NMI", "{:.2f}"),
    ("bytes_mb", "MB per run", "{:.0f}"),
    ("stragglers", "stragglers per run", "{:.1f}"),
]


def summarise(df: pd.DataFrame, target: float, out: Path, meta: str) -> str:
    """Write summary.md; return its text."""
    lines = [
        "# Alignment study (scenarios/alignment-fig3.yaml)",
        "",
        meta,
        "",
        f"Mean ± 95% CI half-width over seeds (Student t). Target accuracy {target} (global gate); "
        "rounds / seconds to target over the runs that reached it (`reached` = how many).",
        "",
        "| policy | " + " | ".join(h for _, h, _ in COLUMNS) + " | reached | same_sel |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for label, _ in POLICIES:
        d = df[df["policy"] == label]
        if d.empty:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            m, h = ci95(d[key].to_numpy())
            cells.append("-" if not math.isfinite(m) else fmt.format(m) + ("" if not math.isfinite(h) else " ± " + fmt.format(h)))
        cells.append(f"{int(d['reached'].sum())}/{len(d)}")
        cells.append(f"{d['same_sel'].mean():.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def plot_assignments(counts: dict[str, np.ndarray], out: Path) -> list[Path]:
    """One panel per policy: share of each group's assignments going to each expert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lab for lab, _ in POLICIES if lab in counts]
    ncol = 4
    nrow = math.ceil(len(labels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.9 * nrow + 0.6), squeeze=False, constrained_layout=True)
    im = None
    for ax, lab in zip(axes.flat, labels):
        m = counts[lab]
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(lab, fontsize=10)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.set_xlabel("expert")
        ax.set_ylabel("client group (0 = largest)")
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="share of the group's assignments")
    fig.suptitle("Group x expert assignments (all rounds, all seeds)")
    paths = [out / "assignments.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    for lab in labels:
        fig, ax = plt.subplots(figsize=(4.2, 3.2), constrained_layout=True)
        m = counts[lab]
        im = ax.imshow(m, cmap="viridis", aspect="auto")
        ax.set_title(f"{lab}: assignment counts")
        ax.set_xlabel("expert")
        ax.set_ylabel("client group (0 = largest)")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        fig.colorbar(im, ax=ax, label="client-expert assignments")
        p = out / f"assignment_{lab}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"1 seed, {QUICK_ROUNDS} rounds, {QUICK_TEST} test samples")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the scenario's)")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default runs/alignment_study[_quick])")
    a = ap.parse_args(argv)
    seeds = 1 if a.quick else a.seeds
    rounds = a.rounds if a.rounds is not None else (QUICK_ROUNDS if a.quick else None)
    extra = [f"evaluation.max_test_samples={QUICK_TEST}"] if a.quick else []
    out = a.out or ROOT / "runs" / ("alignment_study_quick" if a.quick else "alignment_study")
    out.mkdir(parents=True, exist_ok=True)
    from fedsim.api import load_scenario

    sc = load_scenario(SCENARIO).scenario
    target = sc.evaluation.target_accuracy
    E = sc.model.num_experts
    jobs = [(lab, ov, s, rounds, out, extra) for s in range(seeds) for lab, ov in POLICIES]
    t0 = time.perf_counter()
    runs: dict[tuple[str, int], Path] = {}
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        for job, rd in zip(jobs, pool.map(_run_one, jobs)):
            runs[(job[0], job[2])] = Path(rd)
            print(f"done {job[0]} seed {job[2]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    same = selection_overlap(runs)
    rows = []
    counts: dict[str, np.ndarray] = {}
    for (lab, seed), rd in runs.items():
        rows.append({"policy": lab, "seed": seed, **run_metrics(rd, target), "same_sel": same[(lab, seed)]})
        m = group_expert_counts(rd, E)
        counts[lab] = counts.get(lab, 0) + m
    df = pd.DataFrame(rows)
    df.to_csv(out / "summary.csv", index=False)
    meta = (
        f"{seeds} seed(s) x {len(POLICIES)} policies, {int(df['rounds'].iloc[0])} rounds each; "
        f"wall {time.perf_counter() - t0:.0f} s with {a.workers} workers."
    )
    text = summarise(df, target, out, meta)
    plot_assignments(counts, out)
    if a.quick:
        for lab, _ in POLICIES:
            d = df[df["policy"] == lab].iloc[0]
            print(
                f"policy={lab} acc={d['acc']:.3f} acc_client={d['acc_client']:.3f} "
                f"nmi={d['nmi']:.2f} t_target_s={d['t_target_s']:.1f}"
            )
    else:
        print(text)
    print(f"wrote {out}/summary.md, summary.csv, assignments.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
