"""Flat record tables, turned into DataFrames once at the end of a run.

The Recorder keeps named tables (``events``, ``rounds``, ``clients``,
``links``, ``assignments``, ...). Each row is a plain dict appended in
simulation order; columns are the union of keys in order of first
appearance, so the same sequence of rows always gives the same frame
(byte-identical Parquet for the same seed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from fedsim.engine.tables import TABLES

__all__ = ["Recorder", "EVENT_COLUMNS"]

#: Fixed leading columns of the ``events`` table (declared, with units, in
#: :mod:`fedsim.engine.tables`).
EVENT_COLUMNS = tuple(c.name for c in TABLES["events"].columns if c.required)


class Recorder:
    """Append-only store of flat rows, by table name."""

    def __init__(self) -> None:
        self._tables: dict[str, list[dict[str, Any]]] = {}

    def row(self, table: str, **fields: Any) -> None:
        """Append one row to ``table``."""
        self._tables.setdefault(table, []).append(fields)

    def event(
        self,
        t_s: float,
        kind: str,
        node: str | None = None,
        round: int = -1,
        bytes: float = 0.0,
        seconds: float = 0.0,
        **extra: Any,
    ) -> None:
        """Append one row to the ``events`` table (units: seconds, bytes)."""
        self._tables.setdefault("events", []).append(
            {
                "t_s": float(t_s),
                "round": int(round),
                "node": node,
                "kind": kind,
                "bytes": float(bytes),
                "seconds": float(seconds),
                **extra,
            }
        )

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The raw rows of ``table`` (empty list if none)."""
        return self._tables.get(table, [])

    def tables(self) -> Iterable[str]:
        """Names of the tables that have rows."""
        return list(self._tables)

    def frame(self, table: str) -> pd.DataFrame:
        """``table`` as a DataFrame (columns in order of first appearance)."""
        rows = self._tables.get(table, [])
        if not rows:
            cols = list(EVENT_COLUMNS) if table == "events" else []
            return pd.DataFrame(columns=cols)
        columns: dict[str, None] = {}
        for r in rows:
            for k in r:
                columns.setdefault(k, None)
        return pd.DataFrame.from_records(rows, columns=list(columns))

    def frames(self) -> dict[str, pd.DataFrame]:
        """All tables as DataFrames."""
        return {name: self.frame(name) for name in self._tables}
