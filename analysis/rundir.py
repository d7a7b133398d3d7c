"""Lazy, read-only access to a saved run directory.

A run directory is the only thing the analysis layer reads; of the simulator
it imports only the declaration of the tables (:mod:`fedsim.engine.tables`).
Layout (the contract written by the simulator)::

    RUN_DIR/
      manifest.json        resolved scenario, seed, versions, status, wall time
      rounds.parquet       one row per round (required)
      clients.parquet      one row per (round, selected client)
      events.parquet       flat event log
      links.parquet        periodic link utilisation samples
      nodes.parquet        topology nodes with positions (m)
      edges.parquet        topology edges with bytes carried
      assignments.parquet  (round, client, expert) pairs (fedmoe)
      experts.parquet      per-round expert load
      requests.parquet     inference requests (nmoe)
      figures/             plots written by :mod:`analysis.plots`

Every table except ``manifest.json`` and ``rounds.parquet`` may be missing;
use :meth:`RunDir.has` before :meth:`RunDir.table` or the named properties.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.engine.tables import TABLES as _DECLARED

#: Tables a run directory may hold, from the one declaration of the run
#: directory (:mod:`fedsim.engine.tables`, which imports only pandas).
TABLES: tuple[str, ...] = tuple(_DECLARED)


class RunDir:
    """A saved run directory, loaded lazily and cached per table.

    Args:
        path: the run directory. It must exist; the files inside are only
            read when first asked for.

    Raises:
        FileNotFoundError: if ``path`` is not a directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"run directory not found: {self.path}")
        self._cache: dict[str, pd.DataFrame] = {}

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- files -------------------------------------------------------------

    @property
    def figures_dir(self) -> Path:
        """``RUN_DIR/figures`` (not created here)."""
        return self.path / "figures"

    def file(self, name: str) -> Path:
        """Path of table ``name`` (``"rounds"`` -> ``RUN_DIR/rounds.parquet``)."""
        return self.path / f"{name}.parquet"

    def has(self, name: str) -> bool:
        """Whether table ``name`` exists in this run directory."""
        if name == "manifest":
            return (self.path / "manifest.json").is_file()
        return self.file(name).is_file()

    def table(self, name: str) -> pd.DataFrame:
        """Load (once) and return table ``name`` as a DataFrame.

        Raises:
            FileNotFoundError: naming the missing ``<name>.parquet`` file.
        """
        if name not in self._cache:
            f = self.file(name)
            if not f.is_file():
                if name == "rounds" and self.has("manifest") and self.incomplete:
                    raise FileNotFoundError(f"{self.path}: incomplete run with no tables yet (stopped before its first "
                                            f"checkpoint); continue it with: fedsim run --resume {self.path}")
                raise FileNotFoundError(
                    f"{f.name} not found in run directory {self.path} "
                    f"(this run did not record the '{name}' table)"
                )
            self._cache[name] = pd.read_parquet(f)
        return self._cache[name]

    def maybe(self, name: str) -> pd.DataFrame | None:
        """Table ``name`` or ``None`` when the file is absent."""
        return self.table(name) if self.has(name) else None

    # -- manifest ----------------------------------------------------------

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """Parsed ``manifest.json``.

        Raises:
            FileNotFoundError: naming ``manifest.json``.
        """
        f = self.path / "manifest.json"
        if not f.is_file():
            raise FileNotFoundError(f"manifest.json not found in run directory {self.path}")
        with f.open(encoding="utf-8") as fh:
            return json.load(fh)

    @property
    def scenario(self) -> dict[str, Any]:
        """The resolved scenario dict from the manifest (``{}`` if absent)."""
        return dict(self.manifest.get("scenario") or {})

    @property
    def name(self) -> str:
        """Run name (``scenario.run.name``), else the directory name."""
        run = self.scenario.get("run") or {}
        return str(run.get("name") or self.path.name)

    @property
    def protocol(self) -> str:
        """Protocol name (``"fedmoe"`` / ``"nmoe"``), ``"?"`` if unknown."""
        proto = self.scenario.get("protocol") or {}
        return str(proto.get("name") or "?")

    @property
    def policy(self) -> str:
        """Alignment policy name (``protocol.fedmoe.alignment.policy``; a run directory written
        before that move keeps it in a top-level ``alignment`` section); ``"-"`` when the run has
        none (nmoe: its manifest still holds the schema's default section, which nmoe never reads)."""
        if self.protocol != "fedmoe":
            return "-"
        fedmoe = (self.scenario.get("protocol") or {}).get("fedmoe") or {}
        align = fedmoe.get("alignment") or self.scenario.get("alignment") or {}
        pol = align.get("policy")
        if isinstance(pol, dict):
            pol = pol.get("name")
        return str(pol) if pol else "-"

    @property
    def aggregation(self) -> str:
        """fedmoe aggregation mode (``sync`` / ``async`` / ``semi_async``); ``"-"`` for other protocols."""
        if self.protocol != "fedmoe":
            return "-"
        fm = (self.scenario.get("protocol") or {}).get("fedmoe") or {}
        return str(fm.get("aggregation") or "sync")

    @property
    def seed(self) -> int | None:
        """Root seed of the run."""
        s = self.manifest.get("seed")
        if s is None:
            s = (self.scenario.get("run") or {}).get("seed")
        return None if s is None else int(s)

    @property
    def label(self) -> str:
        """Short legend label: run name, plus policy when there is one."""
        pol = self.policy
        base = self.name if pol in ("-", self.name) else f"{self.name} ({pol})"
        return base if self.aggregation in ("-", "sync") else f"{base} [{self.aggregation}]"

    @property
    def incomplete(self) -> bool:
        """Whether the run did not complete (killed: ``status`` still ``running``; interrupted; failed)."""
        return self.manifest.get("status") != "completed"

    def incomplete_note(self) -> str | None:
        """One line saying the run is incomplete, how far its tables go and how to resume it;
        ``None`` for a completed run. A run's tables are flushed with each checkpoint, so a
        killed run's tables end at its last checkpoint (``checkpoint.json``)."""
        if not self.incomplete:
            return None
        status = str(self.manifest.get("status", "?"))
        why = "killed" if status == "running" else status
        head = self.path / "checkpoint.json"
        upto = ""
        if head.is_file():
            try:
                upto = f", tables up to round {int(json.loads(head.read_text(encoding='utf-8'))['rounds_done'])}"
            except (ValueError, KeyError, TypeError, OSError):
                upto = ""
        return f"{self.path}: incomplete run ({why}{upto}); continue it with: fedsim run --resume {self.path}"

    # -- named tables --------------------------------------------------------

    @property
    def rounds(self) -> pd.DataFrame:
        """``rounds.parquet`` (required)."""
        return self.table("rounds")

    @property
    def clients(self) -> pd.DataFrame:
        """``clients.parquet``."""
        return self.table("clients")

    @property
    def events(self) -> pd.DataFrame:
        """``events.parquet``."""
        return self.table("events")

    @property
    def links(self) -> pd.DataFrame:
        """``links.parquet``."""
        return self.table("links")

    @property
    def nodes(self) -> pd.DataFrame:
        """``nodes.parquet``."""
        return self.table("nodes")

    @property
    def edges(self) -> pd.DataFrame:
        """``edges.parquet``."""
        return self.table("edges")

    @property
    def assignments(self) -> pd.DataFrame:
        """``assignments.parquet``."""
        return self.table("assignments")

    @property
    def experts(self) -> pd.DataFrame:
        """``experts.parquet``."""
        return self.table("experts")

    @property
    def requests(self) -> pd.DataFrame:
        """``requests.parquet`` (nmoe runs only)."""
        return self.table("requests")


def as_rundir(run: RunDir | str | Path) -> RunDir:
    """Coerce a path or a :class:`RunDir` into a :class:`RunDir`."""
    return run if isinstance(run, RunDir) else RunDir(run)


def finite(x: Any) -> bool:
    """True when ``x`` is a finite real number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
