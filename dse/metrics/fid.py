"""Owns image quality: the Fréchet distance (FD) between generated images and a data set, via torch-fidelity.

FD is torch-fidelity's FID formula evaluated in the feature space of an extractor chosen per data set
(`EXTRACTORS`). Inception features mean little on 8x8 grey digits, so for `digits` dse trains a small
classifier once (deterministically, on CPU, in a few seconds), caches it under `assets.extractors_dir()`,
registers it with torch-fidelity as `dse-digits-classifier-v1` and measures FD on its penultimate
layer. The result is reported honestly as `fid`, with `fid_extractor` naming the extractor, never as "FID".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dse.data.datasets import load_dataset, load_digits
from dse.errors import DseError
from dse.fileio import atomic_write
from dse.metrics.assets import extractors_dir, fidelity_cache_dir

DIGITS_EXTRACTOR = "dse-digits-classifier-v1"

# Data set name -> name of the feature extractor its FD is measured with.
EXTRACTORS: dict[str, str] = {"digits": DIGITS_EXTRACTOR}

_BATCH_SIZE = 256  # images per feature-extraction batch


class DigitsClassifier(nn.Module):
    """A small CNN on 8x8 grey digits: uint8 (B, 1, 8, 8) -> (penultimate features (B, 64), logits (B, 10))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / 127.5 - 1.0  # (B, 1, 8, 8) in [-1, 1]
        x = F.relu(self.conv1(x))  # (B, 32, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 4, 4)
        penultimate = F.relu(self.fc(x.flatten(1)))  # (B, 64)
        return penultimate, self.head(penultimate)  # (B, 64), (B, 10)


@dataclass(frozen=True)
class ClassifierTraining:
    """How the digits classifier is trained; part of its identity (changing it needs a new `-vN` name)."""

    seed: int = 0
    holdout_fraction: float = 0.2
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3


DIGITS_TRAINING = ClassifierTraining()


def digits_holdout_split(
    labels: np.ndarray, cfg: ClassifierTraining = DIGITS_TRAINING
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), sorted: a seeded permutation per class holds out a fixed fraction."""
    rng = np.random.default_rng(cfg.seed)
    held_out = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        held_out.append(members[: round(cfg.holdout_fraction * len(members))])
    test = np.sort(np.concatenate(held_out))
    return np.setdiff1d(np.arange(len(labels)), test), test


def ensure_digits_classifier() -> Path:
    """Path of the cached digits classifier weights, training and caching them on first use only.

    The state dict sits in `extractors_dir()/dse-digits-classifier-v1.pt`, next to a JSON sidecar
    (same name, `.json`) with the held-out accuracy, the training settings and the weights' sha256.
    Both are written atomically, the sidecar first, so an existing weights file is always complete.
    """
    path = extractors_dir() / f"{DIGITS_EXTRACTOR}.pt"
    if path.exists():
        return path
    state, info = _train_digits_classifier(DIGITS_TRAINING)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    info["sha256"] = hashlib.sha256(weights).hexdigest()
    atomic_write(path.with_suffix(".json"), json.dumps(info, indent=2))
    atomic_write(path, weights)
    return path


def load_digits_classifier() -> DigitsClassifier:
    """The cached digits classifier (trained on first use), on CPU, in eval mode."""
    net = DigitsClassifier()
    net.load_state_dict(torch.load(ensure_digits_classifier(), map_location="cpu", weights_only=True))
    return net.eval()


def _train_digits_classifier(cfg: ClassifierTraining) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Train on a fixed stratified split of `load_digits()`; returns (state dict, sidecar info)."""
    data = load_digits()
    train, test = digits_holdout_split(data.labels, cfg)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()  # (N, 1, 8, 8) uint8
    y = torch.from_numpy(data.labels)
    start = time.perf_counter()
    with _single_thread(), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(cfg.seed)
        net = DigitsClassifier()
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        order = torch.Generator().manual_seed(cfg.seed)
        x_train, y_train = x[train], y[train]
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x_train), generator=order)
            for batch in perm.split(cfg.batch_size):
                loss = F.cross_entropy(net(x_train[batch])[1], y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(x[test])[1].argmax(1) == y[test]).double().mean().item()
    info = {
        "extractor": DIGITS_EXTRACTOR,
        "dataset": data.name,
        "heldout_accuracy": accuracy,
        "num_train": len(train),
        "num_heldout": len(test),
        "training": asdict(cfg),
        "train_seconds": round(time.perf_counter() - start, 3),
        "torch_version": torch.__version__,
    }
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, info


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread (results then do not depend on the core count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DigitsClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over `DigitsClassifier`: 'penultimate' (B, 64) and 'logits' (B, 10).

    Reads uint8 (B, 1, 8, 8) images. Its weights come from `feature_extractor_weights_path`, which dse
    always passes; it never downloads anything.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: object,  # torch-fidelity hands every calculate_metrics argument to the extractor
    ) -> None:
        super().__init__(name, features_list)
        vassert(
            feature_extractor_weights_path is not None,
            f"{name} needs feature_extractor_weights_path (dse.metrics.fid.ensure_digits_classifier())",
        )
        self.net = DigitsClassifier()
        self.net.load_state_dict(torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # too small for compilation to pay off

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vassert(
            x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8),
            f"expected uint8 (B, 1, 8, 8) images, got {x.dtype} {tuple(x.shape)}",
        )
        penultimate, logits = self.net(x)
        features = {"penultimate": penultimate, "logits": logits}
        return tuple(features[name] for name in self.features_list)


