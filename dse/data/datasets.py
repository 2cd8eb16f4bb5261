"""Owns the image data sets a teacher or a metric reads: uint8 NHWC images, labels, class names, geometry.

Each data set is a small loader `(root, split, download) -> ImageDataset` registered in `DATASETS`;
`load_dataset(name, root, split, download)` is the one entry point:

- `digits`: scikit-learn's `load_digits` (8x8x1, 10 classes), inside the scikit-learn wheel and so
  always available offline. `root` and `download` do not apply; its only split is "train" (all
  1,797 images: scikit-learn ships no test split, and "test" is an error rather than a silent copy).
- `fashion-mnist` (28x28x1, 10 classes; 60,000 train / 10,000 test images): torchvision's folder
  `root/FashionMNIST/raw/`, or a folder of the idx files themselves, gzipped or not, such as
  Debian's `dataset-fashion-mnist` package at /usr/share/datasets/fashion-mnist.
- `cifar10` (32x32x3, 10 classes; 50,000 train / 10,000 test images): torchvision's folder
  `root/cifar-10-batches-py/`, or `root` an `.npz` file with `x_train`/`y_train` (uint8 NHWC
  images, integer labels), `x_test`/`y_test` and optionally `classes`.

`root` defaults to `default_data_root()`. Nothing is fetched unless `download=True` (torchvision's
downloader, which needs internet); a data set that is not there is one DseError naming the root
it looked in and how to get the data.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.error import URLError

import numpy as np

from dse.config import GEOMETRIES, dataset_geometry  # the names and geometries, kept light in config
from dse.errors import DseError
from dse.types import Geometry

DATA_ENV = "DSE_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/dse/data")
SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

T = TypeVar("T")


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set. `images` are uint8 NHWC, `labels` int64 in [0, num_classes)."""

    name: str
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]

    @property
    def geometry(self) -> Geometry:
        _, h, w, c = self.images.shape
        assert h == w, "dse supports square images"
        return Geometry(image_size=h, channels=c, num_classes=len(self.class_names))

    def as_float(self) -> np.ndarray:
        """Images as float32 NCHW in [-1, 1] (the convention inside dse)."""
        return to_float(self.images)


