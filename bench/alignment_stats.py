"""Statistics of the alignment study (docs/alignment-prereg.md): paired tests with Holm's
correction, the Friedman test, and effect sizes relative to the oracle's headroom.

Pure functions of a frame with one row per (policy, seed); used by
``bench/alignment_study.py`` and tested in ``tests/test_alignment_study.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["ci95", "effect_vs_headroom", "friedman", "holm", "paired_tests", "tests_table"]


def ci95(x: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t confidence interval (NaNs dropped)."""
    from scipy.stats import t

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def _pivot(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df.pivot_table(index="seed", columns="policy", values=metric, aggfunc="first")


def paired_tests(df: pd.DataFrame, metric: str, policies: Sequence[str], refs: Sequence[str]) -> pd.DataFrame:
    """Two-sided paired t-tests of ``metric`` (seeds present for both sides) of every policy
    against every reference (a pair once: with refs random and the oracle, the oracle against
    random, not also random against the oracle); one row per (policy, ref) with ``mean_diff``, ``ci``, ``n``,
    ``p`` and ``p_holm`` (Holm over all rows: one family). A pair with fewer than 2 seeds, or
    with zero spread of the differences, gets ``p`` NaN (zero spread and a nonzero mean: 0)."""
    from scipy.stats import ttest_rel

    w = _pivot(df, metric)
    rows = []
    done: set[tuple[str, str]] = set()
    for ref in refs:
        for pol in policies:
            if pol == ref or pol not in w.columns or ref not in w.columns or (ref, pol) in done:
                continue  # a pair tested the other way round is not tested twice
            done.add((pol, ref))
            pair = w[[pol, ref]].dropna()
            d = (pair[pol] - pair[ref]).to_numpy()
            mean, half = ci95(d)
            if len(d) < 2:
                p = math.nan
            elif np.allclose(d, d[0]):
                p = math.nan if d[0] == 0 else 0.0
            else:
                p = float(ttest_rel(pair[pol], pair[ref]).pvalue)
            rows.append({"policy": pol, "ref": ref, "mean_diff": mean, "ci": half, "n": len(d), "p": p})
    out = pd.DataFrame(rows, columns=["policy", "ref", "mean_diff", "ci", "n", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


def friedman(df: pd.DataFrame, metric: str, policies: Sequence[str]) -> tuple[float, float, int]:
    """Friedman chi-square statistic, p-value and number of complete blocks (seeds) of
    ``metric`` across ``policies``; NaN with fewer than 3 policies or 2 blocks."""
    from scipy.stats import friedmanchisquare

    w = _pivot(df, metric)
    cols = [p for p in policies if p in w.columns]
    w = w[cols].dropna()
    if len(cols) < 3 or len(w) < 2:
        return math.nan, math.nan, len(w)
    if np.allclose(w.to_numpy(), w.to_numpy()[:, :1]):
        return math.nan, math.nan, len(w)
    r = friedmanchisquare(*[w[c].to_numpy() for c in cols])
    return float(r.statistic), float(r.pvalue), len(w)


def effect_vs_headroom(df: pd.DataFrame, metric: str, policy: str, base: str = "random", oracle: str = "group_oracle") -> float:
    """``(mean(policy) - mean(base)) / (mean(oracle) - mean(base))`` over the seeds all three
    have: 0 = as good as ``base``, 1 = as good as ``oracle``; NaN if the headroom is 0."""
    w = _pivot(df, metric)
    if not {policy, base, oracle} <= set(w.columns):
        return math.nan
    w = w[[policy, base, oracle]].dropna()
    head = w[oracle].mean() - w[base].mean()
    return math.nan if len(w) == 0 or head == 0 else float((w[policy].mean() - w[base].mean()) / head)


def tests_table(df: pd.DataFrame, metric: str, policies: Sequence[str], fmt: str = "{:+.3f}") -> list[str]:
    """Markdown: per policy, the paired difference to random and to the oracle (mean ± 95 % CI),
    raw and Holm-adjusted p, and the effect relative to the oracle's headroom; then the
    Friedman test over the policies (oracle excluded)."""
    refs = [r for r in ("random", "group_oracle") if r in set(df["policy"])]
    t = paired_tests(df, metric, policies, refs)
    lines = ["| policy | vs random | p (Holm) | vs group_oracle | p (Holm) | share of oracle headroom |",
             "|---|---|---|---|---|---|"]
    for pol in policies:
        if pol in ("group_oracle", "random"):
            continue
        cells = []
        for ref in ("random", "group_oracle"):
            row = t[(t["policy"] == pol) & (t["ref"] == ref)]
            if row.empty:
                cells += ["-", "-"]
                continue
            r = row.iloc[0]
            ci = "" if not math.isfinite(r["ci"]) else " ± " + fmt.format(r["ci"]).lstrip("+")
            cells.append(fmt.format(r["mean_diff"]) + ci)
            cells.append(f"{r['p']:.3g} ({r['p_holm']:.3g})" if math.isfinite(r["p"]) else "-")
        eff = effect_vs_headroom(df, metric, pol)
        lines.append(f"| {pol} | " + " | ".join(cells) + f" | {'-' if not math.isfinite(eff) else f'{eff:.2f}'} |")
    h = t[(t["policy"] == "group_oracle") & (t["ref"] == "random")]
    if len(h):
        r = h.iloc[0]
        lines += ["", f"Headroom, group_oracle - random: {fmt.format(r['mean_diff'])}"
                  + ("" if not math.isfinite(r["ci"]) else " ± " + fmt.format(r["ci"]).lstrip("+"))
                  + (f", p = {r['p']:.3g} (Holm {r['p_holm']:.3g})" if math.isfinite(r["p"]) else "") + "."]
    stat, p, n = friedman(df, metric, [q for q in policies if q != "group_oracle"])
    lines += ["", f"Friedman test over the {len([q for q in policies if q != 'group_oracle'])} policies "
              f"(oracle excluded), {n} seeds: " + ("-" if not math.isfinite(p) else f"chi2 = {stat:.2f}, p = {p:.3g}") + "."]
    return lines
