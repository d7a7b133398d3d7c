"""Client capacity profiles as the server *estimates* them, and expert budgets.

The simulation's devices and links hold the ground truth; the server only
sees a :class:`CapacityEstimate` per client, either self-reported (truth times
log-normal noise) or learned from observed completion times. Units: seconds,
bytes, bits per second (bits/s), FLOPs, FLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

__all__ = [
    "CapacityEstimate",
    "CapacityEstimator",
    "EstimatorMode",
    "expert_budget",
    "lognormal_sigma",
    "predicted_time",
]

EstimatorMode = Literal["self_reported", "learned"]
_MODES: tuple[str, ...] = ("self_reported", "learned")


@dataclass(frozen=True)
class CapacityEstimate:
    """One client's capacity as estimated by the server.

    Attributes:
        flops_per_s: effective training speed (FLOP/s), > 0.
        memory_bytes: memory available for training (bytes), >= 0.
        up_bps: uplink rate (bits/s), > 0.
        down_bps: downlink rate (bits/s), > 0.
        latency_s: fixed per-round overhead (seconds), >= 0, added once to a
            round's predicted time (connection set-up, propagation, scheduling).
    """

    flops_per_s: float
    memory_bytes: float
    up_bps: float
    down_bps: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flops_per_s", "up_bps", "down_bps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f'"{name}" must be finite and > 0, got {v}')
        for name in ("memory_bytes", "latency_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f'"{name}" must be finite and >= 0, got {v}')


def predicted_time(
    est: CapacityEstimate,
    k: int,
    *,
    bytes_shared: float,
    bytes_per_expert: float,
    flops_shared: float,
    flops_per_expert: float,
) -> float:
    """Predicted round time (seconds) of a client given ``k`` experts.

    ``latency + B(k)*8/down_bps + (flops_shared + k*flops_per_expert)/flops_per_s
    + B(k)*8/up_bps`` with ``B(k) = bytes_shared + k*bytes_per_expert`` (the
    client downloads and uploads the shared part plus its ``k`` experts).
    """
    b = bytes_shared + k * bytes_per_expert
    return (
        est.latency_s
        + b * 8.0 / est.down_bps
        + (flops_shared + k * flops_per_expert) / est.flops_per_s
        + b * 8.0 / est.up_bps
    )


def expert_budget(
    est: CapacityEstimate,
    *,
    deadline_s: float,
    safety_margin: float,
    bytes_shared: float,
    bytes_per_expert: float,
    flops_shared: float,
    flops_per_expert: float,
    mem_shared_bytes: float,
    mem_per_expert_bytes: float,
    num_experts: int,
    min_k: int = 1,
) -> int:
    """The number of experts ``k`` a client can take this round.

    ``k_mem`` = the most ``k <= num_experts`` with
    ``mem_shared_bytes + k*mem_per_expert_bytes <= est.memory_bytes``;
    ``k_time`` = the most ``k <= num_experts`` with
    ``predicted_time(est, k, ...) <= deadline_s * (1 - safety_margin)``.

    Returns ``0`` when ``k_mem < 1`` (the client cannot hold one expert: the
    caller skips it); otherwise ``min(k_mem, max(k_time, min_k))``. So memory
    is a hard limit and time a soft one: with the default ``min_k=1`` a client
    that fits one expert in memory but is predicted to miss the deadline still
    gets 1 expert (it may straggle; the protocol's deadline decides); pass
    ``min_k=0`` to return 0 for such clients instead.
    """
    if not (math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f'"deadline_s" must be finite and > 0, got {deadline_s}')
    if not 0.0 <= safety_margin < 1.0:
        raise ValueError(f'"safety_margin" must be in [0, 1), got {safety_margin}')
    if int(num_experts) != num_experts or num_experts < 1:
        raise ValueError('"num_experts" must be an integer >= 1')
    if int(min_k) != min_k or min_k < 0:
        raise ValueError('"min_k" must be an integer >= 0')
    for name, v in (
        ("bytes_shared", bytes_shared),
        ("bytes_per_expert", bytes_per_expert),
        ("flops_shared", flops_shared),
        ("flops_per_expert", flops_per_expert),
        ("mem_shared_bytes", mem_shared_bytes),
        ("mem_per_expert_bytes", mem_per_expert_bytes),
    ):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f'"{name}" must be finite and >= 0, got {v}')
    ks = np.arange(int(num_experts) + 1)
    mem_ok = mem_shared_bytes + ks * mem_per_expert_bytes <= est.memory_bytes
    k_mem = int(ks[mem_ok].max()) if mem_ok.any() else -1
    if k_mem < 1:
        return 0
    times = np.array(
        [
            predicted_time(
                est,
                int(k),
                bytes_shared=bytes_shared,
                bytes_per_expert=bytes_per_expert,
                flops_shared=flops_shared,
                flops_per_expert=flops_per_expert,
            )
            for k in ks
        ]
    )
    time_ok = times <= deadline_s * (1.0 - safety_margin)
    k_time = int(ks[time_ok].max()) if time_ok.any() else 0
    return min(k_mem, max(k_time, int(min_k)))


def lognormal_sigma(cv: float) -> float:
    """Log-space std ``sigma`` of a log-normal factor whose coefficient of variation is ``cv``.

    ``cv = sqrt(exp(sigma^2) - 1)``, so ``sigma = sqrt(log(1 + cv^2))``.
    """
    if not (math.isfinite(cv) and cv >= 0):
        raise ValueError(f'"cv" must be finite and >= 0, got {cv}')
    return math.sqrt(math.log1p(cv * cv))


class CapacityEstimator:
    """The server's capacity estimates of its clients.

    Modes:

    - ``"self_reported"``: :meth:`self_report` stores the true profile with
      each field multiplied by independent log-normal noise ``exp(N(0, noise_sigma^2))`` drawn from the Generator
      passed in. :meth:`observe` changes nothing.
    - ``"learned"``: start from a prior (:meth:`set_prior`, or a self-report);
      each :meth:`observe` moves every observed rate towards the observed one
      by an EWMA with weight ``ewma``:
      ``rate <- (1 - ewma) * rate + ewma * observed_rate``. Memory is learned
      from job outcomes: a job of ``m`` bytes that completed proves at least
      ``m`` was free, one killed out of memory that less than ``m`` was; when
      the evidence contradicts the estimate, ``memory <- (1 - ewma) * memory
      + ewma * m`` (otherwise it stays).

    Args:
        mode: ``"self_reported"`` or ``"learned"``.
        noise_sigma: standard deviation of the log of the self-report noise (>= 0).
        noise_cv: alternatively, the noise factor's coefficient of variation
            (>= 0); sets ``noise_sigma = lognormal_sigma(noise_cv)``. Give one or
            the other.
        ewma: weight of a new observation in ``(0, 1]`` (learned mode).
    """

    def __init__(
        self,
        mode: EstimatorMode = "self_reported",
        *,
        noise_sigma: float = 0.0,
        noise_cv: float | None = None,
        ewma: float = 0.3,
    ) -> None:
        if noise_cv is not None:
            if noise_sigma != 0.0:
                raise ValueError('give "noise_sigma" or "noise_cv", not both')
            noise_sigma = lognormal_sigma(noise_cv)
        if mode not in _MODES:
            raise ValueError(f'"mode" must be one of {_MODES}, got {mode!r}')
        if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError('"noise_sigma" must be >= 0')
        if not 0.0 < ewma <= 1.0:
            raise ValueError('"ewma" must be in (0, 1]')
        self.mode: EstimatorMode = mode
        self.noise_sigma = float(noise_sigma)
        self.ewma = float(ewma)
        self._est: dict[Hashable, CapacityEstimate] = {}
        #: optional on-demand self-report: ``reporter(client)`` stores and returns the first
        #: estimate of a client not seen yet (a city-scale population reports when first asked)
        self.reporter: Callable[[Hashable], CapacityEstimate] | None = None

    @property
    def estimates(self) -> Mapping[Hashable, CapacityEstimate]:
        """A copy of the current estimates by client id."""
        return dict(self._est)

    def __contains__(self, client: object) -> bool:
        return client in self._est

    def estimate(self, client: Hashable) -> CapacityEstimate:
        """The current estimate of ``client`` (from :attr:`reporter` on first request if set);
        ``KeyError`` naming it if unknown."""
        try:
            return self._est[client]
        except KeyError:
            if self.reporter is not None:
                return self.reporter(client)
            raise KeyError(f"no capacity estimate for client {client!r}") from None

    def set_prior(self, client: Hashable, est: CapacityEstimate) -> None:
        """Set (or overwrite) the estimate of ``client``, e.g. a population prior."""
        self._est[client] = est

    def self_report(
        self, client: Hashable, truth: CapacityEstimate, rng: np.random.Generator
    ) -> CapacityEstimate:
        """Store and return ``truth`` with log-normal noise (5 draws from ``rng``, always)."""
        z = np.exp(self.noise_sigma * rng.standard_normal(5))
        est = CapacityEstimate(
            flops_per_s=truth.flops_per_s * float(z[0]),
            memory_bytes=truth.memory_bytes * float(z[1]),
            up_bps=truth.up_bps * float(z[2]),
            down_bps=truth.down_bps * float(z[3]),
            latency_s=truth.latency_s * float(z[4]),
        )
        self._est[client] = est
        return est

    def observe(
        self,
        client: Hashable,
        *,
        download_s: float | None = None,
        download_bytes: float | None = None,
        compute_s: float | None = None,
        flops: float | None = None,
        upload_s: float | None = None,
        upload_bytes: float | None = None,
        latency_s: float | None = None,
        memory_ok_bytes: float | None = None,
        memory_oom_bytes: float | None = None,
    ) -> CapacityEstimate:
        """Update ``client``'s rates from one round's observed phases (learned mode).

        Each phase is used only when both its seconds and its amount are given
        and > 0 (a client that dropped out after downloading reports the
        download only). ``download_s`` / ``upload_s`` are the data-transfer
        durations *excluding* the fixed latency; pass the measured latency as
        ``latency_s`` to learn it too. Observed rates: ``down_bps =
        download_bytes*8/download_s``, ``flops_per_s = flops/compute_s``,
        ``up_bps = upload_bytes*8/upload_s``. ``memory_ok_bytes``: memory of a
        job that ran to completion; ``memory_oom_bytes``: memory of a job that
        was killed out of memory (see the class docstring). Returns the (new)
        estimate; in self-reported mode nothing changes.
        """
        est = self.estimate(client)
        if self.mode != "learned":
            return est
        a = self.ewma

        def mix(old: float, seconds: float | None, amount: float | None, scale: float) -> float:
            if seconds is None or amount is None or seconds <= 0 or amount <= 0:
                return old
            return (1 - a) * old + a * (amount * scale / seconds)

        new_latency = est.latency_s
        if latency_s is not None and latency_s >= 0:
            new_latency = (1 - a) * est.latency_s + a * latency_s
        memory = est.memory_bytes
        if memory_ok_bytes is not None and memory_ok_bytes > memory:
            memory = (1 - a) * memory + a * memory_ok_bytes
        if memory_oom_bytes is not None and 0 <= memory_oom_bytes <= memory:
            memory = (1 - a) * memory + a * memory_oom_bytes
        est = replace(
            est,
            memory_bytes=memory,
            down_bps=mix(est.down_bps, download_s, download_bytes, 8.0),
            flops_per_s=mix(est.flops_per_s, compute_s, flops, 1.0),
            up_bps=mix(est.up_bps, upload_s, upload_bytes, 8.0),
            latency_s=new_latency,
        )
        self._est[client] = est
        return est
