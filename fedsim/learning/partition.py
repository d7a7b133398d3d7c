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
- ``"domain_skew"`` (feature / domain skew; the setting of the federated-MoE
  design paper's Fig. 3, "the data on each client are uniquely suited to a
  specific expert"): IID labels, equal shares of the pool, and clients split
  into ``len(group_shares)`` groups of unequal sizes (``group_shares``, e.g.
  0.40/0.25/0.15/0.12/0.08 of the clients, largest-remainder rounding, at least
  one client per group). Clients are taken in ``client_order`` (default
  0..n-1): the first ``shares[0]`` of them form group 0, and so on, so a caller
  that orders clients by availability makes the largest group the most often
  online. Each group's inputs go through its own fixed transform
  (:func:`domain_transform`), applied by the caller to the client's samples:
  the transform, not the labels, says which expert a client's data suits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "ClientSplit",
    "partition",
    "label_histograms",
    "domain_transform",
    "group_sizes",
    "PARTITION_SCHEMES",
    "DOMAIN_TRANSFORMS",
    "TAU_DEFINITIONS",
]

PARTITION_SCHEMES = (
    "iid", "dirichlet", "noniid_tau", "label_clusters", "quantity_skew", "domain_skew"
)
DOMAIN_TRANSFORMS = ("permute", "rotate")
#: Readings of non-IID(tau): the dominant class's share is ``1 - tau`` or ``1 / (1 + tau)``.
TAU_DEFINITIONS = ("outside_share", "paper_table")


@dataclass(frozen=True)
class ClientSplit:
    """One client's data: int64 indices into the training pool.

    ``group``: the client's group under ``domain_skew`` (which input transform
    its data went through), -1 for the other schemes.
    """

    client_id: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    group: int = -1

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
    group_shares: tuple[float, ...] = (0.40, 0.25, 0.15, 0.12, 0.08),
    client_order: list[int] | None = None,
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
    elif scheme == "domain_skew":
        member = _domain_groups(num_clients, group_shares, client_order)
        groups = np.array_split(rng.permutation(n), num_clients)
        return [
            replace(_carve(i, np.asarray(g, dtype=np.int64), test_fraction, rng), group=int(member[i]))
            for i, g in enumerate(groups)
        ]
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


def group_sizes(num_clients: int, shares: tuple[float, ...] | list[float]) -> np.ndarray:
    """Clients per group, shape ``(len(shares),)``: ``shares`` (normalised) of
    ``num_clients`` by largest-remainder rounding, at least one client per group.

    Raises:
        ValueError: a share is not > 0, or there are more groups than clients.
    """
    w = np.asarray(shares, dtype=float)
    if w.ndim != 1 or len(w) < 1 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError('"group_shares" must be a non-empty list of numbers > 0')
    if len(w) > num_clients:
        raise ValueError(f'{len(w)} groups need at least as many clients, got {num_clients}')
    exact = w / w.sum() * num_clients
    sizes = np.floor(exact).astype(int)
    rest = num_clients - int(sizes.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    sizes[order[:rest]] += 1
    for g in np.flatnonzero(sizes == 0):  # every group gets a client, taken from the largest
        sizes[int(np.argmax(sizes))] -= 1
        sizes[g] = 1
    return sizes


def _domain_groups(
    num_clients: int, shares: tuple[float, ...], client_order: list[int] | None
) -> np.ndarray:
    """Group of each client (index = client), groups filled in ``client_order``."""
    order = list(range(num_clients)) if client_order is None else [int(c) for c in client_order]
    if sorted(order) != list(range(num_clients)):
        raise ValueError('"client_order" must be a permutation of the client indices')
    sizes = group_sizes(num_clients, shares)
    member = np.empty(num_clients, dtype=np.int64)
    member[order] = np.repeat(np.arange(len(sizes)), sizes)
    return member


def domain_transform(x: np.ndarray | object, group: int, kind: str = "permute", seed: int = 0):  # noqa: ANN201
    """Group ``group``'s fixed input transform of a batch ``x`` (tensor or array, ``(N, ...)``).

    ``kind="permute"``: a fixed permutation of the input features (pixels) drawn
    from ``numpy.random.default_rng([seed, group])``; group 0 is the identity
    (the "permuted MNIST" domains of continual learning, Goodfellow et al. 2013,
    arXiv:1312.6211). ``kind="rotate"``: images ``(N, C, H, W)`` with H == W are
    rotated by ``90 * (group mod 4)`` degrees and, for groups 4-7, also
    transposed (mirrored), so up to 8 groups get distinct transforms. The same
    ``(group, kind, seed)`` always gives the same transform. Returns the same
    type and shape as ``x``.

    Raises:
        ValueError: unknown ``kind``, negative ``group``, or ``rotate`` on
            non-square images or more than 8 groups.
    """
    import torch

    if group < 0:
        raise ValueError('"group" must be >= 0')
    t = torch.as_tensor(x)
    if kind == "permute":
        if group == 0:
            out = t.clone()
        else:
            d = int(np.prod(t.shape[1:]))
            perm = torch.as_tensor(np.random.default_rng([int(seed), int(group)]).permutation(d))
            out = t.reshape(t.shape[0], d)[:, perm].reshape(t.shape)
    elif kind == "rotate":
        if t.ndim != 4 or t.shape[-1] != t.shape[-2]:
            raise ValueError('"rotate" needs square images (N, C, H, W)')
        if group >= 8:
            raise ValueError('"rotate" has 8 distinct transforms; use "permute" for more groups')
        out = torch.rot90(t, k=group % 4, dims=(-2, -1))
        if group >= 4:
            out = out.transpose(-2, -1)
        out = out.contiguous()
    else:
        raise ValueError(f'unknown domain transform "{kind}"; expected one of {", ".join(DOMAIN_TRANSFORMS)}')
    return out if isinstance(x, torch.Tensor) else out.numpy()
