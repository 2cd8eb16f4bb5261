"""Owns where dse keeps weights and cached files on disk: the cache root and the folders under it.

Everything dse downloads, trains once or caches between runs lives under `cache_dir()`:

- `extractors/`: feature extractors dse trains itself (e.g. the digits classifier used for FD);
- `fidelity/`: torch-fidelity's cache of reference features and statistics.

No other module builds these paths. Pretrained third-party weights (Inception, LPIPS) are to be
looked up here too, so that a user can point dse at local copies and nothing is fetched silently.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DSE_CACHE"
DEFAULT_CACHE = Path("~/.cache/dse")


def cache_dir() -> Path:
    """The cache root: `$DSE_CACHE` if set (and not empty), else `~/.cache/dse`; created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def extractors_dir() -> Path:
    """Folder of the feature extractors dse trains itself, created on demand."""
    return _subdir("extractors")


def fidelity_cache_dir() -> Path:
    """Folder where torch-fidelity caches reference features and statistics, created on demand."""
    return _subdir("fidelity")


def _subdir(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
