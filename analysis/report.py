"""One self-contained HTML report per run directory or sweep directory.

:func:`write_report` writes ``report.html`` into the directory: inline CSS,
every figure embedded as a ``data:image/png;base64`` URI, no script and no
external resource, so the file opens offline and can be mailed around.

- Run report: headline numbers, the run summary table
  (:func:`analysis.info.summary_table`) and every figure of
  ``RUN_DIR/figures`` (drawn first when absent), each with a one-sentence
  caption saying how to read it.
- Sweep report: the sweep's size and grid, the per-cell table (mean and 95 %
  Student-t CI half-width per metric, :func:`analysis.sweep.compare_sweep`),
  the per-cell figures (trade-off, accuracy vs time and vs bytes with seed
  bands, straggler share) and the metric-vs-parameter plots (``SWEEP_DIR/report/``).
"""

from __future__ import annotations

import base64
import html
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["write_report", "caption_for", "CAPTIONS"]

#: One sentence per figure stem: how to read it.
CAPTIONS: dict[str, str] = {
    "staleness_hist": "Share of the folded updates by staleness (aggregations between a client's "
    "download and the fold), per expert in that expert's own versions and for the backbone and "
    "gate; sync is a single bar at 0, mass far right means stale updates and small steps.",
    "accuracy_vs_round": "Test accuracy after each evaluated round: where the curve flattens, "
    "more rounds buy little.",
    "accuracy_vs_time": "The same accuracy against simulated time, so slow rounds stretch the "
    "curve to the right.",
    "coverage": "Left, the best downlink SINR anywhere (dB); middle, the uplink rate one device "
    "would get alone in its cell (grey: outage); right, each client joined to the cell that "
    "served it, the line's colour its realised uplink rate, rings and crosses the clients that "
    "straggled or dropped out.",
    "round_breakdown": "Each bar splits a round's mean per-client time into download, compute, "
    "upload, waiting and server time, and the black dot is the round's duration: the tallest "
    "colour is the bottleneck.",
    "latency_cdf": "The fraction of clients (y) that finished their round within a latency (x); "
    "the dashed curve and the ticks on the axis are the stragglers.",
    "client_timeline": "One row per client and one bar per round it was selected, coloured by "
    "outcome: rows with orange or red bars are the clients that failed repeatedly; hatched rows "
    "are clients that were never online.",
    "link_utilisation": "One panel per base station: the uplink and downlink throughput it carried "
    "over the run (solid) against the link's mean capacity (dashed); long stretches near the dashed "
    "line mean that cell was the bottleneck, and cells that carried nothing are listed underneath.",
    "topology": "Where every node sits: clients coloured by device class, base stations, edge "
    "servers and the cloud, with wired links drawn thicker the more bytes they carried.",
    "assignment_heatmap": "How many rounds each client (row) trained each expert (column): an "
    "even colour means the alignment spread the experts evenly; hatched rows are clients that were "
    "never online, empty through availability rather than the policy.",
    "expert_load": "Clients assigned to each expert per round (top, stacked) and the server's "
    "usage score (bottom): a band that keeps widening is an expert taking more than its share.",
    "request_latency": "Left, the fraction of inference requests answered within a latency, "
    "split by local and remote expert; right, where the mean latency goes.",
    "gating_heatmap": "Requests from each origin client (row) routed to each expert (column, "
    "named by the client holding it): a bright diagonal means mostly local routing.",
    "accuracy_vs_time_by_cell": "Accuracy against simulated time per grid cell: the mean over seeds "
    "and a band from the lowest to the highest seed; a cell whose curve rises further left reaches "
    "an accuracy sooner, and a wide band means the seeds disagree.",
    "accuracy_vs_bytes_by_cell": "The same per cell against the bytes moved (up + down): the curve "
    "further left buys its accuracy with less traffic on the network.",
    "tradeoff": "Each numbered point is a grid cell: final accuracy against the simulated time to the "
    "target (left) and the bytes moved (right), with 95 % confidence bars over seeds; up and to the "
    "left is better, and overlapping bars mean these seeds do not separate the cells.",
    "straggler_share": "Share of selected client-rounds that straggled, per cell (95 % CI over seeds): "
    "over-selection alone gives 1 - 1/over_selection; more means clients miss the deadline.",
}

#: Sweep figures, in the order the sweep report shows them (then the metric-vs-parameter plots).
SWEEP_FIGURES: tuple[str, ...] = ("tradeoff", "accuracy_vs_time_by_cell", "accuracy_vs_bytes_by_cell",
                                  "straggler_share")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#fafafa;color:#1a1a1a;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.25em;margin:34px 0 10px;
