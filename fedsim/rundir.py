"""Run directories: atomic file writes and the manifest.

Every file is written to a temporary name in the same directory and then
renamed, so an interrupted run never leaves a half-written file that looks
complete. The manifest is written first with ``status: running`` and
rewritten at the end with ``completed`` or ``failed``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_parquet", "write_json", "make_run_dir", "base_manifest", "git_revision"]


def _umask() -> int:
    """The process's file-creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Atomically write ``df`` as Parquet (no index; deterministic bytes for equal frames)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    # drop pandas metadata that could embed non-deterministic details
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def make_run_dir(parent: Path, name: str) -> Path:
    """Create a fresh run directory ``parent/name`` (``name-2``, ``-3``... if taken): never overwrite a run."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    candidate = parent / name
    i = 2
    while candidate.exists():
        candidate = parent / f"{name}-{i}"
        i += 1
    candidate.mkdir()
    return candidate


def git_revision(cwd: Path | None = None) -> str | None:
    """The git commit of the fedsim source tree, if it is a git checkout."""
    here = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def base_manifest(resolved: dict[str, Any], seed: int) -> dict[str, Any]:
    """Manifest fields known at the start of a run."""
    import numpy
    import simpy
    import torch

    from fedsim.version import __version__

    return {
        "fedsim_version": __version__,
        "status": "running",
        "seed": int(seed),
        "git_revision": git_revision(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "simpy": simpy.__version__,
            "numpy": numpy.__version__,
            "pandas": pd.__version__,
        },
        "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "finished_at": None,
        "wall_s": None,
        "scenario": resolved,
    }