@dataclass(frozen=True)
class _Extractor:
    """How to measure FD with one registered extractor: its class, FD feature layer and local weights."""

    cls: type[FeatureExtractorBase]
    fd_layer: str
    weights: Callable[[], Path]  # local weights file; trains or locates it, never downloads


_EXTRACTOR_SPECS: dict[str, _Extractor] = {
    DIGITS_EXTRACTOR: _Extractor(DigitsClassifierExtractor, "penultimate", ensure_digits_classifier),
}


def register_extractors() -> None:
    """Register dse's feature extractors with torch-fidelity; calling it again is a no-op."""
    for name, spec in _EXTRACTOR_SPECS.items():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, spec.cls)


class _UInt8Images(Dataset):
    """uint8 NHWC numpy images served as the uint8 CHW tensors torch-fidelity reads."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))  # (C, H, W)


def image_quality(images: np.ndarray, dataset: str, *, device: str = "cpu") -> dict[str, float | int | str]:
    """FD of generated `images` (uint8 NHWC) to the full training set of `dataset`.

    Returns {"fid", "fid_extractor", "fid_reference" (e.g. "digits:train:1797"), "fid_num_samples"}.
    The reference statistics are cached by torch-fidelity under `assets.fidelity_cache_dir()`, keyed
    by data set, split, size, extractor and a digest of its weights.
    """
    extractor = EXTRACTORS.get(dataset)
    if extractor is None:
        raise DseError(f"no FD feature extractor for data set {dataset!r}; known: {', '.join(sorted(EXTRACTORS))}")
    reference = load_dataset(dataset).images  # (M, H, W, C) uint8
    _check_images(images, reference.shape[1:], dataset)
    torch_device = _resolve_device(device)
    spec = _EXTRACTOR_SPECS[extractor]
    weights = spec.weights()
    register_extractors()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    with torch.cuda.device(torch_device) if torch_device.type == "cuda" else contextlib.nullcontext():
        metrics = torch_fidelity.calculate_metrics(
            input1=_UInt8Images(images),
            input2=_UInt8Images(reference),
            # torch-fidelity appends "-{extractor}-stat-fid-{layer}" to this name for its cache files
            input2_cache_name=f"dse-{dataset}-train-{len(reference)}-weights-{digest}",
            fid=True,
            feature_extractor=extractor,
            feature_layer_fid=spec.fd_layer,
            feature_extractor_weights_path=str(weights),
            cuda=torch_device.type == "cuda",
            batch_size=_BATCH_SIZE,
            save_cpu_ram=True,  # no DataLoader worker processes: the images are already in memory
            cache=True,
            cache_root=str(fidelity_cache_dir()),
            datasets_download=False,
            verbose=False,
        )
    return {
        "fid": float(metrics[torch_fidelity.KEY_METRIC_FID]),
        "fid_extractor": extractor,
        "fid_reference": f"{dataset}:train:{len(reference)}",
        "fid_num_samples": len(images),
    }


def _check_images(images: object, image_shape: tuple[int, ...], dataset: str) -> None:
    """Raise DseError unless `images` is a uint8 (N, H, W, C) array of `dataset`'s geometry with N >= 2."""
    expected = f"uint8 NHWC images of shape (N, {', '.join(map(str, image_shape))}) like {dataset!r}"
    if not isinstance(images, np.ndarray):
        raise DseError(f"image quality needs a numpy array of {expected}; got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DseError(
            f"image quality needs {expected}; got dtype {images.dtype} (convert with dse.data.datasets.to_uint8)"
        )
    if images.ndim != 4 or images.shape[1:] != tuple(image_shape):
        raise DseError(f"image quality needs {expected}; got shape {images.shape}")
    if len(images) < 2:
        raise DseError(f"image quality needs at least 2 images to estimate a covariance; got {len(images)}")


def _resolve_device(device: str) -> torch.device:
    """`device` as a torch.device: 'cpu', or 'cuda' / 'cuda:N' when CUDA is available; else DseError."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DseError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cpu" or (resolved.type == "cuda" and torch.cuda.is_available()):
        return resolved
    raise DseError(f"device {device!r} is not available for image quality; use 'cpu' or an available 'cuda[:N]'")
