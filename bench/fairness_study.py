"""Fairness and assignment leakage per policy (issue 33; pre-registered in docs/fairness-prereg.md).

Reads the runs that ``bench/alignment_study.py --setting S`` wrote under ``--out``
(``runs/<S>/<policy>-seed<s>``, ``S`` = ``--setting``) and its ``summary.csv`` (accuracy, time, bytes), and adds
per run the fairness measures of :mod:`fedsim.alignment.fairness` (participation Jain's
index and shares per client and per device class, per-client accuracy worst 10 % /
spread, the weakest device class's accuracy) and the leakage measures of
:mod:`fedsim.alignment.leakage` (MI, AMI, cross-validated classifier accuracy against
chance, permutation p-value). Writes ``fairness.csv`` (one row per policy and seed) and
``fairness.md`` (mean ± 95 % CI over seeds per policy; the fair arms against
``systems_aware`` paired by seed, Holm over the primary pairs).

Usage: python bench/fairness_study.py [--out runs/fairness_study] [--seeds 3] [--permutations 50] [--workers 2]
       [--setting fairness|fairness_online]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment_stats import ci95, paired_tests  # noqa: E402

LABELS = ["random", "greedy", "load_balanced", "deadline_aware", "systems_aware", "fair_wp1", "fair_wp10", "group_oracle"]
FAIR = ["fair_wp1", "fair_wp10"]
BASE = "systems_aware"
PRIMARY = ["participation_jain", "client_acc_worst10"]
SECONDARY = ["acc@20", "sim_time_s", "bytes_mb", "stragglers"]

FAIR_COLS = [
    ("participation_jain", "Jain (clients)", "{:.3f}"),
    ("participation_min_share", "min share", "{:.3f}"),
    ("participation_max_share", "max share", "{:.3f}"),
    ("never_participated", "never participated", "{:.1f}"),
    ("participation_jain_selected", "Jain (clients ever selected)*", "{:.3f}"),
    ("class_participation_jain", "Jain (device classes)", "{:.3f}"),
    ("client_acc_worst10", "acc worst 10 %", "{:.3f}"),
    ("client_acc_spread", "acc spread (max-min)", "{:.3f}"),
    ("weakest_class_accuracy", "acc, weakest class", "{:.3f}"),
    ("acc@20", "acc@20 (global gate)", "{:.3f}"),
    ("sim_time_s", "sim s / run", "{:.1f}"),
    ("bytes_mb", "MB / run", "{:.1f}"),
    ("stragglers", "stragglers / run", "{:.1f}"),
]
LEAK_COLS = [
    ("acc@20", "acc@20", "{:.3f}"),
    ("mi_bits", "MI (bits)", "{:.2f}"),
    ("ami", "AMI", "{:.2f}"),
    ("clf_accuracy", "classifier acc", "{:.2f}"),
    ("chance", "chance", "{:.2f}"),
    ("clf_p", "perm. p", "{:.3f}"),
    ("n_clients", "clients with a history", "{:.1f}"),
]


def run_fairness(args: tuple[str, int, str, int]) -> dict:
    """Fairness and leakage measures of one run directory (``(path, seed, label, permutations)``)."""
    from fedsim.alignment.fairness import fairness_measures, nominal_class_speeds
    from fedsim.alignment.leakage import leakage_measures

    path, seed, label, perms = args
    d = Path(path)
    frames = {t: pd.read_parquet(d / f"{t}.parquet") for t in ("clients", "personal", "nodes", "assignments")}
    sc = json.loads((d / "manifest.json").read_text())["scenario"]
    speeds = nominal_class_speeds((sc.get("devices") or {}).get("classes") or {})
    f = fairness_measures(frames, speeds)
    groups = dict(zip(frames["personal"]["client"], frames["personal"]["group"]))
    leak = leakage_measures(frames["assignments"], groups, int(sc["model"]["num_experts"]), permutations=perms, seed=seed)
    row = {"policy": label, "seed": seed, "weakest_class": f["weakest_class"], **leak}
    row.update({k: v for k, v in f.items() if isinstance(v, float)})
    row.update({f"class_part_{k}": v for k, v in f["class_participation"].items()})
    return row


def pooled_leakage(args: tuple[list[str], list[int], str, int]) -> dict:
    """Leakage of one policy with the clients of all its seeds pooled (client ids prefixed by
    the seed): ``(run paths, seeds, label, permutations)``. Exploratory (not pre-registered):
    one run has 7-10 clients with a history, too few for a stratified split."""
    from fedsim.alignment.leakage import leakage_measures

    paths, seeds, label, perms = args
    asg, groups, E = [], {}, 0
    for path, seed in zip(paths, seeds):
        d = Path(path)
        a = pd.read_parquet(d / "assignments.parquet")
        p = pd.read_parquet(d / "personal.parquet")
        asg.append(a.assign(client=f"s{seed}:" + a["client"].astype(str)))
        groups.update({f"s{seed}:{c}": int(g) for c, g in zip(p["client"], p["group"])})
        E = int(json.loads((d / "manifest.json").read_text())["scenario"]["model"]["num_experts"])
    return {"policy": label, **leakage_measures(pd.concat(asg, ignore_index=True), groups, E, permutations=perms, seed=0)}


def _cell(d: pd.DataFrame, k: str, fmt: str) -> str:
    if k not in d.columns:
        return "-"
    m, h = ci95(d[k].to_numpy(dtype=float))
    if not math.isfinite(m):
        return "-"
    return fmt.format(m) + ("" if not math.isfinite(h) else " ± " + fmt.format(h))


def table(df: pd.DataFrame, cols: list[tuple[str, str, str]]) -> list[str]:
    """Markdown: one row per policy, mean ± 95 % CI half-width over seeds of each column."""
    out = ["| policy | " + " | ".join(t for _, t, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lab in LABELS:
        d = df[df["policy"] == lab]
        if not d.empty:
            out.append(f"| {lab} | " + " | ".join(_cell(d, k, f) for k, _, f in cols) + " |")
    return out


def paired(df: pd.DataFrame) -> list[str]:
    """The fair arms against ``systems_aware``, paired by seed: primary measures (one Holm family)
    and secondary ones (raw p only)."""
    out = ["| arm | measure | difference to systems_aware (mean ± 95 % CI) | p | p (Holm, primary) |", "|---|---|---|---|---|"]
    prim = pd.concat([paired_tests(df, m, FAIR, [BASE]).assign(measure=m) for m in PRIMARY], ignore_index=True)
    from alignment_stats import holm

    prim["p_holm"] = holm(prim["p"].to_numpy())
    sec = pd.concat([paired_tests(df, m, FAIR, [BASE]).assign(measure=m, p_holm=math.nan) for m in SECONDARY if m in df.columns]
                    or [prim.iloc[:0]], ignore_index=True)
    for _, r in pd.concat([prim, sec], ignore_index=True).iterrows():
        ci = "" if not math.isfinite(r["ci"]) else f" ± {r['ci']:.3f}"
        p = "-" if not math.isfinite(r["p"]) else f"{r['p']:.3g}"
        ph = "-" if not math.isfinite(r["p_holm"]) else f"{r['p_holm']:.3g}"
        out.append(f"| {r['policy']} | {r['measure']} | {r['mean_diff']:+.3f}{ci} | {p} | {ph} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fairness_study")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--permutations", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--setting", default="fairness", help="fairness (registered) or fairness_online (amendment 2)")
    a = ap.parse_args(argv)
    base = a.out / "runs" / a.setting
    jobs = [(str(base / f"{lab}-seed{s}"), s, lab, a.permutations)
            for s in range(a.seeds) for lab in LABELS if (base / f"{lab}-seed{s}" / "manifest.json").exists()]
    pooled_jobs = [([j[0] for j in jobs if j[2] == lab], [j[1] for j in jobs if j[2] == lab], lab, a.permutations)
                   for lab in LABELS if any(j[2] == lab for j in jobs)]
    if a.workers <= 1:  # in this process
        rows, pooled = [run_fairness(j) for j in jobs], pd.DataFrame([pooled_leakage(j) for j in pooled_jobs])
    else:
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            rows = list(pool.map(run_fairness, jobs))
            pooled = pd.DataFrame(list(pool.map(pooled_leakage, pooled_jobs)))
    df = pd.DataFrame(rows)
    summ = a.out / "summary.csv"
    if summ.exists():
        s = pd.read_csv(summ)
        s = s[s["setting"] == a.setting][["policy", "seed", "acc@20", "acc_client@20", "sim_time_s", "bytes_mb", "stragglers"]]
        df = df.merge(s, on=["policy", "seed"], how="left")
    df.to_csv(a.out / "fairness.csv", index=False)
    pooled.to_csv(a.out / "leakage_pooled.csv", index=False)
    acc = df.groupby("policy")["acc@20"].mean() if "acc@20" in df.columns else pd.Series(dtype=float)
    pooled["acc@20"] = [acc.get(p, math.nan) for p in pooled["policy"]]
    classes = sorted(c for c in df.columns if c.startswith("class_part_"))
    text = [f"# Fairness and leakage (docs/fairness-prereg.md), setting {a.setting}: {len(df)} runs, seeds 0-{a.seeds - 1}, "
            f"{a.permutations} permutations", "", "Command: `python bench/fairness_study.py "
            + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
            "## Fairness (mean ± 95 % CI over seeds)", "", *table(df, FAIR_COLS), "",
            "## Participation per device class (completed client-rounds per client; mean ± 95 % CI)", "",
            *table(df, [(c, c.removeprefix("class_part_"), "{:.1f}") for c in classes]), "",
            f"Weakest device class (lowest nominal FLOP/s present): {', '.join(sorted(set(df['weakest_class'].dropna())))}.", "",
            "## Fair arms against systems_aware (paired by seed)", "", *paired(df), "",
            "## Leakage: assignment history -> data group (mean ± 95 % CI over seeds)", "", *table(df, LEAK_COLS), "",
            "## Leakage, clients of the 3 seeds pooled per policy (exploratory, not pre-registered)", "",
            *table(pooled.assign(seed=0), LEAK_COLS), "",
            "\\* not pre-registered (exploratory).", ""]
    (a.out / "fairness.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
