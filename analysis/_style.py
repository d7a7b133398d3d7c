"""Shared figure helpers: style, palette, time units, saving.

No pyplot: figures are plain :class:`matplotlib.figure.Figure` objects rendered
with the Agg canvas, so nothing here touches global pyplot state or needs a
display. Nothing happens at import time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from analysis.rundir import RunDir

log = logging.getLogger("analysis")

#: Okabe-Ito colour-blind-safe palette.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # green
    "#D55E00",  # vermillion
    "#CC79A7",  # purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

STATUS_COLOURS: dict[str, str] = {
    "completed": "#009E73",
    "straggler": "#E69F00",
    "dropout": "#D55E00",
    "oom": "#CC79A7",
    "skipped": "#999999",
}

RC: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 14,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "axes.prop_cycle": None,  # filled in by style()
}

DPI = 130
FORMATS: tuple[str, ...] = ("png", "svg")


@contextmanager
def style() -> Iterator[None]:
    """Context in which figures are built and saved with the package style."""
    import matplotlib
    from cycler import cycler

    rc = dict(RC)
    rc["axes.prop_cycle"] = cycler(color=list(OKABE_ITO))
    with matplotlib.rc_context(rc):
        yield


def new_figure(width: float = 8.0, height: float = 4.8) -> Any:
    """A new Agg-backed :class:`~matplotlib.figure.Figure` (size in inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, out_dir: str | Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save ``fig`` as ``out_dir/stem.<fmt>`` for each format; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        fig.savefig(p, dpi=DPI, format=fmt)
        paths.append(p)
    return paths


def colours(n: int) -> list[Any]:
    """``n`` distinguishable colours: Okabe-Ito up to 8, then a perceptual colormap."""
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    from matplotlib import colormaps

    cmap = colormaps["viridis"] if n > 20 else colormaps["tab20"]
    if n > 20:
        return [cmap(x) for x in np.linspace(0.0, 0.95, n)]
    return [cmap(i) for i in range(n)]


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and unit name that make ``max_seconds`` read naturally.

    Returns:
        ``(divisor, unit)``: plot ``seconds / divisor`` with axis label ``[unit]``.
    """
    m = float(max_seconds) if np.isfinite(max_seconds) else 0.0
    if m < 180:
        return 1.0, "s"
    if m < 3 * 3600:
        return 60.0, "min"
    if m < 3 * 86400:
        return 3600.0, "h"
    return 86400.0, "days"


def ecdf(values: Any, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF ``(x, F(x))`` of finite ``values``, thinned to ``max_points``."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return v, v
    p = np.arange(1, n + 1) / n
    if n > max_points:
        idx = np.unique(np.linspace(0, n - 1, max_points).astype(int))
        v, p = v[idx], p[idx]
    return v, p


def unique_labels(labels: Sequence[str], extras: Sequence[str]) -> list[str]:
    """Make duplicate labels unique by appending the matching ``extras`` item."""
    out = list(labels)
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            out[i] = f"{lab} [{extras[i]}]"
    return out


def natural_key(v: object) -> list:
    """Sort key that orders ``c9`` before ``c10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(v))]


def skip(run: RunDir, what: str, why: str) -> list[Path]:
    """Log why figure ``what`` is skipped for ``run``; return no paths."""
    log.info("skipping %s for %s: %s", what, run.path, why)
    return []


def need(run: RunDir, what: str, *tables: str) -> bool:
    """Whether ``run`` has every table in ``tables`` (logs the skip when not)."""
    missing = [t for t in tables if not run.has(t)]
    if missing:
        skip(run, what, "missing " + ", ".join(f"{t}.parquet" for t in missing))
        return False
    return True


def never_online(run: RunDir) -> list[str]:
    """Clients offline for the whole run (``manifest.json`` ``clients.offline_whole_run_ids``), natural order."""
    ids = ((run.manifest.get("clients") or {}).get("offline_whole_run_ids")) or []
    return sorted((str(c) for c in ids), key=natural_key)


def run_labels(runs: Sequence[RunDir]) -> list[str]:
    """Legend labels of ``runs``, made unique by the seed where needed."""
    return unique_labels([r.label for r in runs], [f"seed {r.seed}" for r in runs])
