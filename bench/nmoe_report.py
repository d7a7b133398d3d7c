"""Markdown tables of ``bench/nmoe_table.py``'s long-format rows (and of its CSV).

Rows: ``setting, seed, variant, method, test`` and the metrics
(``bench/nmoe_table.py`` ``COLUMNS``). ``variant``: ``paper`` (the scenario's
stage semantics: every client does its part), ``one-attempt`` (the availability
ablation), ``K=<n>`` (Fig. 4, n clients), ``top-k=<k>`` (Fig. 4, the paper
variant's trained model served with k experts).
"""

from __future__ import annotations

import argparse
import csv
import math

import numpy as np

METHODS = ["Centralised MoE", "Local", "FedAvg", "FedCE+RanGate", "FedCE+RollGate", "FedCE+FedGate",
           "FedSC+RanGate", "FedSC+RollGate", "FedSC+FedGate"]
GATED = METHODS[3:]
TARGETS = [15.0, 20.0, 25.0, 30.0, 40.0]  # Table V's accuracy targets, %
COST_COLS = ["stage1_s", "stage2_s", "stage3_s", "train_s", "stage1_bytes", "stage2_bytes", "stage3_bytes", "train_bytes"]
LABEL = {"p50_ms": "P50 ms", "p95_ms": "P95 ms", "bytes_req": "B/REQ", "train_s": "train s", "train_bytes": "train MB",
         "stage1_s": "s1 s", "stage2_s": "s2 s", "stage3_s": "s3 s", "stage1_bytes": "s1 MB", "stage3_bytes": "s3 MB",
         "dp_epsilon": "ε RDP", "dp_epsilon_exact": "ε exact", "experts_untrained": "untrained", "retry_wait_s": "wait s", "epochs": "epochs"}


