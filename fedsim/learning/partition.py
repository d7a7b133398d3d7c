"""Partitioners: split a training pool among clients.

``partition(scheme, labels, num_clients, rng, ...)`` returns one
:class:`ClientSplit` per client. Each client's indices (into the dataset's
training pool) are split again into the client's own ``train_idx`` and
``test_idx`` (``test_fraction`` of its data, at least one sample when it has two
or more), so personalised accuracy is measured on data drawn like the client's
own. Clients never share a sample. Every random choice comes from ``rng``: the
same generator state gives the same partition.

Schemes:

- ``"iid"``: a random permutation cut into equal shares.
- ``"dirichlet"``: label skew; for each class, the class's samples are divided
  among clients in proportions drawn from ``Dirichlet(alpha)`` (smaller
  ``alpha`` = more skew).
- ``"noniid_tau"`` (NMoE paper): every client holds all classes; client i's
  dominant class is ``i mod num_classes`` and makes up ``1 - tau`` of its data
  (``tau_definition="outside_share"``: tau is the share outside the dominant
  class) or ``1 / (1 + tau)`` of it (``"paper_table"``: the reading that fits
  the NMoE paper's Table I, whose Local row 66.66 / 76.92 / 83.33 % equals
  ``1 / (1 + tau)`` at tau = 0.5 / 0.3 / 0.2), the rest spread uniformly over
  the other classes. Each client gets
  ``len(labels) // num_clients`` samples (or ``samples_per_client``), drawn without
  replacement; if a class runs out the client gets fewer samples of it.
- ``"label_clusters"``: clients are grouped into ``clusters`` groups (client i
  is in group ``i mod clusters``); the classes are cut into ``clusters``
  contiguous subsets and each group shares its subset IID, so each group's data
  suits a different expert.
- ``"quantity_skew"``: IID labels but sizes proportional to a
  ``Dirichlet(alpha)`` draw (``size_dist="dirichlet"``) or a lognormal with
  ``sigma`` (``size_dist="lognormal"``); every client gets at least
  ``min_size`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClientSplit", "partition", "label_histograms", "PARTITION_SCHEMES", "TAU_DEFINITIONS"]

PARTITION_SCHEMES = ("iid", "dirichlet", "noniid_tau", "label_clusters", "quantity_skew")
#: Readings of non-IID(tau): the dominant class's share is ``1 - tau`` or ``1 / (1 + tau)``.
TAU_DEFINITIONS = ("outside_share", "paper_table")


@dataclass(frozen=True)
class ClientSplit:
    """One client's data: int64 indices into the training pool."""

    client_id: int
    train_idx: np.ndarray
    test_idx: np.ndarray

    @property
    def all_idx(self) -> np.ndarray:
        """Train and test indices together."""
        return np.concatenate([self.train_idx, self.test_idx])

    @property
    def num_samples(self) -> int:
        """Number of local training samples."""
        return int(len(self.train_idx))


