"""Expert figures of a fedmoe run: client-expert assignments and expert load.

Re-exported by :mod:`analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis._style import (
    FORMATS,
    colours,
    natural_key,
    never_online,
    new_figure,
    save,
    skip,
    style,
)
from analysis.rundir import RunDir, as_rundir

if TYPE_CHECKING:
    from matplotlib.axes import Axes

RunLike = RunDir | str | Path

__all__ = ["plot_assignment_heatmap", "plot_expert_load", "binned_heatmap"]


# ---------------------------------------------------------------------------
# experts


def _assignment_pairs(run: RunDir) -> pd.DataFrame | None:
    """(round, client, expert) from assignments.parquet, else from clients.experts."""
    if run.has("assignments"):
        a = run.assignments
        if not a.empty:
            return a[["round", "client", "expert"]]
    if run.protocol != "nmoe" and run.has("clients") and "experts" in run.clients.columns:
        c = run.clients[["round", "client", "experts"]].copy()
        c["expert"] = c["experts"].fillna("").astype(str).str.split(",")
        c = c.explode("expert")
        c = c[c["expert"].str.strip() != ""]
        if c.empty:
            return None
        c["expert"] = pd.to_numeric(c["expert"], errors="coerce")
        c = c.dropna(subset=["expert"])
        c["expert"] = c["expert"].astype(int)
        return c[["round", "client", "expert"]]
    return None


def binned_heatmap(mat: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, int, int]:
    """Sum-pool ``mat`` into at most ``max_rows`` x ``max_cols`` cells; return pool sizes."""
    r = max(1, int(np.ceil(mat.shape[0] / max_rows)))
    c = max(1, int(np.ceil(mat.shape[1] / max_cols)))
    if r == 1 and c == 1:
        return mat, 1, 1
    pr = (-mat.shape[0]) % r
    pc = (-mat.shape[1]) % c
    m = np.pad(mat, ((0, pr), (0, pc)))
    m = m.reshape(m.shape[0] // r, r, m.shape[1] // c, c).sum(axis=(1, 3))
    return m, r, c


def plot_assignment_heatmap(
    run: RunLike,
    out_dir: str | Path,
    *,
    max_rows: int = 80,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Heatmap of the number of rounds each client was assigned each expert.

    Rows are clients (pooled into groups, mean per client, beyond ``max_rows``),
    columns are experts. Reads ``assignments.parquet``, or falls back on the
    ``experts`` column of ``clients.parquet``. Clients offline for the whole run
    (``manifest.json``) are hatched and labelled ``(never online)``: their empty
    rows are availability, not the policy.
    """
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    run = as_rundir(run)
    pairs = _assignment_pairs(run)
    if pairs is None or pairs.empty:
        return skip(run, "assignment heatmap", "no assignments recorded")
    piv = pairs.groupby(["client", "expert"]).size().unstack(fill_value=0)
    piv = piv.reindex(columns=range(int(piv.columns.max()) + 1), fill_value=0)
    ids = set(piv.index.astype(str))
    if run.has("nodes"):  # clients never assigned anything get an empty row
        nd = run.nodes
        ids |= set(nd.loc[nd["kind"] == "client", "node"].astype(str))
    piv.index = piv.index.astype(str)
    piv = piv.reindex(sorted(ids, key=natural_key), fill_value=0)
    off = set(never_online(run))
    mat = piv.to_numpy(float)
    m, r, _ = binned_heatmap(mat, max_rows, 10**9)
    if r > 1:
        counts = np.bincount(np.arange(mat.shape[0]) // r).astype(float)
        m = m / counts[:, None]
    n_rows, n_exp = m.shape
    with style():
        fig = new_figure(
            max(6.0, min(14.0, 3.5 + 0.35 * n_exp)), max(4.0, min(14.0, 1.8 + 0.16 * n_rows))
        )
        ax = fig.add_subplot()
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("Rounds assigned" + (" (mean per client)" if r > 1 else ""))
        if r == 1:
            cb.locator = MaxNLocator(integer=True)
            cb.update_ticks()
        ax.set_xlabel("Expert")
        if n_exp <= 40:
            ax.set_xticks(range(n_exp))
        if r == 1:
            ax.set_ylabel("Client")
            if n_rows <= 60:
                ax.set_yticks(range(n_rows))
                ax.set_yticklabels([f"{c} (never online)" if c in off else str(c) for c in piv.index],
                                   fontsize=8 if n_rows > 30 else 9)
                for i, c in enumerate(piv.index):
                    if c in off:  # an empty row that is not the policy's doing
                        ax.add_patch(Rectangle((-0.5, i - 0.5), n_exp, 1.0, facecolor="white", alpha=0.85,
                                               hatch="///", edgecolor="0.6", linewidth=0))
                        ax.get_yticklabels()[i].set_color("0.45")
        else:
            ax.set_ylabel(f"Clients ({r} per row, in id order)")
            _label_class_blocks(ax, run, list(piv.index), r, n_exp)
        n_off = sum(1 for c in piv.index if c in off)
        ax.set_title(f"Client-expert assignments\n{run.label}"
                     + (f"\n{n_off:,} of {n_rows * r:,} clients never online (hatched rows)" if n_off and r == 1
                        else f"\n{n_off:,} clients never online (in the pooled rows)" if n_off else ""), fontsize=11)
        return save(fig, out_dir, "assignment_heatmap", formats)


def _label_class_blocks(ax: Axes, run: RunDir, clients: list[str], r: int, n_exp: int) -> None:
    """Label the row blocks of a binned client heatmap by device class, with separators."""
    if not run.has("nodes"):
        return
    nd = run.nodes
    cls = dict(zip(nd["node"].astype(str), nd["device_class"].astype(str)))
    row_cls = [cls.get(clients[i], "?") for i in range(0, len(clients), r)]
    starts = [i for i in range(len(row_cls)) if i == 0 or row_cls[i] != row_cls[i - 1]]
    ends = starts[1:] + [len(row_cls)]
    counts = {c: sum(1 for x in clients if cls.get(x) == c) for c in set(row_cls)}
    ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, ends)])
    ax.set_yticklabels([f"{row_cls[a]} ({counts[row_cls[a]]})" for a in starts])
    for a in starts[1:]:
        ax.axhline(a - 0.5, color="white", lw=1.2)
    ax.set_xlim(-0.5, n_exp - 0.5)


