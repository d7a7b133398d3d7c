"""The sweep index ``sweep.parquet``: headline metrics of each run directory and the index table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.sweep.spec import _value_json

if TYPE_CHECKING:
    import pandas as pd

    from fedsim.sweep.plan import RunTask

__all__ = [
    "METRICS",
    "INDEX_FILE",
    "META_FILE",
    "headline_metrics",
]

#: Headline metrics in ``sweep.parquet`` (see :func:`headline_metrics`).
METRICS: tuple[str, ...] = (
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "sim_s_to_target",
    "sim_s_total",
    "stragglers",
    "dropouts",
    "ooms",
    "bytes_total",
)

#: The index file of a sweep directory.
INDEX_FILE = "sweep.parquet"
#: Sweep metadata (grid keys, seeds, scenario, overrides) beside the index.
META_FILE = "sweep.json"



def _manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _manifest_status(run_dir: Path) -> str | None:
    m = _manifest(run_dir)
    return None if m is None else str(m.get("status"))


def headline_metrics(run_dir: str | Path, target_accuracy: float | None = None) -> dict[str, float]:
    """Headline metrics of a run directory, from its ``rounds.parquet``.

    - ``final_accuracy``: accuracy of the last evaluated round; ``best_accuracy``: the maximum.
    - ``rounds_to_target``: rounds run until the first evaluated round with
      accuracy >= ``target_accuracy`` (``round + 1``); ``sim_s_to_target``:
      simulated seconds at the end of that round. NaN if never reached or
      no target.
    - ``sim_s_total``: simulated seconds at the end of the last round
      (manifest ``sim_end_s`` if there are no rounds).
    - ``stragglers``, ``dropouts``, ``ooms``: totals over rounds;
      ``bytes_total``: ``bytes_up + bytes_down`` summed over rounds.

    Missing tables or columns give NaN, never an error.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    out = dict.fromkeys(METRICS, math.nan)
    try:
        r = pd.read_parquet(run_dir / "rounds.parquet")
    except Exception:  # noqa: BLE001 - a run without rounds has NaN metrics
        r = pd.DataFrame()
    if "round" in r.columns:
        r = r.sort_values("round", kind="stable")
    if "accuracy" in r.columns:
        acc = pd.to_numeric(r["accuracy"], errors="coerce").astype(float)
        ev = r[acc.notna() & (acc.abs() != math.inf)]
        evacc = acc[ev.index]
        if len(ev):
            out["final_accuracy"] = float(evacc.iloc[-1])
            out["best_accuracy"] = float(evacc.max())
            if target_accuracy is not None:
                hit = ev[evacc >= target_accuracy]
                if len(hit):
                    first = hit.iloc[0]
                    out["rounds_to_target"] = (
                        float(int(first["round"]) + 1) if "round" in hit.columns else math.nan
                    )
                    out["sim_s_to_target"] = (
                        float(first["t_end_s"]) if "t_end_s" in hit.columns else math.nan
                    )
    for col in ("stragglers", "dropouts", "ooms"):
        if col in r.columns:
            out[col] = float(r[col].sum())
    if "bytes_up" in r.columns or "bytes_down" in r.columns:
        out["bytes_total"] = float(
            sum(r[c].sum() for c in ("bytes_up", "bytes_down") if c in r.columns)
        )
    if "t_end_s" in r.columns and len(r):
        out["sim_s_total"] = float(r["t_end_s"].max())
    else:
        m = _manifest(run_dir) or {}
        if m.get("sim_end_s") is not None:
            out["sim_s_total"] = float(m["sim_end_s"])
    return out


def _grid_column(values: list[Any]) -> list[Any]:
    """Grid values as a Parquet-friendly column: numbers / bools / strings as is, else canonical JSON text."""
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int | float):
            kinds.add("num")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("other")
    if len(kinds) == 1 and "other" not in kinds:
        return values
    return [v if isinstance(v, str) else _value_json(v) for v in values]


def _build_index(
    tasks: list[RunTask], rows: dict[int, dict[str, Any]], grid_keys: list[str]
) -> pd.DataFrame:
    import pandas as pd

    records = []
    for t in tasks:
        rec: dict[str, Any] = {"run_dir": t.name, "seed": t.seed}
        rec.update(dict(t.cell))
        base = {
            "status": "pending",
            "error": None,
            "wall_s": math.nan,
            **dict.fromkeys(METRICS, math.nan),
        }
        base.update(rows.get(t.index, {}))
        rec.update(base)
        records.append(rec)
    df = pd.DataFrame.from_records(
        records, columns=["run_dir", "seed", *grid_keys, "status", "error", "wall_s", *METRICS]
    )
    for k in grid_keys:
        df[k] = pd.Series(
            _grid_column(df[k].tolist()), dtype=object if df[k].dtype == object else df[k].dtype
        )
    df["seed"] = df["seed"].astype("int64")
    df["error"] = df["error"].astype(object)
    for m in ("wall_s", *METRICS):
        df[m] = df[m].astype(float)
    return df
