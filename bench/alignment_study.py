"""The client-expert alignment study v2 (issue 26; pre-registered in docs/alignment-prereg.md).

Two settings, one scenario file each, every policy run with the same seeds (the same root seed
gives every policy the same data, partition, initial weights, topology, device traces and, by
common random numbers, selection stream), so comparisons are paired by seed:

- ``premise`` (``scenarios/alignment-premise.yaml``): the design paper's premise holds (E =
  number of data groups, each client's data from one group, one expert per client, fitness from
  the gate for every expert): ``random``, ``greedy``, ``greedy_eps`` (epsilon 0.1),
  ``load_balanced``, ``optimal``;
- ``systems`` (``scenarios/alignment-systems.yaml``): the policies differ in systems cost (wide
  experts, budgets of 1-3 experts from capacity estimates, a tight deadline): ``random``,
  ``greedy``, ``load_balanced``, ``deadline_aware``, ``systems_aware``;
- both with the reference ``group_oracle`` (each client always trains its own group's expert; it
  knows the groups, no policy does);
- ``fig3`` (``scenarios/alignment-fig3.yaml``, only with ``--setting fig3``): the earlier study's
  setting and policies (docs/results/alignment-study-v1.md);
- ``fairness`` (only with ``--setting fairness``): the ``systems`` setting with the
  ``fair_participation`` policy (w_p 1 and 10) beside the others (issue 33,
  docs/fairness-prereg.md; fairness and leakage tables: ``bench/fairness_study.py``).

Per run it reads the run's own tables and writes to ``--out`` (default ``runs/alignment_study``):
``summary.csv`` (one row per setting, policy and seed: every metric at every horizon),
``summary.md`` (per setting and horizon: mean ± 95 % CI over seeds; Holm-corrected paired
t-tests against ``random`` and the oracle; the Friedman test; effect sizes relative to the
oracle's headroom; which policies reduce to another), ``accuracy_<setting>.png`` (accuracy
against round and against simulated time, mean and 95 % band over seeds). Horizons: round 10 and
the last round (``acc@h`` = mean accuracy of rounds h-2..h). Runs already complete in ``--out``
are reused.

``--quick``: 1 seed, 6 rounds, output in ``runs/alignment_study_quick``; prints per setting and
policy ``setting=S policy=P acc= acc_macro= entropy= max_share= rounds_to_target=
bytes_to_target= t_target_s=``.

Usage: python bench/alignment_study.py [--quick] [--seeds N] [--first-seed F] [--rounds R]
       [--setting S ...] [--workers W] [--out DIR]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment_stats import ci95, tests_table  # noqa: E402

ORACLE = "group_oracle"
_ORACLE = (ORACLE, [f"protocol.fedmoe.alignment.policy={ORACLE}"])

#: setting -> (scenario file, [(label, overrides)]); every other value comes from the file.
SETTINGS: dict[str, tuple[Path, list[tuple[str, list[str]]]]] = {
    "premise": (ROOT / "scenarios" / "alignment-premise.yaml", [
        ("random", ["protocol.fedmoe.alignment.policy=random"]),
        ("greedy", ["protocol.fedmoe.alignment.policy=greedy"]),
        ("greedy_eps", ["protocol.fedmoe.alignment.policy=greedy", "protocol.fedmoe.alignment.epsilon=0.1"]),
        ("load_balanced", ["protocol.fedmoe.alignment.policy=load_balanced"]),
        ("optimal", ["protocol.fedmoe.alignment.policy=optimal"]),
        _ORACLE,
    ]),
    "systems": (ROOT / "scenarios" / "alignment-systems.yaml", [
        ("random", ["protocol.fedmoe.alignment.policy=random"]),
        ("greedy", ["protocol.fedmoe.alignment.policy=greedy"]),
        ("load_balanced", ["protocol.fedmoe.alignment.policy=load_balanced"]),
        ("deadline_aware", ["protocol.fedmoe.alignment.policy=deadline_aware"]),
        ("systems_aware", ["protocol.fedmoe.alignment.policy=systems_aware"]),
        _ORACLE,
    ]),
    # issue 33 (docs/fairness-prereg.md): the systems setting with the fair-participation option beside the others
    "fairness": (ROOT / "scenarios" / "alignment-systems.yaml", [
        ("random", ["protocol.fedmoe.alignment.policy=random"]),
        ("greedy", ["protocol.fedmoe.alignment.policy=greedy"]),
        ("load_balanced", ["protocol.fedmoe.alignment.policy=load_balanced"]),
        ("deadline_aware", ["protocol.fedmoe.alignment.policy=deadline_aware"]),
        ("systems_aware", ["protocol.fedmoe.alignment.policy=systems_aware"]),
        ("fair_wp1", ["protocol.fedmoe.alignment.policy=fair_participation", "protocol.fedmoe.alignment.w_p=1.0"]),
        ("fair_wp10", ["protocol.fedmoe.alignment.policy=fair_participation", "protocol.fedmoe.alignment.w_p=10.0"]),
        _ORACLE,
    ]),
    # issue 33, amendment 2 of docs/fairness-prereg.md: every client online (no availability sessions), so the
    # choice of who trains is the policy's
    "fairness_online": (ROOT / "scenarios" / "alignment-systems.yaml", [
        ("systems_aware", ["protocol.fedmoe.alignment.policy=systems_aware", "devices.dropout=false"]),
        ("fair_wp1", ["protocol.fedmoe.alignment.policy=fair_participation", "protocol.fedmoe.alignment.w_p=1.0", "devices.dropout=false"]),
        ("fair_wp10", ["protocol.fedmoe.alignment.policy=fair_participation", "protocol.fedmoe.alignment.w_p=10.0", "devices.dropout=false"]),
    ]),
    "fig3": (ROOT / "scenarios" / "alignment-fig3.yaml", [
        ("random", ["protocol.fedmoe.alignment.policy=random"]),
        ("greedy", ["protocol.fedmoe.alignment.policy=greedy"]),
        ("lb_wu0.25", ["protocol.fedmoe.alignment.policy=load_balanced", "protocol.fedmoe.alignment.w_u=0.25"]),
        ("lb_wu0.5", ["protocol.fedmoe.alignment.policy=load_balanced", "protocol.fedmoe.alignment.w_u=0.5"]),
        ("lb_wu1", ["protocol.fedmoe.alignment.policy=load_balanced", "protocol.fedmoe.alignment.w_u=1.0"]),
        ("optimal", ["protocol.fedmoe.alignment.policy=optimal"]),
        ("deadline_aware", ["protocol.fedmoe.alignment.policy=deadline_aware"]),
        ("systems_aware", ["protocol.fedmoe.alignment.policy=systems_aware"]),
        _ORACLE,
    ]),
}
DEFAULT_SETTINGS = ("premise", "systems")
EARLY = 10
QUICK_ROUNDS = 6


def _complete(run_dir: Path) -> bool:
    man = run_dir / "manifest.json"
    return man.exists() and json.loads(man.read_text()).get("status") == "completed" and (run_dir / "rounds.parquet").exists()


def _run_one(args: tuple[str, str, list[str], int, int | None, Path, list[str]]) -> str:
    """Run one (setting, policy, seed); returns the run directory. Skips a run already complete."""
    setting, label, overrides, seed, rounds, out, extra = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from fedsim.api import load_scenario, run

    torch.set_num_threads(1)
    scenario = SETTINGS[setting][0]
    run_dir = out / "runs" / setting / f"{label}-seed{seed}"
    if _complete(run_dir):
        return str(run_dir)
    if run_dir.exists():
        for f in sorted(run_dir.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    ov = [*overrides, *extra, "output.figures=false"]
    if rounds is not None:
        ov.append(f"run.rounds={rounds}")
    if f"protocol.fedmoe.alignment.policy={ORACLE}" in ov:
        register_group_oracle(load_scenario(scenario, [o for o in ov if not o.startswith("protocol.fedmoe.alignment.policy=")], seed=seed))
    run(load_scenario(scenario, ov, seed=seed), run_dir, figures=False)
    return str(run_dir)


def register_group_oracle(loaded) -> None:  # noqa: ANN001
    """Register alignment policy ``group_oracle`` for ``loaded``'s world (in this process):
    each client gets exactly its group's expert (expert index = group), whatever its budget
    beyond the first expert. A reference that knows the groups, not a policy."""
    from fedsim.alignment import policies as pol
    from fedsim.build import build_parts

    groups = {c: int(sp.group) for c, sp in build_parts(loaded).trainer.splits.items()}

    class GroupOracle(pol.AlignmentPolicy):
        name = ORACLE

        def _assign(self, clients, budgets, state, rng, ctx):  # noqa: ANN001, ANN202
            return {c: [groups[c]] if budgets[c] else [] for c in clients}

    pol.POLICIES[ORACLE] = GroupOracle


def horizons(rounds: int) -> list[int]:
    """Round 10 (if the run is longer) and the last round, numbered from 1."""
    return sorted({h for h in (EARLY, rounds) if 1 <= h <= rounds})


def run_metrics(run_dir: Path, target: float, hs: list[int]) -> dict:
    """One row of ``summary.csv``: per horizon ``h``, ``acc@h`` and the measures of
    :mod:`fedsim.alignment.measures` on rounds ``< h``; and the run's time / bytes / stragglers."""
    from fedsim.alignment.measures import alignment_measures

    r = pd.read_parquet(run_dir / "rounds.parquet").sort_values("round")
    ex = pd.read_parquet(run_dir / "experts.parquet")
    c = pd.read_parquet(run_dir / "clients.parquet")
    out: dict = {}
    for h in hs:
        rh, eh = r[r["round"] < h], ex[ex["round"] < h]
        m = alignment_measures({"rounds": rh, "experts": eh}, target)
        for col in ("accuracy", "accuracy_macro", "accuracy_client"):
            v = rh[col].dropna() if col in rh.columns else pd.Series(dtype=float)
            out[f"{col.replace('accuracy', 'acc')}@{h}"] = float(v.tail(3).mean()) if len(v) else math.nan
        for k in ("routed_entropy", "max_share", "starved_experts"):
            out[f"{k}@{h}"] = float(m[k])
    m = alignment_measures({"rounds": r, "experts": ex}, target)
    out.update({k: float(m[k]) for k in ("rounds_to_target", "t_target_s", "bytes_to_target")})
    out["reached"] = float(math.isfinite(out["rounds_to_target"]))
    out["bytes_mb"] = float((c["bytes_up"].sum() + c["bytes_down"].sum()) / 1e6)
    out["stragglers"] = float((c["status"] == "straggler").sum())
    out["experts_per_client"] = float(c.loc[c["k"] > 0, "k"].mean()) if (c["k"] > 0).any() else 0.0
    out["sim_time_s"] = float(r["t_end_s"].iloc[-1])
    out["rounds"] = float(len(r))
    return out


