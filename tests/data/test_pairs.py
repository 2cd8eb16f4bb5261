import json

import numpy as np
import pytest

from dse.data.pairs import MANIFEST, PairStore, PairWriter
from dse.errors import DseError
from dse.teacher import generate_pairs, pair_noise
from dse.teacher.edm import SamplerSettings

META = {"teacher": {"kind": "t"}, "sampler": {}, "dataset": "d", "seed": 0, "image_dtype": "float32"}


def _write(root, sizes=(5, 3)):
    w = PairWriter(root, META)
    rng = np.random.default_rng(0)
    start = 0
    for n in sizes:
        idx = np.arange(start, start + n)
        w.append(rng.normal(size=(n, 1, 2, 2)), idx % 10, np.broadcast_to(idx[:, None, None, None], (n, 1, 2, 2)))
        start += n
    return w


def test_round_trip_across_shards_in_any_order(tmp_path):
    _write(tmp_path)
    store = PairStore.open(tmp_path)
    assert len(store) == 8 and store.image_shape == (1, 2, 2)
    idx = np.array([7, 0, 5, 4, 2])
    z, y, x = store.batch(idx)
    assert np.array_equal(y, idx % 10)
    assert np.array_equal(x[:, 0, 0, 0], idx.astype(np.float32))
    assert z.shape == (5, 1, 2, 2) and z.dtype == np.float32


def test_flipped_byte_is_reported_with_the_shard_name(tmp_path):
    _write(tmp_path)
    path = tmp_path / "x-00001.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DseError, match="x-00001.npy"):
        PairStore.open(tmp_path)


def test_truncated_or_missing_shard_is_reported(tmp_path):
    _write(tmp_path)
    path = tmp_path / "z-00000.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DseError, match="z-00000.npy"):
        PairStore.open(tmp_path, verify=False)
    path.unlink()
    with pytest.raises(DseError, match="missing"):
        PairStore.open(tmp_path)


def test_no_store_and_other_settings_are_errors(tmp_path):
    with pytest.raises(DseError, match="manifest.json is missing"):
        PairStore.open(tmp_path)
    _write(tmp_path)
    with pytest.raises(DseError, match="other settings"):
        PairWriter(tmp_path, {**META, "seed": 1})


def test_interrupted_generation_resumes_to_the_same_store(tmp_path):
    settings = SamplerSettings(num_steps=4)
    whole = generate_pairs(tmp_path / "whole", num_pairs=96, shard_size=32, batch_size=16, settings=settings)
    # an interrupted run: it finished one shard of 32 pairs, then stopped
    part = tmp_path / "part"
    generate_pairs(part, num_pairs=32, shard_size=32, batch_size=16, settings=settings)
    generate_pairs(part, num_pairs=96, shard_size=32, batch_size=16, settings=settings)
    a, b = PairStore.open(whole), PairStore.open(part)
    assert len(a) == len(b) == 96
    for x, y in zip(a.batch(np.arange(96)), b.batch(np.arange(96))):
        assert np.array_equal(x, y)
    assert len(json.loads((part / MANIFEST).read_text())["shards"]) == 3


def test_pair_i_is_reproducible_alone(tiny_pairs):
    store = PairStore.open(tiny_pairs)
    z, y, _ = store.batch(np.array([300]))
    z_alone, y_alone = pair_noise(0, 300, (1, 8, 8), 10)
    assert y[0] == y_alone and np.array_equal(z[0], z_alone.numpy())
    labels = store.batch(np.arange(len(store)))[1]
    assert set(labels) == set(range(10))  # every class is there
