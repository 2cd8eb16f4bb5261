import json
import os

import numpy as np
import pytest

from dse.data.pairs import MANIFEST, PairStore, PairWriter
from dse.errors import DseError
from dse.teacher.generate import generate_pairs, pair_noise
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


def _listing(root):
    """Every path under `root` with its bytes (None for a folder): what a refusal must leave alone."""
    from pathlib import Path

    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in Path(root).rglob("*")}


def _edit_manifest(store, change):
    manifest = json.loads((store / MANIFEST).read_text())
    manifest = change(manifest)
    (store / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_a_manifest_naming_a_file_outside_the_store_is_refused(tmp_path, how):
    store = tmp_path / "store"
    _write(store)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.npy").write_bytes((store / "x-00000.npy").read_bytes())  # a valid file, same bytes: only its place is wrong
    name = {"parent": "../other/x.npy", "absolute": str(other / "x.npy"), "symlink": "link.npy"}[how]
    if how == "symlink":
        (store / "link.npy").symlink_to(other / "x.npy")

    def point_outside(m):
        m["shards"][0]["files"]["x"]["name"] = name
        return m

    _edit_manifest(store, point_outside)
    with pytest.raises(DseError, match="leads outside") as err:
        PairStore.open(store)
    assert "\n" not in str(err.value) and str(store) in str(err.value)


def _shard0(key, value):
    def change(m):
        m["shards"][0][key] = value
        return m
    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: [m], "not a pair-store manifest"),
        (lambda m: {k: v for k, v in m.items() if k != "shards"}, "needs num_pairs"),
        (lambda m: {**m, "num_pairs": "8"}, "needs num_pairs"),
        (lambda m: {**m, "num_pairs": 9}, "num_pairs 9 but its shards hold 8"),
        (lambda m: {**m, "image_dtype": "int8"}, "image_dtype 'int8'"),
        (_shard0("files", None), "shard 0 needs start, count"),
        (_shard0("count", "5"), "shard 0 needs start, count"),
        (_shard0("start", 2), "shard 0 starts at pair 2"),
        (lambda m: {**m, "shards": [m["shards"][0], {**m["shards"][1], "files": {"z": m["shards"][1]["files"]["z"]}}]},
         "shard 1 needs files.y"),
        (lambda m: {**m, "shapes": {"z": [1, 2, 2]}}, "needs shapes.z and shapes.x"),
        (lambda m: {**m, "shapes": {"z": [1, 2, 2], "x": [1, 4, 1]}}, r"noise shape \[1, 2, 2\] and image shape \[1, 4, 1\]"),
        (lambda m: {**m, "shapes": {"z": [1, 4, 1], "x": [1, 4, 1]}}, r"z-00000.npy holds float32 \(5, 1, 2, 2\), the manifest says float32 \(5, 1, 4, 1\)"),
        (lambda m: {**m, "dataset": "digits"}, "digits images are"),
    ],
)
def test_a_manifest_that_does_not_hold_together_is_one_clear_error(tmp_path, change, message):
    _write(tmp_path)
    _edit_manifest(tmp_path, change)
    with pytest.raises(DseError, match=message) as err:
        PairStore.open(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_labels_outside_the_classes_are_refused(tmp_path):
    _write(tmp_path)  # labels 0..7
    _edit_manifest(tmp_path, lambda m: {**m, "num_classes": 5})
    with pytest.raises(DseError, match="labels 0..7, outside the 5 classes"):
        PairStore.open(tmp_path)


def _full_disk_at(monkeypatch, name):
    """Writes of `name` fail as on a full disk: the OSError of a write through a file object, which
    carries no file name."""
    import contextlib
    import errno

    from dse.data import pairs

    real = pairs.atomic_writer

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @contextlib.contextmanager
    def writer(path, *args, **kwargs):
        with real(path, *args, **kwargs) as f:
            yield Full(f) if os.path.basename(path) == name else f

    def write(path, data):
        with writer(path) as f:
            f.write(data.encode() if isinstance(data, str) else data)

    monkeypatch.setattr(pairs, "atomic_writer", writer)
    monkeypatch.setattr(pairs, "atomic_write", write)


def test_a_full_disk_names_the_file_and_keeps_the_shards_already_written(tmp_path, monkeypatch):
    """Monkeypatched writer (see tests/teacher/test_cli_teacher.py for a real full tmpfs)."""
    import errno

    store = tmp_path / "store"
    w = _write(store, sizes=(5,))
    _full_disk_at(monkeypatch, "x-00001.npy")
    with pytest.raises(OSError) as err:
        w.append(np.zeros((3, 1, 2, 2)), np.zeros(3), np.zeros((3, 1, 2, 2)))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(store / "x-00001.npy")
    assert "No space left on device" in str(err.value)
    assert sorted(p.name for p in store.iterdir()) == [MANIFEST, "x-00000.npy", "y-00000.npy", "z-00000.npy"]
    assert len(PairStore.open(store)) == 5  # the store before the failed shard, whole and resumable


def test_a_first_shard_that_fails_leaves_no_folder_behind(tmp_path, monkeypatch):
    _full_disk_at(monkeypatch, "y-00000.npy")
    with pytest.raises(OSError, match="No space left on device"):
        _write(tmp_path / "new" / "store")
    assert _listing(tmp_path) == {}


def test_a_manifest_write_on_a_full_disk_names_the_manifest(tmp_path, monkeypatch):
    store = tmp_path / "store"
    w = _write(store, sizes=(5,))
    before = _listing(store)
    _full_disk_at(monkeypatch, MANIFEST)
    with pytest.raises(OSError) as err:
        w.append(np.zeros((3, 1, 2, 2)), np.zeros(3), np.zeros((3, 1, 2, 2)))
    assert err.value.filename == str(store / MANIFEST)
    assert _listing(store) == before  # the failed shard's files are gone again


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "nope"}, "unknown data set 'nope'"),
        ({"teacher": "nope"}, "unknown teacher 'nope'"),
        ({"teacher": "trained"}, "needs --source"),
        ({"teacher": "trained", "source": "no/such/last.pt"}, "not found"),
        ({"teacher": "external", "source": "no/such/teacher.ts"}, "not found"),
        ({"image_dtype": "int8"}, "image dtype"),
        ({"dataset": "cifar10", "data_root": "no/such/dir"}, "no/such/dir"),
        ({"num_pairs": 0}, "must be positive"),
    ],
)
def test_generate_refuses_bad_inputs_before_creating_anything(tmp_path, kwargs, message):
    with pytest.raises(DseError, match=message):
        generate_pairs(tmp_path / "a" / "pairs", **{"num_pairs": 8, "settings": SamplerSettings(num_steps=2), **kwargs})
    assert _listing(tmp_path) == {}


def test_generate_and_import_refuse_an_out_that_is_a_file(tmp_path):
    from dse.data.pairs import import_get

    out = tmp_path / "out"
    out.write_bytes(b"mine")
    with pytest.raises(DseError, match="is a file, not a folder"):
        generate_pairs(out, num_pairs=8, settings=SamplerSettings(num_steps=2))
    _get_layout(tmp_path / "get", files=((0, 4),))
    before = _listing(tmp_path)
    with pytest.raises(DseError, match="is a file, not a folder"):
        import_get(tmp_path / "get", out)
    assert _listing(tmp_path) == before


def test_a_failed_import_leaves_no_folder_behind(tmp_path):
    import torch

    from dse.data.pairs import import_get

    _get_layout(tmp_path / "get", files=((0, 4),))
    torch.save(torch.zeros(3, 3, 32, 32), tmp_path / "get" / "image" / "000000003.pkl")  # 3 images for 4 noises
    before = _listing(tmp_path)
    with pytest.raises(DseError, match="shapes do not match"):
        import_get(tmp_path / "get", tmp_path / "new" / "pairs")
    assert _listing(tmp_path) == before
