"""Tests for dse.data.datasets: digits, fashion-mnist (both layouts), cifar10 (.npz and torchvision), errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dse.types import Geometry
from dse.data import datasets
from dse.data.datasets import (
    CIFAR10_CLASSES,
    DATASETS,
    GEOMETRIES,
    dataset_geometry,
    default_data_root,
    load_dataset,
    to_float,
    to_uint8,
)
from dse.errors import DseError

CIFAR_SUBSET = Path(__file__).resolve().parents[2].parent / "shared/assets/cifar10_exact_subset.npz"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: 0, 0, type 0x08, ndim, big-endian uint32 dims, then the values."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _fashion_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_fashion(folder: Path, gz: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny Fashion-MNIST idx files (20 train, 7 test images) in `folder`; returns the arrays per split."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": _fashion_arrays(20, seed=1), "test": _fashion_arrays(7, seed=2)}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return arrays


def _assert_fashion(ds: datasets.ImageDataset, images: np.ndarray, labels: np.ndarray) -> None:
    assert ds.name == "fashion-mnist"
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(images), 28, 28, 1)
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == FASHION_CLASSES
    assert ds.geometry == dataset_geometry("fashion-mnist")


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


# --- registry, geometry, conversions -------------------------------------------------------------


def test_registry_and_geometries_agree():
    assert set(DATASETS) == set(GEOMETRIES) == {"digits", "fashion-mnist", "cifar10"}
    assert dataset_geometry("fashion-mnist", patch_size=4) == Geometry(28, 1, 10, 4)
    assert dataset_geometry("cifar10") == Geometry(32, 3, 10, 2)


def test_unknown_name_and_split_are_errors():
    with pytest.raises(DseError, match="unknown data set 'mnist'.*cifar10, digits, fashion-mnist"):
        load_dataset("mnist")
    with pytest.raises(DseError, match="unknown split 'val'.*train, test"):
        load_dataset("cifar10", split="val")
    with pytest.raises(DseError, match="unknown data set"):
        dataset_geometry("mnist")


def test_to_float_to_uint8_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    x = to_float(images)
    assert x.dtype == np.float32 and x.shape == (5, 3, 6, 6)
    assert x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(x), images)
    np.testing.assert_array_equal(to_uint8(np.full((1, 1, 2, 2), 3.0)), np.full((1, 2, 2, 1), 255, np.uint8))


def test_default_root_follows_dse_data(monkeypatch, tmp_path):
    monkeypatch.setenv("DSE_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.setenv("DSE_DATA", "")
    assert default_data_root() == Path("~/.cache/dse/data").expanduser()
    monkeypatch.delenv("DSE_DATA")
    assert default_data_root() == Path("~/.cache/dse/data").expanduser()


# --- digits --------------------------------------------------------------------------------------


def test_digits_unchanged(tmp_path):
    ds = load_dataset("digits", root=tmp_path / "ignored")
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert ds.geometry == dataset_geometry("digits")
    np.testing.assert_array_equal(load_dataset("digits").images, ds.images)


def test_digits_has_no_test_split():
    with pytest.raises(DseError, match="digits has no 'test' split"):
        load_dataset("digits", split="test")


# --- fashion-mnist -------------------------------------------------------------------------------


def test_fashion_class_names_are_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert tuple(FashionMNIST.classes) == FASHION_CLASSES


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, gz):
    """Debian's layout: the idx files directly in root (read with numpy, no torchvision folder)."""
    arrays = _write_fashion(tmp_path, gz=gz)
    for split in ("train", "test"):
        _assert_fashion(load_dataset("fashion-mnist", root=tmp_path, split=split), *arrays[split])


def test_fashion_mnist_from_torchvisions_folder(tmp_path):
    arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    for split in ("train", "test"):
        _assert_fashion(load_dataset("fashion-mnist", root=str(tmp_path), split=split), *arrays[split])


def test_fashion_mnist_default_root_is_dse_data(monkeypatch, tmp_path):
    arrays = _write_fashion(tmp_path, gz=True)
    monkeypatch.setenv("DSE_DATA", str(tmp_path))
    _assert_fashion(load_dataset("fashion-mnist"), *arrays["train"])


def test_fashion_mnist_missing_is_one_clear_error(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DseError) as err:
        load_dataset("fashion-mnist", root=root, split="test")
    message = str(err.value)
    assert "\n" not in message
    assert f"fashion-mnist (test) not found in {root}" in message
    assert "t10k-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "/usr/share/datasets/fashion-mnist" in message
    assert "internet" in message
    assert not root.exists()  # nothing was created (no download attempted)


def test_fashion_mnist_half_a_split_is_not_found(tmp_path):
    _write_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DseError, match="not found in"):
        load_dataset("fashion-mnist", root=tmp_path, split="test")
    assert load_dataset("fashion-mnist", root=tmp_path, split="train").images.shape == (20, 28, 28, 1)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not gzip at all", "cannot read it"),
        (gzip.compress(b"\x00\x00\x0d\x03" + bytes(12)), "not an idx file of unsigned bytes"),
        (gzip.compress(_idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-5]), "truncated"),
        (gzip.compress(_idx_bytes(np.zeros((20, 27, 27), np.uint8))), r"shape \(N, 28, 28, 1\)"),
    ],
)
def test_fashion_mnist_bad_idx_file(tmp_path, content, match):
    _write_fashion(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(DseError, match=match):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_labels_out_of_range(tmp_path):
    _write_fashion(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(20, 10, np.uint8)))
    with pytest.raises(DseError, match=r"labels must lie in 0..9; got 10..10"):
        load_dataset("fashion-mnist", root=tmp_path)


# --- cifar10 -------------------------------------------------------------------------------------