border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0 8px}
.card{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:10px 16px;min-width:150px}
.card .k{font-size:.8em;color:#666;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:1.45em;font-weight:600}
table{border-collapse:collapse;background:#fff;font-size:.92em}
td,th{border:1px solid #e0e0e0;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cols{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
nav ol{margin:4px 0;padding-left:22px} nav li{margin:2px 0}
figure{margin:18px 0 26px;background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:12px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{margin-top:8px;color:#333} figcaption b{color:#000}
.note{color:#666;font-size:.9em}
.wide{overflow-x:auto}
"""


def caption_for(stem: str) -> str:
    """The one-sentence reading guide of figure ``stem`` (``round_N`` and sweep plots too)."""
    if stem in CAPTIONS:
        return CAPTIONS[stem]
    m = re.fullmatch(r"round_(\d+)", stem)
    if m:
        return (f"Round {m.group(1)} as it happened: each selected client's download, compute "
                "and upload with the cell it used, and below the flows sharing each cell, so a "
                "long upload beside a crowded cell is congestion and beside a quiet one a poor "
                "channel.")
    m = re.fullmatch(r"(.+)_vs_(.+)", stem)
    if m:
        metric, param = m.group(1).replace("_", " "), m.group(2).replace("_", " ")
        return (f"Mean {metric} for each value of {param} (one line per policy when the policy "
                "is swept) with 95 % confidence bars over seeds: overlapping bars mean these "
                "seeds do not resolve the difference.")
    return f"Figure {stem.replace('_', ' ')}."


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _figure(path: Path, title: str | None = None) -> str:
    stem = path.stem
    name = title or stem.replace("_", " ")
    return (f'<figure id="fig-{html.escape(stem)}"><img src="{_img(path)}" '
            f'alt="{html.escape(name)}"><figcaption><b>{html.escape(name.capitalize())}.</b> '
            f"{html.escape(caption_for(stem))}</figcaption></figure>")


def _order(stems: list[str]) -> list[str]:
    pref = ["accuracy_vs_round", "accuracy_vs_time", "coverage", "round_breakdown",
            "latency_cdf", "client_timeline", "link_utilisation", "topology",
            "assignment_heatmap", "expert_load", "request_latency", "gating_heatmap"]

    def key(s: str) -> tuple[int, int, str]:
        if s in pref:
            return (pref.index(s), 0, s)
        m = re.fullmatch(r"round_(\d+)", s)
        return (len(pref), int(m.group(1)) if m else 0, s)

    return sorted(stems, key=key)


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _page(title: str, body: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
            f'{body}<p class="note">Written by fedsim on {stamp}; self-contained: figures are '
            f"embedded, nothing is fetched.</p></main></body></html>")


def _cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{html.escape(k)}</div>'
        f'<div class="v">{html.escape(v)}</div></div>' for k, v in items) + "</div>"


def _run_report(run_dir: Path, draw: bool) -> str:
    from analysis.compare import run_summary
    from analysis.info import format_bytes, format_seconds, summary_table
    from analysis.plots import plot_run
    from analysis.rundir import RunDir

    run = RunDir(run_dir)
    figs = run.figures_dir
    if draw and not any(figs.glob("*.png")):
        plot_run(run)
    pngs = {p.stem: p for p in figs.glob("*.png")} if figs.is_dir() else {}
    s = run_summary(run)
    acc = s["final_accuracy"]
    cards = [
        ("final accuracy", "—" if not math.isfinite(acc) else f"{acc:.3f}"),
        ("rounds", f"{s['rounds']:,}"),
        ("simulated time", format_seconds(s["sim_s_total"]).split(" (")[0]),
        ("stragglers / dropouts", f"{_int(s['stragglers'])} / {_int(s['dropouts'])}"),
        ("bytes moved", format_bytes(s["bytes_total"])),
        ("status", s["status"]),
    ]
    head = (f"<h1>Run report: {html.escape(run.name)}</h1>"
            f'<p class="sub">protocol {html.escape(run.protocol)} · policy '
            f"{html.escape(run.policy)} · seed {run.seed} · {html.escape(str(run.path))}</p>"
            + _cards(cards) + _story(run.rounds))
    note = run.incomplete_note()
    if note is not None:  # a killed run: its tables end at its last checkpoint
        head += f'<p class="note"><b>{html.escape(note)}</b></p>'
    order = _order(list(pngs))
    toc = "".join(f'<li><a href="#fig-{html.escape(x)}">{html.escape(x.replace("_", " "))}'
                  f"</a></li>" for x in order)
    nav = (f'<nav><h2 style="margin-top:0">Figures</h2><ol>{toc}</ol></nav>' if order
           else '<p class="note">No figures in this run directory (run with figures, or '
           "<code>fedsim plot RUN_DIR</code>).</p>")
    summary = (f'<div class="cols"><div><h2 style="margin-top:0">Summary</h2>'
               f"{_kv_table(summary_table(run))}</div><div>{nav}</div></div>")
    body = "".join(_figure(pngs[x]) for x in order)
    return _page(f"fedsim run report: {run.name}", head + summary + body)


def _story(r: pd.DataFrame) -> str:
    """Two sentences on what happened: accuracy's course, failures, the slowest phase."""
    if r.empty:
        return '<p class="note">No round finished.</p>'
    out = []
    acc = r["accuracy"].dropna() if "accuracy" in r.columns else pd.Series(dtype=float)
    if len(acc) >= 2:
        out.append(f"Accuracy went from {acc.iloc[0]:.3f} (round {int(r.loc[acc.index[0], 'round'])})"
                   f" to {acc.iloc[-1]:.3f} (round {int(r.loc[acc.index[-1], 'round'])}).")
    if {"selected", "stragglers", "dropouts"} <= set(r.columns) and r["selected"].sum() > 0:
        sel = float(r["selected"].sum())
        out.append(f"Of {int(sel):,} client-rounds, {int(r['stragglers'].sum()):,} straggled "
                   f"({100 * r['stragglers'].sum() / sel:.0f} %) and {int(r['dropouts'].sum()):,} "
                   f"dropped out ({100 * r['dropouts'].sum() / sel:.0f} %).")
    phases = [(c, n) for c, n in (("t_download_s", "download"), ("t_compute_s", "compute"),
                                  ("t_upload_s", "upload")) if c in r.columns]
    if phases:
        means = {n: float(r[c].mean()) for c, n in phases}
        top = max(means, key=lambda k: means[k])
        if math.isfinite(means[top]) and means[top] > 0:
            out.append(f"The longest client phase was the {top} "
                       f"({means[top]:.3g} s per completed client on average).")
    return f"<p>{html.escape(' '.join(out))}</p>" if out else ""


def _int(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{int(v):,}"


def _fmt_cell(v: Any) -> tuple[str, bool]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—", True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
        return (f"{int(f):,}" if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"), True
    return str(v), False


#: sweep metric -> (column header, divisor)
_METRIC_HEAD: dict[str, tuple[str, float]] = {
    "final_accuracy": ("final accuracy", 1.0),
    "best_accuracy": ("best accuracy", 1.0),
    "rounds_to_target": ("rounds to target", 1.0),
    "sim_s_to_target": ("sim. time to target [s]", 1.0),
    "sim_s_total": ("sim. time [s]", 1.0),
    "stragglers": ("stragglers", 1.0),
    "dropouts": ("dropouts", 1.0),
    "ooms": ("OOMs", 1.0),
    "bytes_total": ("bytes moved [MB]", 1e6),
}


def _g(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.3g}"


def _cells_table(cells: pd.DataFrame, keys: list[str], metrics: list[str]) -> str:
    heads = [(k.rsplit(".", 1)[-1], k) for k in keys] + [("runs", "completed runs"),
                                                         ("failed", "failed runs")]
    heads += [(_METRIC_HEAD.get(m, (m.replace("_", " "), 1.0))[0], f"{m}: mean ± 95 % CI")
              for m in metrics]
    rows = []
    for r in cells.to_dict("records"):
        tds = []
        for k in [*keys, "runs", "failed"]:
            txt, num = _fmt_cell(r.get(k))
            tds.append(f'<td class="{"num" if num else ""}">{html.escape(txt)}</td>')
        for m in metrics:
            div = _METRIC_HEAD.get(m, ("", 1.0))[1]
            mean, ci = r.get(f"{m}_mean"), r.get(f"{m}_ci95")
            if mean is None or not math.isfinite(float(mean)):
                txt = "—"
            else:
                txt = _g(float(mean) / div)
                if ci is not None and math.isfinite(float(ci)):
                    txt += f" ± {_g(float(ci) / div)}"
            tds.append(f'<td class="num">{html.escape(txt)}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    ths = "".join(f'<th title="{html.escape(t)}">{html.escape(h)}</th>' for h, t in heads)
    return f'<div class="wide"><table><tr>{ths}</tr>{"".join(rows)}</table></div>'


def _best_cell(cells: pd.DataFrame, keys: list[str]) -> str:
    """One sentence on the best mean final accuracy and whether the CIs resolve it."""
    if "final_accuracy_mean" not in cells.columns or not cells["final_accuracy_mean"].notna().any():
        return ""
    i = cells["final_accuracy_mean"].idxmax()
    b = cells.loc[i]
    label = ", ".join(f"{k.rsplit('.', 1)[-1]} = {b[k]}" for k in keys) or "the only cell"
    ci = cells.get("final_accuracy_ci95", pd.Series(math.nan, index=cells.index)).fillna(0.0)
    txt = f"{b['final_accuracy_mean']:.3f}"
    if ci[i] > 0:
        txt += f" ± {ci[i]:.3f}"
    lo = b["final_accuracy_mean"] - ci[i]
    others = cells.drop(index=i)
    overlap = int(((others["final_accuracy_mean"] + ci.drop(index=i)) >= lo).sum())
    verdict = (f"its 95 % CI overlaps those of {overlap} other cell(s), so these seeds do not "
               "separate them" if overlap else "its 95 % CI is clear of every other cell's")
    return (f"<p><b>Best mean final accuracy:</b> {html.escape(txt)} at "
            f"{html.escape(label)}; {html.escape(verdict)}.</p>")


def _sweep_report(sweep_dir: Path) -> str:
    from analysis.sweep import DEFAULT_METRICS, compare_sweep, read_sweep

    df, keys = read_sweep(sweep_dir)
    out = sweep_dir / "report"
    cells = compare_sweep(sweep_dir, out, formats=("png",))
    metrics = [m for m in DEFAULT_METRICS if f"{m}_mean" in cells.columns]
    n_ok = int((df["status"] == "completed").sum())
    n_fail = int((df["status"] == "failed").sum())
    seeds = sorted({int(s) for s in df["seed"].dropna()}) if "seed" in df.columns else []
    grid = [(k, ", ".join(str(v) for v in df[k].drop_duplicates())) for k in keys]
    cards = [("runs", f"{len(df):,}"), ("completed / failed", f"{n_ok} / {n_fail}"),
             ("grid cells", f"{len(cells):,}"), ("seeds per cell", f"{len(seeds)}")]
    head = (f"<h1>Sweep report: {html.escape(sweep_dir.name)}</h1>"
            f'<p class="sub">{html.escape(str(sweep_dir))}</p>' + _cards(cards))
    head += _best_cell(cells, keys)
    info = _kv_table(grid + [("seeds", ", ".join(map(str, seeds)) or "—")])
    table = (f"<h2>Per-cell results</h2><p class=\"note\">Mean ± 95 % Student-t confidence "
             f"half-width over the completed seeds of each cell (n = runs); rows in grid "
             f"order.</p>{_cells_table(cells, keys, metrics)}")
    pngs = [out / f"{x}.png" for x in SWEEP_FIGURES if (out / f"{x}.png").is_file()]
    pngs += sorted(p for p in out.glob("*_vs_*.png") if p.stem not in SWEEP_FIGURES)
    figs = "".join(_figure(p) for p in pngs) if pngs else (
        '<p class="note">No metric-vs-parameter plot (no completed run or nothing swept).</p>')
    body = (head + f"<h2>Grid</h2>{info}" + table + "<h2>Figures</h2>" + figs)
    return _page(f"fedsim sweep report: {sweep_dir.name}", body)


def write_report(path: str | Path, *, draw_figures: bool = True) -> Path:
    """Write ``report.html`` into a run or sweep directory; return its path.

    Args:
        path: a run directory (``manifest.json``) or a sweep directory
            (``sweep.parquet``).
        draw_figures: draw the run's figures first when ``figures/`` has none.

    Raises:
        FileNotFoundError: ``path`` is neither a run nor a sweep directory.
    """
    from analysis.sweep import is_sweep_dir

    d = Path(path)
    if is_sweep_dir(d):
        text = _sweep_report(d)
    elif (d / "manifest.json").is_file():
        text = _run_report(d, draw_figures)
    else:
        raise FileNotFoundError(f"{d}: neither a run directory (manifest.json) nor a sweep "
                                "directory (sweep.parquet)")
    out = d / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
