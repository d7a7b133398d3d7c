"""Large tensors reuse freed memory during a run (glibc ``malloc`` settings).

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves every
block above its mmap threshold (which adapts, but never beyond 32 MiB) with a fresh
``mmap`` and returns it to the kernel on ``free``, so the next tensor of that size
starts on fresh pages and pays one page fault per 4 KiB page on first touch. The
batched executor's stacked weights, gradients and FedAvg stacks of 100 clients are
tens of MiB each and are allocated anew at every step: on the Flower-comparison
workload a fresh 40 MiB weight-gradient ``bmm`` took 3x as long as the same ``bmm``
into reused memory, and a whole ``fedsim run`` spent about 15 % of its CPU time in
page faults (system time).

:func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (large blocks come from
the heap, and a freed block is reused by the next allocation that fits) and a high
``M_TRIM_THRESHOLD`` (freed memory at the top of the heap stays with the process);
the function it returns restores glibc's defaults and trims the heap. ``mallopt``
is documented in ``mallopt(3)``; on a C library without it (macOS, musl) nothing
changes. Results never depend on it: only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
_KEEP_BYTES = 1 << 30  # free memory kept at the top of the heap, bytes


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> Callable[[], None]:
    """Make glibc ``malloc`` keep and reuse freed large blocks (see module docstring);
    return a function that restores its defaults and gives the freed memory back.
    A no-op (and a no-op restore) where the C library has no ``mallopt``."""
    libc = _libc()
    if libc is None:
        return lambda: None
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)

    def restore() -> None:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)

    return restore