def same_as(runs: dict[tuple[str, str, int], Path]) -> dict[tuple[str, str], list[str]]:
    """Per (setting, policy): the other policies whose ``assignments`` table is identical in
    every seed both ran (the policy reduces to them in this setting)."""
    tabs = {k: pd.read_parquet(p / "assignments.parquet").reset_index(drop=True) for k, p in runs.items()}
    out: dict[tuple[str, str], list[str]] = {}
    keys = sorted({(s, lab) for s, lab, _ in runs})
    for s, a in keys:
        for s2, b in keys:
            if s2 != s or b == a:
                continue
            seeds = [sd for (ss, lab, sd) in runs if ss == s and lab == a and (s, b, sd) in runs]
            if seeds and all(tabs[(s, a, sd)].equals(tabs[(s, b, sd)]) for sd in seeds):
                out.setdefault((s, a), []).append(b)
    return out


COLS = [
    ("acc", "acc (global gate)", "{:.3f}"),
    ("acc_macro", "acc, group-macro", "{:.3f}"),
    ("acc_client", "acc_client (own trained experts)", "{:.3f}"),
    ("routed_entropy", "routed-sample entropy", "{:.2f}"),
    ("max_share", "max expert share", "{:.2f}"),
    ("starved_experts", "starved experts", "{:.1f}"),
]
SYSTEMS = [
    ("rounds_to_target", "rounds to target", "{:.1f}"),
    ("t_target_s", "sim s to target", "{:.1f}"),
    ("bytes_to_target", "MB to target", "{:.1f}"),
    ("bytes_mb", "MB / run", "{:.1f}"),
    ("stragglers", "stragglers / run", "{:.1f}"),
    ("experts_per_client", "experts / dispatched client", "{:.2f}"),
]


