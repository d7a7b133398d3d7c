"""The sweep index ``sweep.parquet``: headline metrics of each run directory and the index table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.engine.headline import HEADLINE_METRICS, headline_metrics
from fedsim.sweep.spec import value_json

if TYPE_CHECKING:
    import pandas as pd

    from fedsim.sweep.plan import RunTask

__all__ = [
    "METRICS",
    "INDEX_FILE",
    "META_FILE",
    "run_dir_headline",
    "read_manifest",
    "manifest_status",
    "build_index",
]

#: Headline metrics in ``sweep.parquet`` (defined once, in :mod:`fedsim.engine.headline`).
METRICS: tuple[str, ...] = HEADLINE_METRICS

#: The index file of a sweep directory.
INDEX_FILE = "sweep.parquet"
#: Sweep metadata (grid keys, seeds, scenario, overrides) beside the index.
META_FILE = "sweep.json"



def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of ``run_dir`` as a dict; None if missing, unreadable or not an object."""
    try:
        m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def manifest_status(run_dir: Path) -> str | None:
    """The ``status`` of ``run_dir``'s manifest; None without a readable manifest."""
    m = read_manifest(run_dir)
    return None if m is None else str(m.get("status"))


def run_dir_headline(run_dir: str | Path, target_accuracy: float | None = None) -> dict[str, float]:
    """Headline metrics of a run directory (:func:`fedsim.engine.headline.headline_metrics`
    on its ``rounds.parquet``). A run without a readable rounds table has NaN metrics,
    never an error."""
    import pandas as pd

    run_dir = Path(run_dir)
    try:
        r = pd.read_parquet(run_dir / "rounds.parquet")
    except Exception:  # noqa: BLE001 - a run without rounds has NaN metrics
        r = pd.DataFrame()
    m = read_manifest(run_dir) or {}
    return headline_metrics(r, target_accuracy, m.get("sim_end_s"))


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
    return [v if isinstance(v, str) else value_json(v) for v in values]


def build_index(
    tasks: list[RunTask], rows: dict[int, dict[str, Any]], grid_keys: list[str]
) -> pd.DataFrame:
    """The sweep index: one row per task (run directory, seed, grid values, headline metrics from ``rows`` by task index)."""
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
