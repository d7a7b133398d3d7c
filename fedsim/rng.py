"""One root seed -> named, independent random streams.

Every source of randomness in fedsim draws from a stream obtained here by
name (``"topology"``, ``"channel"``, ``"client/17/train"``...). A stream's
seed depends only on the root seed and the name, never on the order in
which streams were requested, so adding a new stream never perturbs the
numbers an existing one produces.

Nothing in fedsim touches the global RNGs of ``random``, ``numpy`` or
``torch``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["RngStreams", "name_key"]


def name_key(name: str) -> tuple[int, ...]:
    """Stable spawn key for a stream name (four 32-bit words of its SHA-256)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))


class RngStreams:
    """Factory of named random streams under one root seed.

    ``numpy(name)`` returns the *same* ``numpy.random.Generator`` object for
    the same name on every call, so a component may ask for its stream
    repeatedly and keep consuming it. ``fresh_numpy(name)`` and
    ``torch(name)`` return a new generator seeded identically each call: use
    them for pure jobs (a training job must be a function of its inputs).
    """

    def __init__(self, seed: int) -> None:
        if seed < 0:
            raise ValueError('"seed" must be >= 0')
        self.seed = int(seed)
        self._cache: dict[str, np.random.Generator] = {}

    def seed_sequence(self, name: str) -> np.random.SeedSequence:
        """The ``SeedSequence`` of stream ``name``."""
        return np.random.SeedSequence(entropy=self.seed, spawn_key=name_key(name))

    def seed_int(self, name: str) -> int:
        """A 63-bit integer seed for stream ``name`` (for torch or foreign libraries)."""
        return int(self.seed_sequence(name).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)

    def numpy(self, name: str) -> np.random.Generator:
        """The shared, stateful numpy Generator of stream ``name``."""
        gen = self._cache.get(name)
        if gen is None:
            gen = np.random.Generator(np.random.PCG64(self.seed_sequence(name)))
            self._cache[name] = gen
        return gen

    def fresh_numpy(self, name: str) -> np.random.Generator:
        """A new numpy Generator for stream ``name``, identical on every call."""
        return np.random.Generator(np.random.PCG64(self.seed_sequence(name)))

    def torch(self, name: str) -> torch.Generator:
        """A new CPU ``torch.Generator`` for stream ``name``, identical on every call."""
        import torch  # lazily: validating a scenario must not pay for importing torch

        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed_int(name))
        return gen