def _cell(d: pd.DataFrame, key: str, fmt: str) -> str:
    m, h = ci95(d[key].to_numpy())
    if key == "bytes_to_target":
        m, h = m / 1e6, h / 1e6
    return "-" if not math.isfinite(m) else fmt.format(m) + ("" if not math.isfinite(h) else " ± " + fmt.format(h))


def setting_md(df: pd.DataFrame, setting: str, labels: list[str], hs: list[int], target: float, same: dict) -> list[str]:
    """The ``summary.md`` section of one setting."""
    d0 = df[df["setting"] == setting]
    n = d0.groupby("policy")["seed"].nunique()
    lines = [f"## Setting `{setting}` ({SETTINGS[setting][0].name}), {int(d0['rounds'].iloc[0])} rounds, "
             f"{int(n.min())}-{int(n.max())} seeds per policy", ""]
    for h in hs:
        lines += [f"### Round {h}", "", "Mean ± 95 % CI half-width over seeds (Student t); accuracies are the mean "
                  f"of rounds {max(1, h - 2)}-{h}; routed-sample measures over rounds 1-{h}.", "",
                  "| policy | " + " | ".join(t for _, t, _ in COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
        for lab in labels:
            d = d0[d0["policy"] == lab]
            if not d.empty:
                lines.append(f"| {lab} | " + " | ".join(_cell(d, f"{k}@{h}", f) for k, _, f in COLS) + " |")
        lines += ["", f"Paired by seed, primary metric `acc@{h}` (two-sided paired t-tests; one Holm family "
                  "per setting and horizon: every policy against random and against the oracle):", "",
                  *tests_table(d0, f"acc@{h}", labels), ""]
    lines += [f"### Time, bytes, stragglers (target accuracy {target}, global gate; over the runs that reached it)", "",
              "| policy | " + " | ".join(t for _, t, _ in SYSTEMS) + " | reached target |", "|---" * (len(SYSTEMS) + 2) + "|"]
    for lab in labels:
        d = d0[d0["policy"] == lab]
        if not d.empty:
            lines.append(f"| {lab} | " + " | ".join(_cell(d, k, f) for k, _, f in SYSTEMS)
                         + f" | {int(d['reached'].sum())}/{len(d)} |")
    red = [f"`{a}` = `{', '.join(bs)}`" for (s, a), bs in sorted(same.items()) if s == setting and a < min(bs)]
    lines += ["", "Policies that reduce to another here (identical assignments in every seed): "
              + ("; ".join(red) if red else "none") + ".", ""]
    return lines


def _curves(runs: dict[tuple[str, str, int], Path], setting: str, lab: str) -> list[pd.DataFrame]:
    return [pd.read_parquet(p / "rounds.parquet").sort_values("round") for (s, la, _), p in sorted(runs.items())
            if s == setting and la == lab]


def plot_accuracy(runs: dict[tuple[str, str, int], Path], setting: str, labels: list[str], out: Path) -> Path:
    """Accuracy (global gate) against round and against simulated time: mean and 95 % band over seeds
    (against time: each run's last evaluated accuracy at each time, on a common grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import t as student_t

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ends = [r["t_end_s"] for lab in labels for r in _curves(runs, setting, lab)]
    grid = np.linspace(max(float(e.iloc[0]) for e in ends), max(float(e.iloc[-1]) for e in ends), 200)
    for lab in labels:
        cs = _curves(runs, setting, lab)
        if not cs:
            continue
        n = len(cs)
        q = student_t.ppf(0.975, n - 1) / math.sqrt(n) if n > 1 else 0.0
        acc = np.array([c["accuracy"].to_numpy() for c in cs])
        x = np.arange(1, acc.shape[1] + 1)
        m, s = acc.mean(0), acc.std(0, ddof=1) if n > 1 else np.zeros(acc.shape[1])
        style = dict(ls="--", color="k") if lab == ORACLE else {}
        (ln,) = a1.plot(x, m, label=lab, **style)
        a1.fill_between(x, m - q * s, m + q * s, alpha=0.15, color=ln.get_color())
        at = np.array([np.interp(grid, c["t_end_s"], c["accuracy"], left=np.nan) for c in cs])
        mt = np.nanmean(at, 0)
        st = np.nanstd(at, 0, ddof=1) if n > 1 else np.zeros_like(mt)
        a2.plot(grid, mt, color=ln.get_color(), **({"ls": "--"} if lab == ORACLE else {}))
        a2.fill_between(grid, mt - q * st, mt + q * st, alpha=0.15, color=ln.get_color())
    a1.set(xlabel="round", ylabel="accuracy (global gate)", title=f"{setting}: accuracy vs round")
    a2.set(xlabel="simulated time (s)", ylabel="accuracy (global gate)", title=f"{setting}: accuracy vs simulated time")
    a1.legend(fontsize=8)
    fig.suptitle(f"mean and 95 % band over {len(_curves(runs, setting, labels[0]))} seeds (dashed: the group oracle, a reference)")
    p = out / f"accuracy_{setting}.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"1 seed, {QUICK_ROUNDS} rounds")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    ap.add_argument("--first-seed", type=int, default=0, help="start at this seed (run seeds F..N-1; to split a study over invocations)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the scenario's)")
    ap.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="repeatable; default premise and systems")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (default 2)")
    ap.add_argument("--summarise-only", action="store_true", help="run nothing: summarise the runs already complete in --out")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default runs/alignment_study[_quick])")
    a = ap.parse_args(argv)
    settings = a.setting or list(DEFAULT_SETTINGS)
    seeds = 1 if a.quick else a.seeds
    rounds = a.rounds if a.rounds is not None else (QUICK_ROUNDS if a.quick else None)
    out = a.out or ROOT / "runs" / ("alignment_study_quick" if a.quick else "alignment_study")
    out.mkdir(parents=True, exist_ok=True)
    from fedsim.api import load_scenario

    jobs = [(st, lab, ov, s, rounds, out, []) for s in range(a.first_seed, seeds) for st in settings for lab, ov in SETTINGS[st][1]]
    reused = sum(_complete(out / "runs" / j[0] / f"{j[1]}-seed{j[3]}") for j in jobs)
    t0 = time.perf_counter()
    runs: dict[tuple[str, str, int], Path] = {}
    if a.summarise_only:
        jobs = [j for j in jobs if _complete(out / "runs" / j[0] / f"{j[1]}-seed{j[3]}")]
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        for job, rd in zip(jobs, pool.map(_run_one, jobs)):
            runs[(job[0], job[1], job[3])] = Path(rd)
            print(f"done {job[0]} {job[1]} seed {job[3]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    rows, text = [], ["# Alignment study v2 (pre-registered: docs/alignment-prereg.md)", ""]
    same = same_as(runs)
    meta = (f"seeds {a.first_seed}-{seeds - 1}; settings {', '.join(settings)}; wall {wall:.0f} s with {a.workers} workers"
            + (f"; {reused} of {len(jobs)} runs reused from an earlier invocation (not timed here)" if reused else "") + ".")
    text += [meta, "", "Command: `python bench/alignment_study.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`", ""]
    for st in settings:
        sc = load_scenario(SETTINGS[st][0]).scenario
        target, R = sc.evaluation.target_accuracy, rounds or sc.run.rounds
        hs = horizons(R)
        labels = [lab for lab, _ in SETTINGS[st][1]]
        for (s2, lab, seed), rd in runs.items():
            if s2 == st:
                rows.append({"setting": st, "policy": lab, "seed": seed, **run_metrics(rd, target, hs)})
        df = pd.DataFrame(rows)
        text += setting_md(df, st, labels, hs, target, same)
        plot_accuracy(runs, st, labels, out)
        if a.quick:
            last = hs[-1]
            for lab in labels:
                d = df[(df["setting"] == st) & (df["policy"] == lab)].iloc[0]
                print(f"setting={st} policy={lab} acc={d[f'acc@{last}']:.3f} acc_macro={d[f'acc_macro@{last}']:.3f} "
                      f"entropy={d[f'routed_entropy@{last}']:.3f} max_share={d[f'max_share@{last}']:.3f} "
                      f"rounds_to_target={d['rounds_to_target']:.0f} bytes_to_target={d['bytes_to_target']:.0f} "
                      f"t_target_s={d['t_target_s']:.1f}")
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text("\n".join(text) + "\n")
    if not a.quick:
        print("\n".join(text))
    print(f"wrote {out}/summary.md, summary.csv, accuracy_*.png (wall {wall:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
