"""Fixtures for the asset tests: an offline environment with empty weight caches."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def inception_env(monkeypatch, tmp_path) -> Path:
    """Offline, an empty $TORCH_HOME, a fresh dse cache, no explicit Inception or wheel path; returns tmp_path."""
    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DSE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DSE_FID_HELPER", raising=False)
    return tmp_path
