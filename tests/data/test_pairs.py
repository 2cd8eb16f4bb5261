import json
import os

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


def _get_layout(root, files=((0, 6), (6, 10)), numpy_arrays=False):
    """A small directory in GET's exact layout: latent/N.pkl = [noise, one-hot], image/N.pkl = images,
    written with torch.save and named by the last seed they hold."""
    import torch

    (root / "latent").mkdir(parents=True)
    (root / "image").mkdir()
    g = torch.Generator().manual_seed(0)
    for start, stop in files:
        n = stop - start
        z = torch.randn(n, 3, 32, 32, generator=g)
        onehot = torch.eye(10)[torch.arange(start, stop) % 10]
        x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        if numpy_arrays:
            z, onehot, x = z.numpy(), onehot.numpy(), x.numpy()
        torch.save([z, onehot], root / "latent" / f"{stop - 1:09d}.pkl")
        torch.save(x, root / "image" / f"{stop - 1:09d}.pkl")


@pytest.mark.parametrize("numpy_arrays", [False, True])
def test_import_get_reads_the_layout_in_seed_order(tmp_path, numpy_arrays):
    import torch

    from dse.data.pairs import import_get

    _get_layout(tmp_path / "get", numpy_arrays=numpy_arrays)
    store = PairStore.open(import_get(tmp_path / "get", tmp_path / "pairs", image_dtype="float16"))
    assert len(store) == 10 and store.manifest["image_dtype"] == "float16"
    z, y, x = store.batch(np.arange(10))
    assert np.array_equal(y, np.arange(10) % 10)
    z0, _ = torch.load(tmp_path / "get" / "latent" / "000000005.pkl", weights_only=False)
    assert np.array_equal(z[:6], np.asarray(z0))
    x1 = torch.load(tmp_path / "get" / "image" / "000000009.pkl", weights_only=False)
    assert np.allclose(x[6:], np.asarray(x1), atol=1e-3)  # float16 storage


def test_import_get_never_executes_code_from_the_files(tmp_path):
    import pickle

    from dse.data.pairs import import_get

    _get_layout(tmp_path / "get", files=((0, 4),))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "get" / "latent" / "000000003.pkl", "wb") as f:
        pickle.dump([Evil(), Evil()], f)
    with pytest.raises(DseError, match="000000003.pkl"):
        import_get(tmp_path / "get", tmp_path / "pairs")
    assert not marker.exists()


def test_import_get_layout_errors(tmp_path):
    from dse.data.pairs import import_get

    with pytest.raises(DseError, match="latent"):
        import_get(tmp_path, tmp_path / "out")


def test_batches_dataset_streams_every_pair_once_with_workers(tmp_path):
    import torch

    from dse.data.pairs import PairBatches

    _write(tmp_path, sizes=(50, 30, 20))
    ds = PairBatches(tmp_path, batch_size=16, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    seen = np.concatenate([x[:, 0, 0, 0].numpy() for _, _, x in loader]).astype(int)
    assert len(seen) == 96 and len(set(seen)) == 96  # 6 full batches, no pair twice
    assert not np.array_equal(seen, np.arange(96))  # shuffled
    again = np.concatenate([x[:, 0, 0, 0].numpy() for _, _, x in torch.utils.data.DataLoader(
        PairBatches(tmp_path, batch_size=16, seed=1), batch_size=None)]).astype(int)
    assert np.array_equal(seen, again)  # same seed, same order, with or without workers


def test_summary_counts_ranges_and_labels(tmp_path):
    from dse.data.pairs import summarize

    _write(tmp_path)
    s = summarize(PairStore.open(tmp_path), chunk=3)
    assert s["num_pairs"] == 8 and s["num_shards"] == 2
    assert s["x"]["min"] == 0 and s["x"]["max"] == 7 and abs(s["x"]["mean"] - 3.5) < 1e-9
    assert s["label_counts"][:8] == [1] * 8


def test_verification_is_remembered_but_a_rewrite_is_checked_again(tmp_path):
    _write(tmp_path)
    PairStore.open(tmp_path)
    assert (tmp_path / ".verified.json").is_file()
    path = tmp_path / "y-00000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(DseError, match="y-00000.npy"):
        PairStore.open(tmp_path)


def test_inspect_grid_has_a_row_per_class_with_noise_then_images(tiny_pairs, tmp_path):
    from PIL import Image

    from dse.data.datasets import to_uint8
    from dse.data.pairs import inspect_grid

    store = PairStore.open(tiny_pairs)
    pic = np.asarray(Image.open(inspect_grid(store, tmp_path / "g.png", per_class=3)))
    scale, pad = 8, 1  # 8x8 digits are enlarged to 64 pixels
    tile = 8 * scale + pad
    assert pic.shape == (10 * tile + pad, 6 * tile + pad)
    first = np.nonzero(store.labels() == 0)[0][0]
    _, _, x = store.batch(np.array([first]))
    got = pic[pad : pad + 64 : scale, pad + 3 * tile : pad + 3 * tile + 64 : scale]  # row 0, first image
    assert np.array_equal(got, to_uint8(x)[0, ..., 0])


def test_sigkill_part_way_then_rerun_equals_one_uninterrupted_run(tmp_path):
    """The command as a user runs it: killed with SIGKILL after some shards, then run again."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = ["--num", "256", "--steps", "40", "--batch-size", "32", "--shard-size", "32", "--device", "cpu"]
    cmd = [sys.executable, "-m", "dse", "teacher", "generate", "--out", str(tmp_path / "killed"), *args]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "killed" / MANIFEST
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.is_file() and json.loads(manifest.read_text())["num_pairs"] >= 64:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = json.loads(manifest.read_text())["num_pairs"]
    assert 64 <= done_at_kill < 256, "the run was not interrupted part way"

    assert subprocess.run(cmd, cwd=root, env=env, capture_output=True).returncode == 0
    whole = generate_pairs(tmp_path / "whole", num_pairs=256, settings=SamplerSettings(num_steps=40),
                           batch_size=32, shard_size=32)
    a, b = json.loads((tmp_path / "killed" / MANIFEST).read_text()), json.loads((whole / MANIFEST).read_text())
    assert a["num_pairs"] == b["num_pairs"] == 256
    assert [s["files"] for s in a["shards"]] == [s["files"] for s in b["shards"]]  # same bytes, shard by shard
    assert not list((tmp_path / "killed").glob(".*.tmp"))
