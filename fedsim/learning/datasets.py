"""Datasets: load a named dataset into float32 tensors with a train pool and a test set.

``load_dataset(name, data_dir, rng=...)`` returns a :class:`Dataset`. Inputs are
normalised (``[0, 1]`` then standardised per channel for images; per feature for
``synthetic``); labels are int64. Nothing is downloaded: real datasets are read
from ``data_dir`` in their standard release formats.

Names:

- ``"digits"``: scikit-learn's bundled 8x8 digits (no files), shape ``(1, 8, 8)``,
  scaled to ``[0, 1]``; split into train / test with ``rng`` by ``test_fraction``.
- ``"mnist"`` / ``"fashion_mnist"``: IDX files (gzipped or not) with the standard
  names ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. If both train and
  t10k files are present they are the train pool and the test set. If only the
  t10k files are present (as in a folder holding the MNIST test set alone) the
  10,000 t10k images are the whole pool, split deterministically with ``rng``
  into train and test by ``test_fraction``.
- ``"cifar10"``: the CIFAR-10 python batches (``data_batch_*``, ``test_batch``,
  optional ``batches.meta``), either directly in ``data_dir`` or in
  ``data_dir/cifar-10-batches-py``. Any number of ``data_batch_*`` files is
  accepted, so a subset with the same layout reads unchanged. Normalised with
  per-channel mean / std of the train pool.
- ``"synthetic"``: Gaussian clusters for fast tests (``num_classes``, ``dim``,
  ``n``, ``class_sep``, ``feature_noise`` (noise std; higher = more feature
  overlap) and ``label_skew`` (class c has prior probability proportional to
  ``exp(-label_skew * c)``; 0 = balanced).

A missing or malformed directory raises :class:`DatasetError` (a ``ValueError``)
whose one-line message names the directory and the files expected.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "DatasetError", "load_dataset", "DATASET_NAMES"]

DATASET_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic")


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete or malformed."""


@dataclass
class Dataset:
    """A dataset held in memory.

    ``x_train`` / ``x_test`` are float32 tensors of shape ``(N, C, H, W)`` for
    images or ``(N, D)`` for vectors; ``y_train`` / ``y_test`` are int64 of shape
    ``(N,)``. ``input_shape`` is the shape of one sample (without the batch axis).
    The "train" part is the pool that partitioners split among clients.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    rng: np.random.Generator | None = None,
    test_fraction: float = 0.2,
    **kw: object,
) -> Dataset:
    """Load dataset ``name`` (see module docstring) from ``data_dir``.

    ``rng`` drives every random choice (splits, synthetic samples); if ``None`` a
    generator seeded with 0 is used, so the result is still deterministic.
    ``test_fraction`` is the share of the pool held out as the test set when the
    source has no separate test set (digits, t10k-only MNIST, synthetic).
    Extra keyword arguments go to the synthetic generator.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError('"test_fraction" must be in (0, 1)')
    rng = rng if rng is not None else np.random.default_rng(0)
    if kw and name != "synthetic":
        raise ValueError(f'dataset "{name}" takes no extra options, got {", ".join(sorted(kw))}')
    if name == "digits":
        return _load_digits(rng, test_fraction)
    if name in ("mnist", "fashion_mnist"):
        return _load_idx(name, _require_dir(name, data_dir), rng, test_fraction)
    if name == "cifar10":
        return _load_cifar10(_require_dir(name, data_dir))
    if name == "synthetic":
        return _make_synthetic(rng, test_fraction, **kw)  # type: ignore[arg-type]
    raise ValueError(f'unknown dataset "{name}"; expected one of {", ".join(DATASET_NAMES)}')


# ---------------------------------------------------------------------------- helpers


def _require_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DatasetError(f'dataset "{name}" needs a data_dir; {_EXPECTED[name]}')
    path = Path(data_dir)
    if not path.is_dir():
        raise DatasetError(f"dataset directory {path} does not exist; {_EXPECTED[name]}")
    return path


_EXPECTED = {
    "mnist": "expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
    "(optionally train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])",
    "fashion_mnist": "expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
    "(optionally train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])",
    "cifar10": "expected data_batch_1..5 and test_batch (optionally batches.meta), "
    "in the directory or in its cifar-10-batches-py/",
}


