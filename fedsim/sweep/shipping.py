"""Moving files between the sweep driver and workers that share no disk with it.

Everything here is plain bytes and paths (no Ray), so it is tested without a
cluster. Three things travel:

- a run directory back to the driver (:func:`read_tree` on the worker,
  :func:`write_run_files` on the driver), the manifest written last so a
  half-written directory never looks complete;
- a scenario's input files to the worker (:func:`pack_path` once on the
  driver, :func:`unpack_path` once per worker): the data directory, traces and
  a GraphML file, as an uncompressed tar keyed by its SHA-256;
- a running run's checkpoint to the driver as it is written
  (:class:`CheckpointWatcher` on the worker, :func:`apply_checkpoint` on the
  driver): the manifest, the new bytes of ``checkpoint.log`` and then the
  header, the order :class:`fedsim.engine.checkpoint.Checkpointer` commits in,
  so the driver's copy is always a resumable run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from fedsim.engine.checkpoint import HEADER_FILE, LOG_FILE

__all__ = [
    "PATH_KEYS",
    "read_tree",
    "write_run_files",
    "pack_path",
    "unpack_path",
    "CheckpointWatcher",
    "apply_checkpoint",
    "resume_files",
    "DataMissingError",
    "check_local_paths",
    "localise_paths",
]

#: The scenario's input paths (fields of :class:`fedsim.config.loader.ScenarioPaths`) and the key each comes from.
PATH_KEYS: dict[str, str] = {
    "data_dir": "data.dir",
    "availability_trace": "devices.availability_trace",
    "capacity_trace": "devices.capacity_trace",
    "graphml": "topology.graphml",
}

_MANIFEST = "manifest.json"


class DataMissingError(Exception):
    """An input path of the scenario is missing on the worker node (one-line message naming node and path)."""


def _safe_rel(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"refusing to write {name!r} outside the run directory")
    return rel


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` as ``{posix relative path: bytes}`` (``{}`` if ``root`` is absent)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Make ``run_dir`` hold exactly ``files`` (a worker's run directory): each file written
    atomically, files not in ``files`` (a partial checkpoint) removed, ``manifest.json`` last.

    Raises:
        ValueError: a name that would leave ``run_dir``.
    """
    from fedsim.rundir import atomic_write_bytes

    run_dir = Path(run_dir)
    rels = {name: _safe_rel(name) for name in files}
    run_dir.mkdir(parents=True, exist_ok=True)
    keep = {run_dir.joinpath(*r.parts) for r in rels.values()}
    for p in sorted(run_dir.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
    for name, rel in rels.items():
        if name != _MANIFEST:
            atomic_write_bytes(run_dir.joinpath(*rel.parts), files[name])
    if _MANIFEST in files:
        atomic_write_bytes(run_dir / _MANIFEST, files[_MANIFEST])


def pack_path(path: Path) -> tuple[str, bytes]:
    """Pack a file or directory into an uncompressed tar; returns ``(sha256 hex, tar bytes)``.

    Members are sorted and carry no owner or time, so equal content gives equal bytes.
    """
    path = Path(path)
    buf = io.BytesIO()

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                tar.add(p, arcname=f"{path.name}/{p.relative_to(path).as_posix()}", recursive=False, filter=clean)
        else:
            tar.add(path, arcname=path.name, filter=clean)
    blob = buf.getvalue()
    return hashlib.sha256(blob).hexdigest(), blob


def unpack_path(blob: bytes, digest: str, root: Path) -> Path:
    """Extract a :func:`pack_path` tar under ``root/<digest>`` (once: an existing copy is reused);
    returns the path of the packed file or directory there."""
    dest = Path(root) / digest
    if not dest.is_dir():
        tmp = Path(root) / f".{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            # the "data" filter (no absolute paths, links out, devices) exists from Python 3.10.12 / 3.11.4
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # noqa: S202
        try:
            os.replace(tmp, dest)
        except OSError:  # another worker on this node extracted it first
            shutil.rmtree(tmp, ignore_errors=True)
    (top,) = list(dest.iterdir())
    return top


def check_local_paths(loaded: Any, node: str, fields: tuple[str, ...] | None = None) -> None:
    """Check that the scenario's input paths ``fields`` (default all set) exist on this node.

    Raises:
        DataMissingError: ``node NODE: KEY: PATH does not exist on this node``.
    """
    for field, key in PATH_KEYS.items():
        p = getattr(loaded.paths, field)
        if fields is not None and field not in fields:
            continue
        if p is not None and not Path(p).exists():
            raise DataMissingError(
                f"node {node}: {key}: {p} does not exist on this node "
                "(copy it there, or let the sweep ship it: --ray-data ship)"
            )


def localise_paths(loaded: Any, local: dict[str, Path]) -> None:
    """Point ``loaded.paths`` at this node's copies (``{ScenarioPaths field: path}``); the scenario itself
    (``data.dir`` as written, recorded in the manifest) is unchanged, so the run is the driver's run."""
    loaded.paths = dataclasses.replace(loaded.paths, **local)


# ---------------------------------------------------------------------------
# checkpoints travelling while a run goes on


class CheckpointWatcher:
    """Notices a new checkpoint in a worker's run directory; :meth:`poll` returns what the driver lacks.

    Called between rounds (from the run's progress callback), when nothing is
    being written, so the files are read whole. A resumed run starts from the
    checkpoint it was shipped (the driver has those bytes already).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.header = b""
        self.sent = 0
        hp = self.run_dir / HEADER_FILE
        if hp.is_file():
            self.header = hp.read_bytes()
            self.sent = int(json.loads(self.header).get("log_bytes", 0))

    def poll(self) -> dict[str, Any] | None:
        """``None`` if no new checkpoint; else ``{"manifest", "header", "log_offset", "log"}`` (bytes, int)."""
        hp = self.run_dir / HEADER_FILE
        try:
            header = hp.read_bytes()
        except FileNotFoundError:
            return None
        if header == self.header:
            return None
        n = int(json.loads(header)["log_bytes"])
        with open(self.run_dir / LOG_FILE, "rb") as fh:
            fh.seek(self.sent)
            delta = fh.read(n - self.sent)
        msg = {
            "manifest": (self.run_dir / _MANIFEST).read_bytes(),
            "header": header,
            "log_offset": self.sent,
            "log": delta,
        }
        self.header, self.sent = header, n
        return msg


def apply_checkpoint(run_dir: Path, msg: dict[str, Any]) -> None:
    """Write a :meth:`CheckpointWatcher.poll` message into the driver's copy of the run directory:
    manifest, log bytes at their offset (flushed to disk), then the header (the commit point)."""
    from fedsim.rundir import atomic_write_bytes

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / _MANIFEST, msg["manifest"])
    for stale in (HEADER_FILE,) if msg["log_offset"] == 0 else ():
        (run_dir / stale).unlink(missing_ok=True)
    lp = run_dir / LOG_FILE
    with open(lp, "r+b" if lp.exists() else "wb") as fh:
        fh.truncate(msg["log_offset"])
        fh.seek(msg["log_offset"])
        fh.write(msg["log"])
        fh.flush()
        os.fsync(fh.fileno())
    atomic_write_bytes(run_dir / HEADER_FILE, msg["header"])


def resume_files(run_dir: Path) -> dict[str, bytes]:
    """The files a worker needs to resume the interrupted run in the driver's ``run_dir``
    (manifest, checkpoint header and log)."""
    run_dir = Path(run_dir)
    return {n: (run_dir / n).read_bytes() for n in (_MANIFEST, HEADER_FILE, LOG_FILE) if (run_dir / n).is_file()}
