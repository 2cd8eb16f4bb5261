"""Owns the image data sets a teacher or a metric reads: uint8 NHWC images, labels, class names, geometry.

The skeleton ships `digits` (scikit-learn's `load_digits`, 8x8x1, 10 classes), which is inside the
scikit-learn wheel and so always available offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dse.config import Geometry
from dse.errors import DseError


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


DATASETS: dict[str, Callable[[], ImageDataset]] = {"digits": load_digits}


def load_dataset(name: str) -> ImageDataset:
    """The data set registered under `name`; an unknown name is a DseError listing the known ones."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DseError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}") from None
    return loader()


# Geometry of each registered data set, known without loading it (for `dse space` / `dse propose`).
GEOMETRIES: dict[str, Geometry] = {"digits": Geometry(image_size=8, channels=1, num_classes=10)}


def dataset_geometry(name: str, patch_size: int = 2) -> Geometry:
    """Geometry of a registered data set with the given patch size."""
    if name not in GEOMETRIES:
        raise DseError(f"unknown data set {name!r}; known: {', '.join(sorted(GEOMETRIES))}")
    g = GEOMETRIES[name]
    return Geometry(g.image_size, g.channels, g.num_classes, patch_size)
