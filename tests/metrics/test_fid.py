"""Tests for dse.metrics.fid: the cached digits classifier and FD through torch-fidelity (CPU, offline)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dse.data.datasets import ImageDataset, load_digits
from dse.errors import DseError
from dse.metrics import fid
from dse.metrics.assets import fidelity_cache_dir
from dse.metrics.fid import (
    DIGITS_EXTRACTOR,
    DigitsClassifierExtractor,
    digits_holdout_split,
    ensure_digits_classifier,
    image_quality,
    load_digits_classifier,
    register_extractors,
)


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

    monkeypatch.setattr(fid, "_train_digits_classifier", no_training)
    assert ensure_digits_classifier() == path
    assert path.stat().st_mtime_ns == mtime


def test_registration_is_idempotent() -> None:
    register_extractors()
    register_extractors()
    assert FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR] is DigitsClassifierExtractor


def test_fd_of_the_data_to_itself_is_zero(cache: Path, digits: ImageDataset) -> None:
    result = image_quality(digits.images, "digits")
    assert abs(result["fid"]) < 1e-3
    assert result == {
        "fid": result["fid"],
        "fid_extractor": "dse-digits-classifier-v1",
        "fid_reference": "digits:train:1797",
        "fid_num_samples": 1797,
    }


def test_fd_grows_with_noise(cache: Path, digits: ImageDataset) -> None:
    fds = [image_quality(_noisy(digits.images, std), "digits")["fid"] for std in (0.0, 16.0, 48.0, 128.0)]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


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
        (np.zeros((10, 8, 8, 1), np.uint8), "cifar10", "no FD feature extractor"),
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