def test_cifar10_from_an_npz(tmp_path):
    (x_train, y_train), (x_test, y_test) = _cifar_arrays(12, seed=3), _cifar_arrays(5, seed=4)
    path = _write_npz(tmp_path / "c.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        ds = load_dataset("cifar10", root=path, split=split)
        assert ds.name == "cifar10" and ds.class_names == CIFAR10_CLASSES
        np.testing.assert_array_equal(ds.images, x)
        np.testing.assert_array_equal(ds.labels, y)
        assert ds.labels.dtype == np.int64
        assert ds.geometry == dataset_geometry("cifar10")


def test_cifar10_npz_classes_and_small_label_dtypes(tmp_path):
    x, y = _cifar_arrays(4, seed=5)
    names = np.array([f"c{i}" for i in range(10)])
    path = _write_npz(tmp_path / "c.npz", x_train=x, y_train=y.astype(np.uint8), classes=names)
    ds = load_dataset("cifar10", root=path)
    assert ds.class_names == tuple(names.tolist())
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, y)


def test_cifar10_real_subset():
    if not CIFAR_SUBSET.is_file():
        pytest.skip(f"shared asset {CIFAR_SUBSET} not on this machine")
    train = load_dataset("cifar10", root=CIFAR_SUBSET)
    test = load_dataset("cifar10", root=CIFAR_SUBSET, split="test")
    assert train.images.shape == (5085, 32, 32, 3) and test.images.shape == (1017, 32, 32, 3)
    assert train.class_names == test.class_names == CIFAR10_CLASSES
    assert set(train.labels.tolist()) == set(range(10))
    with np.load(CIFAR_SUBSET) as raw:
        for ds, split in ((train, "train"), (test, "test")):
            for i in (0, 1, 777, len(ds.labels) - 1):
                np.testing.assert_array_equal(ds.images[i], raw[f"x_{split}"][i])
                assert ds.labels[i] == raw[f"y_{split}"][i]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x_train": np.zeros((3, 32, 32), np.uint8), "y_train": np.zeros(3, np.int64)}, r"\(N, 32, 32, 3\).*got uint8 \(3, 32, 32\)"),
        ({"x_train": np.zeros((3, 3, 32, 32), np.uint8), "y_train": np.zeros(3, np.int64)}, r"got uint8 \(3, 3, 32, 32\)"),
        ({"x_train": np.zeros((3, 32, 32, 3), np.float32), "y_train": np.zeros(3, np.int64)}, "got float32"),
        ({"x_train": np.zeros((0, 32, 32, 3), np.uint8), "y_train": np.zeros(0, np.int64)}, "N > 0"),
        ({"x_train": np.zeros((3, 32, 32, 3), np.uint8), "y_train": np.zeros(4, np.int64)}, "one integer label per image"),
        ({"x_train": np.zeros((3, 32, 32, 3), np.uint8), "y_train": np.zeros(3, np.float32)}, "one integer label per image"),
        ({"x_train": np.zeros((3, 32, 32, 3), np.uint8), "y_train": np.full(3, -1)}, r"0..9; got -1"),
        ({"x_test": np.zeros((3, 32, 32, 3), np.uint8), "y_test": np.zeros(3, np.int64)}, "no x_train or y_train in it"),
        (
            {"x_train": np.zeros((3, 32, 32, 3), np.uint8), "y_train": np.zeros(3, np.int64), "classes": np.array(["a", "b"])},
            "got 2 class names",
        ),
    ],
    ids=["nhw", "nchw", "float", "empty", "label-count", "float-labels", "negative-label", "no-train", "classes"],
)
def test_cifar10_bad_npz(tmp_path, arrays, match):
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DseError, match=match) as err:
        load_dataset("cifar10", root=path)
    assert "\n" not in str(err.value)


def test_cifar10_npz_never_unpickles(tmp_path):
    x, y = _cifar_arrays(2, seed=6)
    path = _write_npz(tmp_path / "p.npz", x_train=x, y_train=y, classes=np.array(list(CIFAR10_CLASSES), dtype=object))
    with pytest.raises(DseError, match="cannot read it as an .npz of plain arrays"):
        load_dataset("cifar10", root=path)


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated zip", b"neither zip nor npy"], ids=["zip", "garbage"])
def test_cifar10_unreadable_npz(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DseError, match="cannot read it as an .npz"):
        load_dataset("cifar10", root=path)


def test_cifar10_npy_is_not_an_npz(tmp_path):
    path = tmp_path / "one.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DseError, match="single .npy array"):
        load_dataset("cifar10", root=path)


def test_cifar10_missing_npz_names_the_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(DseError, match=f"cifar10 not found: no file {path}"):
        load_dataset("cifar10", root=path)


def test_cifar10_missing_torchvision_folder_is_one_clear_error(tmp_path, monkeypatch):
    """Synthetic cifar-10-batches-py files cannot pass torchvision's md5 checks, so only the
    not-found path of torchvision's loader is tested; data tests use the .npz."""
    monkeypatch.setenv("DSE_DATA", str(tmp_path / "data"))
    with pytest.raises(DseError) as err:
        load_dataset("cifar10")
    message = str(err.value)
    assert "\n" not in message
    assert f"cifar10 (train) not found in {tmp_path / 'data'}" in message
    assert "cifar-10-batches-py" in message and "x_train/y_train" in message and "internet" in message
    assert not (tmp_path / "data").exists()


def test_cifar10_corrupt_torchvision_folder_is_an_error(tmp_path):
    """Files that fail torchvision's md5 check are reported like missing ones (nothing is unpickled)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"not cifar")
    with pytest.raises(DseError, match="not found or corrupted"):
        load_dataset("cifar10", root=tmp_path, split="test")