def to_float(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = images_uint8_nhwc.astype(np.float32).transpose(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_uint8(images_float_nchw: np.ndarray) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (clipped, rounded)."""
    x = (np.asarray(images_float_nchw, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def default_data_root() -> Path:
    """Where data sets are looked for when no root is given: `$DSE_DATA` if set (and not empty),
    else `~/.cache/dse/data`. Not created here: only a download (`download=True`) writes into it."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT).expanduser()


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 handwritten digits; pixel values 0..16 are scaled to 0..255."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return ImageDataset(
        name="digits",
        images=images,
        labels=d.target.astype(np.int64),
        class_names=tuple(str(i) for i in range(10)),
    )


def _digits(root: Path, split: str, download: bool) -> ImageDataset:
    """`load_digits` for the registry; scikit-learn ships one set of images, so "train" is the only split."""
    if split != "train":
        raise DseError(f"digits has no {split!r} split: scikit-learn ships one set of 1,797 images; use split 'train'")
    return load_digits()


def _fashion_mnist(root: Path, split: str, download: bool) -> ImageDataset:
    """Fashion-MNIST's `split` from `root`, in either of two layouts.

    - torchvision's `root/FashionMNIST/raw/` (un-gzipped idx files, what `download=True` writes),
      read by `torchvision.datasets.FashionMNIST`;
    - the idx files directly in `root`, gzipped or not (e.g. root=/usr/share/datasets/fashion-mnist
      from Debian's `dataset-fashion-mnist`), read in place with gzip + numpy, nothing unpacked or
      copied; used when `root/FashionMNIST/raw/` does not exist.
    """
    from torchvision.datasets import FashionMNIST

    prefix = "train" if split == "train" else "t10k"
    image_file = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_file = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    if not (root / "FashionMNIST" / "raw").is_dir() and image_file and label_file:
        images, labels = _read_idx(image_file), _read_idx(label_file)  # (N, 28, 28), (N,)
    else:
        ds = _torchvision("fashion-mnist", split, root, lambda: FashionMNIST(root, train=split == "train", download=download))
        images, labels = ds.data.numpy(), ds.targets.numpy()
    return _checked("fashion-mnist", root, images[..., None], labels, tuple(FashionMNIST.classes))


def _idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever is a file (None if neither)."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (the (Fashion-)MNIST format; gzipped if its name ends in .gz).

    Header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then each
    dimension as a big-endian uint32; the values follow.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DseError(f"{path}: cannot read it ({exc}); replace the file (e.g. reinstall dataset-fashion-mnist)") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DseError(f"{path}: not an idx file of unsigned bytes (header {data[:4].hex()}, expected 000008..)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != offset + math.prod(shape):
        raise DseError(f"{path}: header says {shape} values but the file holds {len(data) - offset} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _cifar10(root: Path, split: str, download: bool) -> ImageDataset:
    """CIFAR-10's `split` from an `.npz` file (`root` ending in .npz) or torchvision's `root/cifar-10-batches-py/`.

    The .npz holds `x_{split}` (N, 32, 32, 3) uint8 NHWC, `y_{split}` (N,) integer labels and
    optionally `classes` (10,) str, read without unpickling; e.g. ../shared/assets/cifar10_exact_subset.npz.
    torchvision checks every batch file's md5 before reading the folder.
    """
    if root.suffix == ".npz":
        images, labels, classes = _read_npz(root, split)
    else:
        from torchvision.datasets import CIFAR10

        ds = _torchvision("cifar10", split, root, lambda: CIFAR10(root, train=split == "train", download=download))
        images, labels, classes = ds.data, np.asarray(ds.targets), tuple(ds.classes)  # data is (N, 32, 32, 3) uint8
    return _checked("cifar10", root, images, labels, classes)


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """`x_{split}`, `y_{split}` and the class names (CIFAR-10's when `classes` is absent) from an .npz."""
    if not path.is_file():
        raise DseError(f"cifar10 not found: no file {path}; {_how_to_get('cifar10', split)}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DseError(f"{path}: a single .npy array, not an .npz archive; {_how_to_get('cifar10', split)}")
        with npz:
            keys = (f"x_{split}", f"y_{split}")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DseError(
                    f"{path}: no {' or '.join(missing)} in it (it holds {', '.join(npz.files) or 'nothing'}); "
                    "a CIFAR-10 .npz holds x_train/y_train and x_test/y_test (uint8 NHWC images, integer labels)"
                )
            classes = tuple(str(c) for c in npz["classes"]) if "classes" in npz.files else CIFAR10_CLASSES
            return npz[keys[0]], npz[keys[1]], classes
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # not a zip, truncated, or object (pickled) arrays
        reason = " ".join(str(exc).split())
        raise DseError(f"{path}: cannot read it as an .npz of plain arrays (numpy: {reason})") from None


def _torchvision(name: str, split: str, root: Path, make: Callable[[], T]) -> T:
    """`make()` a torchvision data set; its missing-files and failed-download errors become one DseError line."""
    try:
        return make()
    except (RuntimeError, URLError) as exc:  # "Dataset not found ...", or no network with download=True
        reason = " ".join(str(exc).split())
        raise DseError(f"{name} ({split}) not found in {root} (torchvision: {reason}); {_how_to_get(name, split)}") from None


def _how_to_get(name: str, split: str) -> str:
    """What a root for `name` must hold, and where to get it (the tail of a not-found message)."""
    if name == "fashion-mnist":
        prefix = "train" if split == "train" else "t10k"
        where = (
            f"the root must hold torchvision's FashionMNIST/raw/ folder or the idx files "
            f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]; offline, "
            "`apt-get install dataset-fashion-mnist` then `--data-root /usr/share/datasets/fashion-mnist`"
        )
    else:
        where = (
            "give a folder holding torchvision's cifar-10-batches-py/, or an .npz file with x_train/y_train "
            "and x_test/y_test (uint8 NHWC images, integer labels)"
        )
    return f"{where}; download=True fetches it with torchvision, which needs internet (default root: ${DATA_ENV} or {DEFAULT_DATA_ROOT})"


def _checked(name: str, source: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> ImageDataset:
    """An ImageDataset, once the arrays match the data set's geometry; a DseError naming `source` if not."""
    g = GEOMETRIES[name]
    shape = (g.image_size, g.image_size, g.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape or len(images) == 0:
        raise DseError(
            f"{source}: {name} images must be uint8 of shape (N, {', '.join(map(str, shape))}) with N > 0 (NHWC); "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DseError(f"{source}: {name} needs one integer label per image, shape ({len(images)},); got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= g.num_classes:
        raise DseError(f"{source}: {name} labels must lie in 0..{g.num_classes - 1}; got {labels.min()}..{labels.max()}")
    if len(class_names) != g.num_classes:
        raise DseError(f"{source}: {name} has {g.num_classes} classes; got {len(class_names)} class names")
    return ImageDataset(name=name, images=images, labels=labels.astype(np.int64), class_names=class_names)


Loader = Callable[[Path, str, bool], ImageDataset]
DATASETS: dict[str, Loader] = {"digits": _digits, "fashion-mnist": _fashion_mnist, "cifar10": _cifar10}


def load_dataset(name: str, root: str | Path | None = None, split: str = "train", download: bool = False) -> ImageDataset:
    """The `split` ("train" or "test") of the data set registered under `name`, read from `root`.

    `root` is a folder, or for cifar10 also an .npz file; None means `default_data_root()`; digits
    ignores it. `download=True` lets torchvision fetch a missing data set into `root` (needs
    internet); otherwise nothing touches the network. Unknown names and splits, and data sets that
    are missing or malformed, are DseErrors that say what to do.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DseError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}") from None
    if split not in SPLITS:
        raise DseError(f"unknown split {split!r} for {name}; known: {', '.join(SPLITS)}")
    return loader(default_data_root() if root is None else Path(root).expanduser(), split, download)