def _split(n: int, rng: np.random.Generator, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _standardise(
    x_train: np.ndarray, x_test: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    return _scaled(x_train, mean, std), _scaled(x_test, mean, std)


def _scaled(x: np.ndarray, mean: np.ndarray, std: np.ndarray, rows: int = 65536) -> np.ndarray:
    """``((x - mean) / std)`` as float32, computed in row chunks (the same values as one
    expression, without full-size float64 temporaries: a city's pool has 10^6-10^7 rows)."""
    out = np.empty(x.shape, dtype=np.float32)
    for a in range(0, x.shape[0], rows):
        out[a:a + rows] = ((x[a:a + rows] - mean) / std).astype(np.float32)
    return out


def _make(
    name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, num_classes: int
) -> Dataset:
    return Dataset(
        x_train=torch.from_numpy(np.ascontiguousarray(xtr, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(ytr, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(xte, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(yte, dtype=np.int64)),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in xtr.shape[1:]),
        name=name,
    )


def _load_digits(rng: np.random.Generator, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = _split(len(y), rng, test_fraction)
    return _make("digits", x[tr], y[tr], x[te], y[te], 10)


def _find(path: Path, stem: str) -> Path | None:
    for cand in (path / stem, path / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _read_idx(file: Path, expected_dims: int, directory: Path, name: str) -> np.ndarray:
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
            raise ValueError("bad IDX header")
        dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError("truncated IDX payload")
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DatasetError(
            f"malformed IDX file {file.name} in {directory} ({exc}); {_EXPECTED[name]}"
        ) from None


def _load_idx(name: str, path: Path, rng: np.random.Generator, test_fraction: float) -> Dataset:
    files = {
        k: _find(path, stem)
        for k, stem in {
            "train_x": "train-images-idx3-ubyte",
            "train_y": "train-labels-idx1-ubyte",
            "test_x": "t10k-images-idx3-ubyte",
            "test_y": "t10k-labels-idx1-ubyte",
        }.items()
    }
    if files["test_x"] is None or files["test_y"] is None:
        raise DatasetError(f"dataset directory {path} lacks the {name} files; {_EXPECTED[name]}")
    xte = _read_idx(files["test_x"], 3, path, name)
    yte = _read_idx(files["test_y"], 1, path, name)
    if len(xte) != len(yte):
        raise DatasetError(f"image / label counts differ in {path}; {_EXPECTED[name]}")
    if files["train_x"] is not None and files["train_y"] is not None:
        xtr = _read_idx(files["train_x"], 3, path, name)
        ytr = _read_idx(files["train_y"], 1, path, name)
    else:  # t10k only: it is the whole pool, split with rng
        tr, te = _split(len(yte), rng, test_fraction)
        xtr, ytr, xte, yte = xte[tr], yte[tr], xte[te], yte[te]
    xtr_f = xtr.astype(np.float32)[:, None] / 255.0
    xte_f = xte.astype(np.float32)[:, None] / 255.0
    xtr_f, xte_f = _standardise(xtr_f, xte_f, axes=(0, 2, 3))
    return _make(name, xtr_f, ytr, xte_f, yte, 10)


def _read_cifar_batch(file: Path, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(file, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError("unexpected array shapes")
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError, TypeError) as exc:
        raise DatasetError(
            f"malformed CIFAR-10 batch {file.name} in {directory} ({exc}); {_EXPECTED['cifar10']}"
        ) from None
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(path: Path) -> Dataset:
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.is_file():
        raise DatasetError(
            f"dataset directory {path} lacks CIFAR-10 batches; {_EXPECTED['cifar10']}"
        )
    parts = [_read_cifar_batch(f, root) for f in train_files]
    xtr = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    ytr = np.concatenate([p[1] for p in parts])
    xte_u8, yte = _read_cifar_batch(test_file, root)
    xte = xte_u8.astype(np.float32) / 255.0
    xtr, xte = _standardise(xtr, xte, axes=(0, 2, 3))
    return _make("cifar10", xtr, ytr, xte, yte, 10)


def _make_synthetic(
    rng: np.random.Generator,
    test_fraction: float,
    *,
    num_classes: int = 4,
    dim: int = 16,
    n: int = 2000,
    class_sep: float = 3.0,
    feature_noise: float = 1.0,
    label_skew: float = 0.0,
) -> Dataset:
    """Gaussian clusters: class c has mean ``class_sep * mu_c`` (``mu_c`` a random unit
    vector) and isotropic noise ``feature_noise``; class prior proportional to
    ``exp(-label_skew * c)`` (0 = balanced)."""
    if num_classes < 2 or dim < 1 or n < 4:
        raise ValueError('"num_classes" must be >= 2, "dim" >= 1 and "n" >= 4')
    prior = np.exp(-float(label_skew) * np.arange(num_classes))
    prior /= prior.sum()
    means = rng.standard_normal((num_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.choice(num_classes, size=n, p=prior).astype(np.int64)
    x = rng.standard_normal((n, dim))
    for a in range(0, n, 65536):  # = class_sep * means[y] + feature_noise * noise, in place
        x[a:a + 65536] = class_sep * means[y[a:a + 65536]] + feature_noise * x[a:a + 65536]
    tr, te = _split(n, rng, test_fraction)
    xte = x[te]
    x = x[tr]
    xtr, xte = _standardise(x, xte, axes=(0,))
    return _make("synthetic", xtr, y[tr], xte, y[te], num_classes)
