"""Key/value summary of one run, for the ``fedsim info`` terminal table."""

from __future__ import annotations

import math

from analysis.alignment_measures import alignment_rows
from analysis.compare import run_summary
from analysis.plots import RunLike
from analysis.rundir import as_rundir

__all__ = ["summary_table", "format_bytes", "format_seconds"]


def format_bytes(n: float) -> str:
    """Human-readable byte count with SI prefixes (``1.5 GB``)."""
    if n is None or not math.isfinite(n):
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} PB"  # pragma: no cover


def format_seconds(s: float) -> str:
    """Seconds with a readable larger unit in brackets (``5400 s (1.50 h)``)."""
    if s is None or not math.isfinite(s):
        return "—"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s:,.0f} s ({s / 60:.1f} min)"
    if s < 2 * 86400:
        return f"{s:,.0f} s ({s / 3600:.2f} h)"
    return f"{s:,.0f} s ({s / 86400:.2f} days)"


def _acc(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.4f}"


def summary_table(run_dir: RunLike) -> list[tuple[str, str]]:
    """Ordered ``(key, value)`` string pairs describing a run.

    Keys: scenario, run dir, status, protocol, policy, seed, rounds, final
    accuracy, best accuracy, simulated time, bytes moved (up + down),
    stragglers, dropouts, OOMs, (fedmoe) the alignment measures of
    :func:`analysis.alignment_measures.alignment_rows`, wall time, fedsim
    version, git revision.
    Works with only ``manifest.json`` and ``rounds.parquet`` present.
    """
    run = as_rundir(run_dir)
    s = run_summary(run)
    man = run.manifest
    r = run.rounds
    up = float(r["bytes_up"].sum()) if "bytes_up" in r.columns else math.nan
    down = float(r["bytes_down"].sum()) if "bytes_down" in r.columns else math.nan
    planned = (run.scenario.get("run") or {}).get("rounds")
    rounds = f"{s['rounds']}" + (f" / {planned}" if planned not in (None, s["rounds"]) else "")

    def _int(v: float) -> str:
        return "—" if not math.isfinite(v) else f"{int(v):,}"

    return [
        ("scenario", s["name"]),
        ("run dir", str(run.path)),
        ("status", s["status"]),
        ("protocol", s["protocol"]),
        ("policy", s["policy"]),
        ("seed", "—" if s["seed"] is None else str(s["seed"])),
        ("rounds", rounds),
        ("final accuracy", _acc(s["final_accuracy"])),
        ("best accuracy", _acc(s["best_accuracy"])),
        ("simulated time", format_seconds(s["sim_s_total"])),
        (
            "bytes moved",
            f"{format_bytes(up + down)} (up {format_bytes(up)}, down {format_bytes(down)})",
        ),
        ("stragglers", _int(s["stragglers"])),
        ("dropouts", _int(s["dropouts"])),
        ("OOMs", _int(s["ooms"])),
        *alignment_rows(run),  # fedmoe: the paper's alignment measures
        ("wall time", format_seconds(s["wall_s"])),
        ("fedsim version", str(man.get("fedsim_version", "?"))),
        ("git revision", str(man.get("git_revision") or "?")),
    ]