def fmt(vals: list[float], digits: int = 1) -> str:
    """``mean`` or ``mean±std`` of finite values (population std over seeds); ``-`` if none."""
    v = [x for x in vals if not math.isnan(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.{digits}f}" if len(v) == 1 else f"{np.mean(v):.{digits}f}±{np.std(v):.{digits}f}"


def _sel(rows: list[dict], variant: str, method: str, setting: str, test: str) -> list[dict]:
    return [r for r in rows if r["variant"] == variant and r["method"] == method and r["setting"] == setting and r["test"] == test]


def markdown(rows: list[dict], settings: list[str], test: str, metrics: list[str], title: str, scale: dict | None = None,
             variant: str = "paper", methods: list[str] | None = None) -> str:
    """One table: methods x settings x metrics, mean±std over seeds (``scale`` divides a metric, e.g. bytes -> MB)."""
    scale = scale or {}
    head = ["Method"] + [f"{s} {LABEL.get(m, m.upper())}" for s in settings for m in metrics]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meth in methods or METHODS:
        cells = [meth]
        for s in settings:
            sel = _sel(rows, variant, meth, s, test)
            cells += [fmt([r[m] / scale.get(m, 1.0) for r in sel], 2 if m == "stage3_bytes" else 1) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed(rows: list[dict], settings: list[str], test: str, title: str) -> str:
    """Accuracy of every method, setting and seed (no averaging)."""
    seeds = sorted({int(r["seed"]) for r in rows if r["variant"] == "paper"})
    head = ["Method"] + [f"{s} s{k}" for s in settings for k in seeds]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meth in METHODS:
        cells = [meth]
        for s in settings:
            for k in seeds:
                sel = [r["acc"] for r in _sel(rows, "paper", meth, s, test) if int(r["seed"]) == k]
                cells.append(f"{sel[0]:.1f}" if sel else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation(rows: list[dict], settings: list[str]) -> str:
    """Availability ablation: Table-I accuracy, untrained experts, waiting and training seconds, paper vs one attempt."""
    head = ["Method", "setting", "acc paper", "acc one-attempt", "untrained paper", "untrained one-attempt",
            "wait s paper", "train s paper", "train s one-attempt", "seeds"]
    lines = ["### Table VI: stage semantics (paper: every client does its part, retried for up to a day; one attempt: the availability ablation)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        for meth in ["FedAvg", *GATED]:
            a, b = _sel(rows, "paper", meth, s, "same"), _sel(rows, "one-attempt", meth, s, "same")
            if not b:
                continue
            seeds = sorted({int(r["seed"]) for r in b})
            a = [r for r in a if int(r["seed"]) in seeds]
            cells = [meth, s, fmt([r["acc"] for r in a]), fmt([r["acc"] for r in b]), fmt([r["experts_untrained"] for r in a]),
                     fmt([r["experts_untrained"] for r in b]), fmt([r["retry_wait_s"] for r in a], 0), fmt([r["train_s"] for r in a], 0),
                     fmt([r["train_s"] for r in b], 1), ",".join(map(str, seeds))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fig4_axes(rows: list[dict]) -> tuple[list[int], list[int]]:
    """Fig. 4's client counts (10 = the main run) and top-k values present in ``rows``."""
    ks = sorted({int(r["variant"][2:]) for r in rows if r["variant"].startswith("K=")} | {10})
    tops = sorted({int(r["variant"][6:]) for r in rows if r["variant"].startswith("top-k=")})
    return ks, tops


def fig4(rows: list[dict], setting: str) -> str:
    """Fig. 4's ablations at ``setting``: Table-I accuracy against the number of clients and against top-k."""
    ks, tops = _fig4_axes(rows)
    head = ["Method"] + [f"K={k}" for k in ks] + [f"top-{k}" for k in tops]
    lines = [f"### Fig. 4: {setting}, Table-I accuracy % against the number of clients K and the experts per request (top-k; the gate trained at top-1)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for meth in ["FedAvg", *GATED]:
        cells = [meth]
        for k in ks:
            cells.append(fmt([r["acc"] for r in _sel(rows, "paper" if k == 10 else f"K={k}", meth, setting, "same")]))
        for k in tops:
            cells.append(fmt([r["acc"] for r in _sel(rows, f"top-k={k}", meth, setting, "same")]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fig4_png(rows: list[dict], setting: str, path: object) -> bool:
    """Fig. 4 as a PNG at ``path``: Table-I accuracy (mean, error bar = std over seeds)
    against the number of clients K (left) and the experts per request top-k (right), one
    line per method (colour: gate, line style: extractor; FedAvg black). False if no Fig. 4
    row exists."""
    ks, tops = _fig4_axes(rows)
    if len(ks) < 2 and not tops:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"RanGate": "tab:blue", "RollGate": "tab:orange", "FedGate": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
    panels = [(axes[0], ks, lambda k: "paper" if k == 10 else f"K={k}", "number of clients K"),
              (axes[1], tops, lambda k: f"top-k={k}", "experts per request (top-k; gate trained at top-1)")]
    for ax, xs, variant, label in panels:
        for meth in ["FedAvg", *GATED]:
            m, s = [], []
            for x in xs:
                v = [r["acc"] for r in _sel(rows, variant(x), meth, setting, "same") if not math.isnan(r["acc"])]
                m.append(np.mean(v) if v else math.nan)
                s.append(np.std(v) if len(v) > 1 else 0.0)
            if all(math.isnan(v) for v in m):
                continue
            ext, _, gate = meth.partition("+")
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=meth,
                        color=colour.get(gate, "black"), linestyle="--" if ext == "FedSC" else "-")
        ax.set_xticks(xs)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    n = sorted({len({r["seed"] for r in rows if r["variant"] == v and r["setting"] == setting})
                for v in {r["variant"] for r in rows if r["variant"].startswith(("K=", "top-k="))} | {"paper"}})
    seeds = f"{n[0]} seeds" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds per point"
    axes[0].set_ylabel(f"Table I accuracy, % (mean ± std, {seeds})")
    axes[0].set_title(f"{setting}: clients (the same data split among K)")
    axes[1].set_title(f"{setting}: top-k at inference, K = 10 (no FedAvg: one model)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(0.86, 0.5))
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
    return True


def _mean(rows: list[dict], meth: str, s: str, test: str, k: str = "acc", variant: str = "paper") -> float:
    v = [r[k] for r in _sel(rows, variant, meth, s, test) if not math.isnan(r[k])]
    return float(np.mean(v)) if v else math.nan


def _by_seed(rows: list[dict], meth: str, s: str, test: str, k: str = "acc") -> dict[int, float]:
    return {int(r["seed"]): r[k] for r in _sel(rows, "paper", meth, s, test) if not math.isnan(r[k])}


def _paired_p(d: np.ndarray) -> float:
    """Two-sided one-sample t-test of per-seed differences ``d`` against 0 (NaN below 2 seeds
    or with zero spread and a zero mean; zero spread and a nonzero mean: 0)."""
    from scipy.stats import ttest_1samp

    if len(d) < 2:
        return math.nan
    if np.allclose(d, d[0]):
        return math.nan if d[0] == 0 else 0.0
    return float(ttest_1samp(d, 0.0).pvalue)


def orderings(rows: list[dict], settings: list[str]) -> str:
    """The paper's orderings, each held or not per setting (Table I unless said). "held":
    the mean over seeds goes the paper's way; each row also has the per-seed paired
    difference (mean and 95 % CI half-width), a two-sided paired t-test and its Holm-adjusted
    p over every row of the table (one family). Differences per seed: (1) FedGate minus the
    better of the other two gates; (5) the centralised MoE minus the best other method;
    (6) Table I minus Table II accuracy of Local."""
    try:
        from bench.alignment_stats import ci95, holm
    except ImportError:  # run as a script: bench/ is on sys.path
        from alignment_stats import ci95, holm  # type: ignore[no-redef]

    out: list[list] = []

    def add(name: str, s: str, ok: bool | None, detail: str, diffs: list[float]) -> None:
        d = np.asarray(diffs, dtype=float)
        mean, half = ci95(d) if len(d) else (math.nan, math.nan)
        out.append([name, s, "-" if ok is None else ("held" if ok else "not held"), detail, mean, half, len(d), _paired_p(d)])

    def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
        return [a[k] - b[k] for k in sorted(set(a) & set(b))]

    def cmp(name: str, s: str, a: str, b: str, test: str = "same") -> None:
        x, y = _mean(rows, a, s, test), _mean(rows, b, s, test)
        add(name, s, None if math.isnan(x) or math.isnan(y) else x > y, f"{a} {x:.1f} vs {b} {y:.1f}",
            paired(_by_seed(rows, a, s, test), _by_seed(rows, b, s, test)))

    for s in settings:
        for e in ("FedCE", "FedSC"):
            gates = ("RanGate", "RollGate", "FedGate")
            accs = {g: _mean(rows, f"{e}+{g}", s, "same") for g in gates}
            ok = None if any(math.isnan(v) for v in accs.values()) else accs["FedGate"] >= max(accs.values())
            per = {g: _by_seed(rows, f"{e}+{g}", s, "same") for g in gates}
            seeds = sorted(set(per["RanGate"]) & set(per["RollGate"]) & set(per["FedGate"]))
            add(f"(1) FedGate the best {e} gate", s, ok, ", ".join(f"{g} {v:.1f}" for g, v in accs.items()),
                [per["FedGate"][k] - max(per["RanGate"][k], per["RollGate"][k]) for k in seeds])
            cmp(f"(2) {e}: RollGate > RanGate", s, f"{e}+RollGate", f"{e}+RanGate")
        if s != "IID":
            for g in ("RanGate", "RollGate", "FedGate"):
                cmp(f"(3) FedSC > FedCE with {g} (non-IID)", s, f"FedSC+{g}", f"FedCE+{g}")
            for m in ("FedCE+FedGate", "FedSC+FedGate"):
                cmp("(4) NMoE beats FedAvg (non-IID)", s, m, "FedAvg")
        t2 = {m: _mean(rows, m, s, "iid-test") for m in METHODS}
        best = max((m for m in t2 if not math.isnan(t2[m])), key=lambda m: t2[m], default=None)
        per2 = {m: _by_seed(rows, m, s, "iid-test") for m in METHODS}
        cen = per2["Centralised MoE"]
        others = [m for m in METHODS if m != "Centralised MoE" and per2[m]]
        d5 = [cen[k] - max(per2[m][k] for m in others) for k in sorted(cen) if all(k in per2[m] for m in others)] if others else []
        add("(5) centralised MoE best on Table II", s, None if best is None else best == "Centralised MoE",
            f"best {best} {t2.get(best, math.nan):.1f}; centralised {t2['Centralised MoE']:.1f}" if best else "-", d5)
        a, b, f = _mean(rows, "Local", s, "same"), _mean(rows, "Local", s, "iid-test"), _mean(rows, "Local", s, "same", "f1")
        add("(6) Local: Table I > Table II, low macro-F1", s, None if math.isnan(a) else (a > b and f < a),
            f"I {a:.1f}, II {b:.1f}, F1 {f:.1f}", paired(_by_seed(rows, "Local", s, "same"), _by_seed(rows, "Local", s, "iid-test")))
    p_holm = holm([r[7] for r in out]) if out else []
    lines = ["### The paper's orderings against ours", "",
             "Held: the mean over seeds goes the paper's way. Diff: per-seed paired difference in points, mean ± 95 % CI "
             "half-width (n seeds); p: two-sided paired t-test; p Holm: adjusted over all rows (one family).", "",
             "| ordering | setting | held? | ours (means) | diff | n | p | p Holm |", "|---|---|---|---|---|---|---|---|"]

    def num(x: float, f: str) -> str:
        return "-" if math.isnan(x) else format(x, f)

    for r, ph in zip(out, p_holm):
        diff = "-" if math.isnan(r[4]) else (f"{r[4]:+.1f}" + ("" if math.isnan(r[5]) else f" ± {r[5]:.1f}"))
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {diff} | {r[6]} | {num(r[7], '.3f')} | {num(ph, '.3f')} |")
    return "\n".join(lines)


def cheapest(rows: list[dict], settings: list[str], targets: list[float]) -> str:
    """Table V: per setting and target Table-I accuracy (%), the method with a
    simulated training cost that reaches it (mean accuracy over seeds >= target)
    in the fewest seconds and the one in the fewest bytes."""
    lines = ["### Table V: cheapest method reaching a Table-I accuracy (mean over seeds; methods with a simulated cost)", "",
             "| setting | target acc % | fewest seconds | fewest bytes | fewest seconds, NMoE only | fewest bytes, NMoE only |", "|---|---|---|---|---|---|"]
    for s_ in settings:
        stats = {}
        for meth in METHODS:
            sel = [r for r in _sel(rows, "paper", meth, s_, "same") if not math.isnan(r["train_s"])]
            if sel:
                stats[meth] = (np.mean([r["acc"] for r in sel]), np.mean([r["train_s"] for r in sel]), np.mean([r["train_bytes"] for r in sel]))
        for t in targets:
            cells = [s_, f"{t:g}"]
            for pool in (stats, {m: v for m, v in stats.items() if "+" in m}):
                ok = {m: v for m, v in pool.items() if v[0] >= t}
                if not ok:
                    cells += ["none", "none"]
                    continue
                fs = min(ok, key=lambda m: (ok[m][1], ok[m][2]))
                fb = min(ok, key=lambda m: (ok[m][2], ok[m][1]))
                cells += [f"{fs} ({ok[fs][1]:.1f} s, {ok[fs][0]:.1f} %)", f"{fb} ({ok[fb][2] / 1e6:.1f} MB, {ok[fb][0]:.1f} %)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace, rows: list[dict], settings: list[str], wall: float | None, cpu: float | None) -> str:
    """The Markdown tables of ``rows``; also written with the CSV to ``args.out``
    (``wall`` / ``cpu`` None: rebuilt from a CSV, no timing)."""
    if not rows:
        return ""
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "nmoe_table.csv", "w", newline="") as f:  # first: the rows survive a failing table below
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    timing = "rebuilt from its CSV" if wall is None else f"wall {wall:.0f} s, CPU {cpu:.0f} s (all processes)"
    seeds = sorted({int(r["seed"]) for r in rows if r["variant"] == "paper"})
    mb = {k: 1e6 for k in COST_COLS if k.endswith("bytes")}
    md = "\n\n".join([
        f"NMoE on {args.dataset}, scenario nmoe-cifar10 (10 clients), top-{args.top_k}, {args.rounds} stage-1 rounds, "
        f"seeds {seeds} (paper variant), non-IID(τ) as {args.tau_definition}; {timing}. "
        "Acc / F1 / AUC / LR in %, mean±std over the seeds present.",
        markdown(rows, settings, "same", ["acc", "f1", "auc", "lr"], "Table I: test on each client's own distribution"),
        markdown(rows, settings, "iid-test", ["acc", "f1", "auc"], "Table II: train non-IID, test on the global IID test set"),
        per_seed(rows, settings, "same", "Table I accuracy, every seed"),
        per_seed(rows, settings, "iid-test", "Table II accuracy, every seed"),
        markdown(rows, settings, "same", ["stage1_s", "stage2_s", "stage3_s", "train_s", "stage1_bytes", "stage3_bytes", "train_bytes"],
                 "Table III: simulated training cost per stage (s = seconds, MB = 10^6 bytes; stage 2 moves bytes only with FedGate)", mb),
        markdown(rows, settings, "same", ["p50_ms", "p95_ms", "bytes_req", "dp_epsilon", "dp_epsilon_exact"],
                 "Table IV: serverless inference latency, bytes per request, FedSC's epsilon spent (delta 1e-5; RDP bound and exact Gaussian-DP total)"),
        markdown(rows, settings, "same", ["epochs"], "Centralised MoE: epochs to its validation plateau", methods=["Centralised MoE"]),
        orderings(rows, settings),
        cheapest(rows, settings, TARGETS),
        ablation(rows, settings),
        fig4(rows, args.topk_setting if hasattr(args, "topk_setting") else settings[-1]),
    ])
    (args.out / "nmoe_table.md").write_text(md + "\n")
    fig4_png(rows, args.topk_setting if hasattr(args, "topk_setting") else settings[-1], args.out / "nmoe_fig4.png")
    return md


def settings_of(rows: list[dict]) -> tuple[list[str], str]:
    """``(columns, Fig. 4 setting)`` of long-format rows: the run's column order (IID, then
    tau falling), not the order its units finished in, and Fig. 4 at the setting its K / top-k
    rows were run at (a partial run may hold no Fig. 4 row at the last setting)."""
    def key(name: str) -> tuple[int, float]:
        return (0, 0.0) if name == "IID" else (1, -float(name.split("=")[1]))

    order = sorted(dict.fromkeys(r["setting"] for r in rows if r["variant"] == "paper"), key=key)
    fig4 = [r["setting"] for r in rows if r["variant"].startswith(("K=", "top-k="))]
    return order, (fig4[0] if fig4 else order[-1])


def from_csv(args: argparse.Namespace) -> str:
    """The tables of a written ``nmoe_table.csv`` (``args.from_csv``), rewritten to ``args.out``."""
    with open(args.from_csv, newline="") as f:
        raw = list(csv.DictReader(f))
    text = ("setting", "method", "test", "variant")
    rows = [{k: (v if k in text else (int(v) if k == "seed" else float(v))) for k, v in r.items()} for r in raw]
    for r in rows:  # a CSV written before the exact total replaced the PRV accountant's (equal within 0.01)
        if "dp_epsilon_prv" in r:
            r["dp_epsilon_exact"] = r.pop("dp_epsilon_prv")
    order, args.topk_setting = settings_of(rows)
    return report(args, rows, order, None, None)


def quick_lines(rows: list[dict]) -> None:
    """``--quick``: one line per method (Table I, the paper variant)."""
    for meth in METHODS:
        sel = [r for r in rows if r["method"] == meth and r["test"] == "same" and r["variant"] == "paper"]
        if not sel:
            continue

        def m(k: str, sel: list[dict] = sel) -> float:
            return float(np.nanmean([r[k] for r in sel])) if any(not math.isnan(r[k]) for r in sel) else math.nan

        print(f"method={meth.replace(' ', '_')} acc={m('acc'):.1f} f1={m('f1'):.1f} auc={m('auc'):.1f} lr={m('lr'):.1f} "
              f"train_s={m('train_s'):.1f} train_bytes={m('train_bytes'):.0f} p95_ms={m('p95_ms'):.1f}")
