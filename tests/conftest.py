"""Shared fixtures: a tiny pair store made with the real teacher, and an isolated dse cache."""

from __future__ import annotations

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
    from dse.teacher import generate_pairs
    from dse.teacher.edm import SamplerSettings

    out = tmp_path_factory.mktemp("pairs") / "digits"
    return generate_pairs(out, num_pairs=512, settings=SamplerSettings(num_steps=6), shard_size=200)