def plot_expert_load(
    run: RunLike, out_dir: str | Path, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Expert load over rounds: clients per expert (stacked area) and usage score (lines).

    Reads ``experts.parquet``; falls back on assignment counts (top panel only).
    """
    run = as_rundir(run)
    ex = run.maybe("experts")
    if ex is None or ex.empty:
        pairs = _assignment_pairs(run)
        if pairs is None or pairs.empty:
            return skip(run, "expert load", "missing experts.parquet and assignments")
        ex = pairs.groupby(["round", "expert"]).size().rename("clients").reset_index()
    load = ex.pivot_table(
        index="round", columns="expert", values="clients", aggfunc="sum", fill_value=0
    ).sort_index()
    has_usage = "usage" in ex.columns
    n_exp = load.shape[1]
    cols = colours(n_exp)
    with style():
        fig = new_figure(10.0, 6.8 if has_usage else 4.6)
        axes = fig.subplots(2 if has_usage else 1, 1, sharex=True, squeeze=False)[:, 0]
        x = load.index.to_numpy()
        axes[0].stackplot(
            x,
            *[load[c].to_numpy(float) for c in load.columns],
            colors=cols,
            labels=[f"expert {c}" for c in load.columns],
            edgecolor="white",
            linewidth=0.3,
        )
        axes[0].set_ylabel("Clients assigned")
        axes[0].set_title("Clients per expert (stacked)")
        if has_usage:
            us = ex.pivot_table(
                index="round", columns="expert", values="usage", aggfunc="mean"
            ).sort_index()
            for c, col in zip(us.columns, cols):
                axes[1].plot(us.index, us[c], color=col, lw=1.5 if n_exp <= 16 else 0.8)
            axes[1].set_ylabel("Usage score")
            axes[1].set_title("Expert usage score after each round")
        axes[-1].set_xlabel("Round")
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
        if n_exp <= 20:
            axes[0].legend(
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                ncol=1 if n_exp <= 12 else 2,
                fontsize=9,
            )
        else:  # colours come from viridis (see colours()): a colour bar names them
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import ListedColormap, Normalize

            sm = ScalarMappable(norm=Normalize(-0.5, n_exp - 0.5), cmap=ListedColormap(cols))
            cb = fig.colorbar(sm, ax=list(axes), shrink=0.8)
            cb.set_label("Expert")
        fig.suptitle(f"Expert load — {run.label}")
        return save(fig, out_dir, "expert_load", formats)
