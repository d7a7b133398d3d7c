"""The one owner of torch's intra-op thread count (``training.torch_threads``).

Every place that changes torch's thread count (a run in :func:`fedsim.api.run`,
a sweep worker in :mod:`fedsim.sweep.backends`, the benchmarks) goes through
:func:`set_torch_threads` or :func:`torch_threads`, so the setting and its
restoration live in one place. Oversubscribed BLAS threads are about 10x slower
on a busy host, hence one thread by default in scenarios.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["set_torch_threads", "torch_threads"]


def set_torch_threads(n: int) -> Callable[[], None]:
    """Set torch's intra-op threads to ``n``; return a function that restores the previous count.

    Raises:
        ValueError: ``n < 1``.
    """
    import torch

    n = int(n)
    if n < 1:
        raise ValueError(f"torch threads must be >= 1, got {n}")
    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)

    def restore() -> None:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)

    return restore


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Context manager: torch intra-op threads = ``n`` inside, the previous count after.

    Raises:
        ValueError: ``n < 1``.
    """
    restore = set_torch_threads(n)
    try:
        yield
    finally:
        restore()
