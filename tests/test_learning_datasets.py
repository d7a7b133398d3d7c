"""Dataset loaders on the shared real data (skipped if absent) and on files made here."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.learning.datasets import DatasetError, load_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_digits() -> None:
    ds = load_dataset("digits", rng=np.random.default_rng(0))
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    again = load_dataset("digits", rng=np.random.default_rng(0))
    assert torch.equal(ds.y_test, again.y_test)


def test_synthetic_label_skew() -> None:
    ds = load_dataset(
        "synthetic", rng=np.random.default_rng(1), num_classes=5, dim=3, n=5000, label_skew=1.0
    )
    counts = np.bincount(ds.y_train.numpy(), minlength=5)
    assert ds.num_classes == 5 and ds.input_shape == (3,)
    assert (np.diff(counts) < 0).all()


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST absent")
def test_shared_mnist_t10k_only_split() -> None:
    ds = load_dataset("mnist", SHARED / "mnist", rng=np.random.default_rng(0), test_fraction=0.25)
    assert ds.x_train.shape == (7500, 1, 28, 28) and ds.x_test.shape == (2500, 1, 28, 28)
    assert np.bincount(np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])).tolist()[:2] == [
        980,
        1135,
    ]
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-2


@pytest.mark.skipif(
    not (SHARED / "cifar10-subset").is_dir(), reason="shared CIFAR-10 subset absent"
)
def test_shared_cifar10_subset() -> None:
    ds = load_dataset("cifar10", SHARED / "cifar10-subset")
    assert ds.x_train.shape == (5085, 3, 32, 32) and ds.x_test.shape == (1017, 3, 32, 32)
    assert ds.y_test[:5].tolist() == [3, 8, 8, 0, 6]  # cat, ship, ship, airplane, frog
    mean = ds.x_train.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-3)


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_full_idx_release_layout(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 12)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    ds = load_dataset("fashion_mnist", tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert ds.y_test.tolist() == (np.arange(12) % 10).tolist()
    assert ds.name == "fashion_mnist"


def test_full_cifar_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}
        (root / name).write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.y_test.tolist() == [1, 2, 3, 4]


def test_missing_directory_raises_dataset_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for name in ("mnist", "cifar10"):
        with pytest.raises(DatasetError, match="nope") as err:
            load_dataset(name, missing)
        assert "expected" in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, ValueError)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)  # exists, but empty
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError):
        load_dataset("mnist", None)


def test_malformed_files_raise_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset("cifar10", tmp_path)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
