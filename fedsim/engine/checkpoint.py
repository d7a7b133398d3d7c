"""Checkpoint and resume by replay: the results of the real computation, in call order.

SimPy processes are generators and cannot be pickled, so a run is not frozen
and thawed. Instead every call to the expensive, deterministic learning work
(training jobs, evaluations: real PyTorch at zero simulated time) goes through
:meth:`Replay.call` with a key naming the call (e.g. ``train/3/c0012,c0031``).
The result is pickled and appended to a log. A resumed run rebuilds the world
from the same scenario and seed and re-runs the systems simulation from
``t = 0``; each call is answered from the log, in order, until the log runs
out, and from there on the run is live. Everything else (the clock, the
network, the devices, every RNG stream, the alignment state, the recorder's
rows) is recomputed exactly, because it is a deterministic function of the
scenario, the seed and those results. A key that differs from the stored one
at the same position means the replay diverged: an error, never a silent
mix of two runs.

Files in the run directory:

``checkpoint.log``
    records ``[u32 key length][u64 payload length][u32 CRC-32 of key + payload][key][payload]``,
    little-endian, appended at every checkpoint (only the records new since the last one).
``checkpoint.json``
    the commit point, written atomically after the log is appended and flushed to disk:
    format, fedsim version, SHA-256 of the resolved scenario, seed, rounds done,
    simulated time, number of records and committed log length in bytes.
    Bytes of the log beyond the committed length (a kill during an append)
    are ignored and cut off on resume.

After each commit the checkpointer calls its ``on_write`` hook: the run writes
every table recorded so far (:func:`fedsim.api.run`), so a killed run's
directory holds its tables up to its last checkpoint and can be inspected
(the manifest still says ``running``); the resumed run rewrites them whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "CheckpointError",
    "Replay",
    "Checkpointer",
    "read_checkpoint",
    "scenario_sha256",
    "LOG_FILE",
    "HEADER_FILE",
    "FORMAT",
]

T = TypeVar("T")

LOG_FILE = "checkpoint.log"
HEADER_FILE = "checkpoint.json"
FORMAT = 1
_REC = struct.Struct("<IQI")  # key length, payload length, CRC-32


class CheckpointError(Exception):
    """A checkpoint that cannot be used: ``str(e)`` is one line ``FILE: reason``."""

    def __init__(self, file: str | Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = str(file)
        self.reason = reason


def scenario_sha256(resolved: dict[str, Any]) -> str:
    """SHA-256 of a resolved scenario (canonical JSON: sorted keys)."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Replay:
    """The call log of one run: answers stored calls in order, records new ones.

    ``stored``: ``(key, payload offset, payload length)`` of the committed
    records of ``log_path`` (empty for a fresh run). ``record``: whether new
    results are kept for the next checkpoint (off when the run has no
    checkpoints: then :meth:`call` only calls).
    """

    def __init__(self, log_path: Path | None = None, stored: list[tuple[str, int, int]] | None = None, *, record: bool = True) -> None:
        self.log_path = log_path
        self._stored = list(stored or [])
        self._pos = 0
        self.record = record
        self.new: list[tuple[str, bytes]] = []
        self.cost_s = 0.0  # host seconds spent pickling results (part of the checkpoint cost)

    @property
    def replaying(self) -> bool:
        """Whether stored results remain to be answered."""
        return self._pos < len(self._stored)

    @property
    def calls(self) -> int:
        """Calls answered or recorded so far."""
        return self._pos + len(self.new)

    def call(self, key: str, fn: Callable[[], T]) -> T:
        """The result of ``fn()``: the stored one while replaying, else computed (and recorded).

        Raises:
            CheckpointError: the stored call at this position has another key
                (the run diverged from the one that wrote the log), or its
                payload cannot be read.
        """
        if self._pos < len(self._stored):
            k, off, n = self._stored[self._pos]
            if k != key:
                raise CheckpointError(self.log_path or LOG_FILE, f"replay diverged at call {self._pos}: stored {k!r}, this run asks for {key!r}")
            self._pos += 1
            assert self.log_path is not None
            with open(self.log_path, "rb") as fh:
                fh.seek(off)
                data = fh.read(n)
            try:
                return pickle.loads(data)  # noqa: S301 - our own log, CRC-checked on open
            except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint
                raise CheckpointError(self.log_path, f"record {self._pos - 1} ({k!r}) cannot be read: {type(e).__name__}") from None
        result = fn()
        if self.record:
            t0 = time.perf_counter()
            self.new.append((key, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)))
            self.cost_s += time.perf_counter() - t0
        return result


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Writes the checkpoint of a run every ``every_rounds`` rounds (see module docstring).

    ``header``: the fields that identify the run (``fedsim_version``,
    ``scenario_sha256``, ``seed``). ``committed_bytes`` / ``committed_records``:
    what the log already holds (a resumed run). ``seconds`` and ``writes``
    accumulate the host time spent writing (for the cost report), the
    ``on_write`` hook (called after each commit; flushes the tables) included.
    """

    def __init__(self, run_dir: Path, header: dict[str, Any], replay: Replay, every_rounds: int, *, committed_bytes: int = 0, committed_records: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.header = dict(header)
        self.replay = replay
        self.every_rounds = int(every_rounds)
        self.committed_bytes = committed_bytes
        self.committed_records = committed_records
        self.seconds = 0.0
        self.writes = 0
        self.on_write: Callable[[], None] | None = None

    def round_done(self, rounds_done: int, t_s: float, *, force: bool = False) -> bool:
        """Called at a round boundary with the number of rounds finished; writes a
        checkpoint every ``every_rounds`` rounds (or when ``force``) if there is
        anything new. Returns whether it wrote."""
        if self.every_rounds <= 0 or self.replay.replaying or not self.replay.new:
            return False
        if not force and rounds_done % self.every_rounds != 0:
            return False
        self.write(rounds_done, t_s)
        return True

    def write(self, rounds_done: int, t_s: float) -> None:
        """Append the new records to the log, flush them to disk, then commit the header atomically."""
        from fedsim.rundir import atomic_write_text

        t0 = time.perf_counter()
        log = self.run_dir / LOG_FILE
        with open(log, "ab") as fh:
            if fh.tell() != self.committed_bytes:  # leftovers of a killed append
                fh.truncate(self.committed_bytes)
                fh.seek(self.committed_bytes)
            for key, payload in self.replay.new:
                kb = key.encode("utf-8")
                fh.write(_REC.pack(len(kb), len(payload), zlib.crc32(payload, zlib.crc32(kb))))
                fh.write(kb)
                fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        _fsync_dir(self.run_dir)
        records = self.committed_records + len(self.replay.new)
        head = {**self.header, "format": FORMAT, "rounds_done": int(rounds_done), "t_s": float(t_s), "records": records, "log_bytes": size}
        atomic_write_text(self.run_dir / HEADER_FILE, json.dumps(head, indent=2) + "\n")
        self.committed_bytes, self.committed_records = size, records
        self.replay.new = []
        self.writes += 1
        if self.on_write is not None:
            self.on_write()
        self.seconds += time.perf_counter() - t0


def read_checkpoint(run_dir: Path, expect: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """Open and check the checkpoint of ``run_dir``; cut off uncommitted log bytes.

    ``expect``: header fields that must match (``fedsim_version``,
    ``scenario_sha256``, ``seed``). Returns the header and the committed
    records ``(key, payload offset, payload length)``; no checkpoint gives
    ``({}, [])``.

    Raises:
        CheckpointError: the header or the log is unreadable, truncated or
            corrupt (CRC mismatch), or written by another fedsim version, for
            another scenario or seed.
    """
    run_dir = Path(run_dir)
    hp, lp = run_dir / HEADER_FILE, run_dir / LOG_FILE
    if not hp.exists():
        return {}, []
    try:
        head = json.loads(hp.read_text(encoding="utf-8"))
        if not isinstance(head, dict):
            raise ValueError("not an object")
        fmt, n_rec, n_bytes = int(head["format"]), int(head["records"]), int(head["log_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(hp, f"corrupt checkpoint header ({type(e).__name__}: {e})") from None
    if fmt != FORMAT:
        raise CheckpointError(hp, f"checkpoint format {fmt}, this fedsim reads format {FORMAT}")
    names = {"fedsim_version": "fedsim version", "scenario_sha256": "scenario", "seed": "seed"}
    for k, what in names.items():
        if k in expect and head.get(k) != expect[k]:
            raise CheckpointError(hp, f"checkpoint was written for another {what} ({head.get(k)!r}, this run: {expect[k]!r})")
    if not lp.exists() or lp.stat().st_size < n_bytes:
        have = lp.stat().st_size if lp.exists() else 0
        raise CheckpointError(lp, f"checkpoint log is truncated ({have} bytes, the header committed {n_bytes})")
    records: list[tuple[str, int, int]] = []
    with open(lp, "r+b") as fh:
        pos = 0
        while pos < n_bytes:
            hdr = fh.read(_REC.size)
            if len(hdr) < _REC.size:
                raise CheckpointError(lp, f"checkpoint log is corrupt: record {len(records)} is cut short")
            kl, pl, crc = _REC.unpack(hdr)
            kb = fh.read(kl)
            payload = fh.read(pl)
            end = pos + _REC.size + kl + pl
            if len(kb) < kl or len(payload) < pl or end > n_bytes:
                raise CheckpointError(lp, f"checkpoint log is corrupt: record {len(records)} is cut short")
            if zlib.crc32(payload, zlib.crc32(kb)) != crc:
                raise CheckpointError(lp, f"checkpoint log is corrupt: CRC mismatch in record {len(records)}")
            try:
                key = kb.decode("utf-8")
            except UnicodeDecodeError:
                raise CheckpointError(lp, f"checkpoint log is corrupt: record {len(records)} has a bad key") from None
            records.append((key, pos + _REC.size + kl, pl))
            pos = end
        if len(records) != n_rec:
            raise CheckpointError(lp, f"checkpoint log holds {len(records)} records, the header committed {n_rec}")
        fh.truncate(n_bytes)  # a kill during an append leaves bytes past the commit point
    return head, records
