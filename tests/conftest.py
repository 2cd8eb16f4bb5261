"""Shared fixtures: a tiny pair store made with the real teacher, and an isolated dse cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One dse cache for the session (the digits classifier is trained once into it)."""
    return tmp_path_factory.mktemp("dse-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(shared_cache, monkeypatch):
    monkeypatch.setenv("DSE_CACHE", str(shared_cache))


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """512 digits pairs from the empirical teacher with a short 6-step sampler."""
    from dse.teacher import generate_pairs
    from dse.teacher.edm import SamplerSettings

    out = tmp_path_factory.mktemp("pairs") / "digits"
    return generate_pairs(out, num_pairs=512, settings=SamplerSettings(num_steps=6), shard_size=200)
