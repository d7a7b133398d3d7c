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

__all__ = ["RngStreams", "CounterRng", "name_key"]


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

    def counter(self, name: str) -> CounterRng:
        """The counter-based generator of stream ``name`` (draws keyed by integers)."""
        key = int(self.seed_sequence(name).generate_state(1, np.uint64)[0])
        return CounterRng(key)

    def torch(self, name: str) -> torch.Generator:
        """A new CPU ``torch.Generator`` for stream ``name``, identical on every call."""
        import torch  # lazily: validating a scenario must not pay for importing torch

        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed_int(name))
        return gen


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood, OOPSLA 2014): a bijection of uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


class CounterRng:
    """Counter-based random numbers: a draw is a pure function of (stream key, counters).

    ``uniform(a, b, ...)`` hashes the stream key and the integer counters
    (broadcast arrays, e.g. client index and coherence block) with
    SplitMix64's finaliser, chained once per counter, so a value drawn lazily
    equals the one an eager loop would draw, whatever the order or the subset
    of queries. Uniforms have 53 random bits in (0, 1).
    """

    def __init__(self, key: int) -> None:
        self.key = np.uint64(key & 0xFFFFFFFFFFFFFFFF)
        with np.errstate(over="ignore"):
            self._h0 = _mix(np.asarray(self.key, dtype=np.uint64) + _GOLD)

    def bits(self, *counters: np.ndarray | int) -> np.ndarray:
        """uint64 hash of the counters (broadcast shape)."""
        with np.errstate(over="ignore"):
            h = self._h0
            for c in counters:
                h = _mix(h ^ (np.asarray(c).astype(np.uint64) * _GOLD + _GOLD))
        return np.asarray(h, dtype=np.uint64)

    def uniform(self, *counters: np.ndarray | int) -> np.ndarray:
        """Uniform(0, 1) draws, one per broadcast element of the counters."""
        return ((self.bits(*counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def normal(self, *counters: np.ndarray | int) -> np.ndarray:
        """Standard normal draws (Box-Muller on two keyed uniforms)."""
        u1 = self.uniform(*counters, 0)
        u2 = self.uniform(*counters, 1)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def exponential(self, *counters: np.ndarray | int) -> np.ndarray:
        """Exponential(1) draws (inverse transform)."""
        return -np.log(self.uniform(*counters))