def partition(
    scheme: str,
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    test_fraction: float = 0.2,
    alpha: float = 0.5,
    tau: float = 0.2,
    clusters: int = 2,
    num_classes: int | None = None,
    samples_per_client: int | None = None,
    size_dist: str = "dirichlet",
    sigma: float = 1.0,
    min_size: int = 2,
    tau_definition: str = "outside_share",
) -> list[ClientSplit]:
    """Split the pool with ``labels`` among ``num_clients`` clients (see module docstring)."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1:
        raise ValueError('"labels" must be one-dimensional')
    if num_clients < 1:
        raise ValueError('"num_clients" must be >= 1')
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError('"test_fraction" must be in [0, 1)')
    n = len(labels)
    c = int(num_classes if num_classes is not None else labels.max() + 1)
    if scheme == "iid":
        groups = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ValueError('"alpha" must be > 0')
        groups = _dirichlet(labels, num_clients, c, alpha, rng)
    elif scheme == "noniid_tau":
        if not 0.0 <= tau <= 1.0:
            raise ValueError('"tau" must be in [0, 1]')
        if tau_definition not in TAU_DEFINITIONS:
            raise ValueError(f'"tau_definition" must be one of {", ".join(TAU_DEFINITIONS)}')
        per = samples_per_client if samples_per_client is not None else n // num_clients
        dominant = 1.0 - tau if tau_definition == "outside_share" else 1.0 / (1.0 + tau)
        groups = _noniid_tau(labels, num_clients, c, dominant, per, rng)
    elif scheme == "label_clusters":
        if not 1 <= clusters <= min(num_clients, c):
            raise ValueError('"clusters" must be in [1, min(num_clients, num_classes)]')
        groups = _label_clusters(labels, num_clients, c, clusters, rng)
    elif scheme == "quantity_skew":
        groups = _quantity_skew(n, num_clients, alpha, size_dist, sigma, min_size, rng)
    else:
        raise ValueError(
            f'unknown partition scheme "{scheme}"; expected one of {", ".join(PARTITION_SCHEMES)}'
        )
    return [
        _carve(i, np.asarray(g, dtype=np.int64), test_fraction, rng) for i, g in enumerate(groups)
    ]


def label_histograms(
    labels: np.ndarray, splits: list[ClientSplit], num_classes: int, *, which: str = "train"
) -> np.ndarray:
    """Label counts, shape ``(num_clients, num_classes)``, of each client's
    ``"train"``, ``"test"`` or ``"all"`` indices."""
    labels = np.asarray(labels)
    out = np.zeros((len(splits), num_classes), dtype=np.int64)
    for i, s in enumerate(splits):
        idx = {"train": s.train_idx, "test": s.test_idx, "all": s.all_idx}[which]
        out[i] = np.bincount(labels[idx], minlength=num_classes)[:num_classes]
    return out


# ---------------------------------------------------------------------------- schemes


def _carve(
    cid: int, idx: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> ClientSplit:
    idx = rng.permutation(idx)
    n_test = int(round(len(idx) * test_fraction))
    if test_fraction > 0 and len(idx) >= 2:
        n_test = max(1, n_test)
    return ClientSplit(
        cid, np.sort(idx[n_test:]).astype(np.int64), np.sort(idx[:n_test]).astype(np.int64)
    )


def _dirichlet(
    labels: np.ndarray, k: int, c: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    groups: list[list[np.ndarray]] = [[] for _ in range(k)]
    for cls in range(c):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        props = rng.dirichlet(np.full(k, alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
        for i, part in enumerate(np.split(idx, cuts)):
            groups[i].append(part)
    return [np.concatenate(g) for g in groups]


def _noniid_tau(
    labels: np.ndarray, k: int, c: int, dominant: float, per: int, rng: np.random.Generator
) -> list[np.ndarray]:
    pools = [list(rng.permutation(np.flatnonzero(labels == cls))) for cls in range(c)]
    groups = []
    for i in range(k):
        dom = i % c
        counts = np.zeros(c, dtype=int)
        counts[dom] = int(round(dominant * per))
        rest = per - counts[dom]
        others = [j for j in range(c) if j != dom]
        if others and rest > 0:
            base, extra = divmod(rest, len(others))
            counts[others] = base
            for j in rng.choice(others, size=extra, replace=False):
                counts[j] += 1
        take = []
        for cls in range(c):
            m = min(counts[cls], len(pools[cls]))
            take.extend(pools[cls][:m])
            pools[cls] = pools[cls][m:]
        groups.append(np.asarray(take, dtype=np.int64))
    return groups


def _label_clusters(
    labels: np.ndarray, k: int, c: int, clusters: int, rng: np.random.Generator
) -> list[np.ndarray]:
    class_sets = np.array_split(np.arange(c), clusters)
    groups: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * k
    for g, classes in enumerate(class_sets):
        members = [i for i in range(k) if i % clusters == g]
        idx = rng.permutation(np.flatnonzero(np.isin(labels, classes)))
        for i, part in zip(members, np.array_split(idx, len(members))):
            groups[i] = part
    return groups


def _quantity_skew(
    n: int,
    k: int,
    alpha: float,
    size_dist: str,
    sigma: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    if k * min_size > n:
        raise ValueError('"min_size" * num_clients exceeds the pool size')
    if size_dist == "dirichlet":
        props = rng.dirichlet(np.full(k, alpha))
    elif size_dist == "lognormal":
        props = rng.lognormal(0.0, sigma, size=k)
        props /= props.sum()
    else:
        raise ValueError('"size_dist" must be "dirichlet" or "lognormal"')
    sizes = min_size + np.floor(props * (n - k * min_size)).astype(int)
    cuts = np.cumsum(sizes)[:-1]
    return list(np.split(rng.permutation(n)[: sizes.sum()], cuts))
