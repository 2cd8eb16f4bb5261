"""`dse teacher generate | import-get | inspect` as a user types them: a mistake is one line and exit 2,
nothing is written for a refusal, and a full disk names the file."""

import json
import os
import pickle
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.data.test_pairs import _get_layout, _listing, _write
from tests.test_cli import dse


class _Code:
    """A pickle that runs code when it is loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_error(out, message):
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "unknown data set 'nope'"),
        (["--teacher", "nope"], "unknown teacher 'nope'"),
        (["--teacher", "trained"], "needs --source"),
        (["--teacher", "trained", "--source", "{tmp}/no/last.pt"], "not found"),
        (["--teacher", "trained", "--source", "{tmp}/in/empty.pt"], "is empty, not a dse teacher checkpoint"),
        (["--teacher", "trained", "--source", "{tmp}/in/text.pt"], "not a dse teacher checkpoint"),
        (["--teacher", "trained", "--source", "{tmp}/in/code.pt"], "could run code from the file"),
        (["--teacher", "external", "--source", "{tmp}/in/empty.pt"], "not a TorchScript file"),
        (["--teacher", "external", "--source", "{tmp}/no/teacher.ts"], "not found"),
        (["--image-dtype", "int8"], "image dtype"),
        (["--dataset", "cifar10", "--data-root", "{tmp}/no/data"], "no/data"),
        (["--out", "{tmp}/in/empty.pt"], "is a file, not a folder"),
    ],
)
def test_generate_refusals_are_one_line_and_write_nothing(tmp_path, args, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.pt").write_bytes(b"")
    (tmp_path / "in" / "text.pt").write_text("weights\n")
    marker = tmp_path / "ran"
    with open(tmp_path / "in" / "code.pt", "wb") as f:
        pickle.dump({"ema": _Code(marker)}, f)
    before = _listing(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    out_flag = [] if "--out" in args else ["--out", str(tmp_path / "new" / "pairs")]
    out = dse("teacher", "generate", *out_flag, *args, "--num", "8", "--steps", "2", "--device", "cpu")
    _one_line_error(out, message)
    assert _listing(tmp_path) == before  # no folder, no file, and the code in code.pt did not run


def test_import_get_refusals_are_one_line_and_write_nothing(tmp_path):
    marker = tmp_path / "ran"
    _get_layout(tmp_path / "get", files=((0, 4),))
    with open(tmp_path / "get" / "latent" / "000000003.pkl", "wb") as f:
        pickle.dump([_Code(marker), _Code(marker)], f)
    (tmp_path / "empty" / "latent").mkdir(parents=True)
    (tmp_path / "empty" / "image").mkdir()
    before = _listing(tmp_path)
    for src, message in [(tmp_path / "get", "could run code from the file"), (tmp_path / "no", "latent"),
                         (tmp_path / "empty", "no numbered .pkl files")]:
        out = dse("teacher", "import-get", str(src), "--out", str(tmp_path / "new" / "pairs"))
        _one_line_error(out, message)
    _get_layout(tmp_path / "ok", files=((0, 4),))
    before = _listing(tmp_path)
    out = dse("teacher", "import-get", str(tmp_path / "ok"), "--out", str(tmp_path / "new" / "pairs"), "--image-dtype", "int8")
    _one_line_error(out, "image dtype")
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(
    "manifest, message",
    [
        (None, "manifest.json is missing"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "not a pair-store manifest"),
        ({"format": "dse-pairs-v1", "image_dtype": "float32"}, "needs num_pairs"),
        ("outside", "leads outside"),
        ("damaged", "is damaged"),
    ],
)
def test_inspect_a_store_that_is_not_one_or_is_damaged_is_one_line(tmp_path, manifest, message):
    store = tmp_path / "store"
    _write(store)
    if manifest is None:
        (store / "manifest.json").unlink()
    elif manifest == "outside":
        m = json.loads((store / "manifest.json").read_text())
        m["shards"][0]["files"]["z"]["name"] = "../../z.npy"
        (store / "manifest.json").write_text(json.dumps(m))
    elif manifest == "damaged":
        (store / "x-00001.npy").write_bytes((store / "x-00001.npy").read_bytes()[:-4] + b"\0\0\0\0")
    else:
        (store / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    before = _listing(tmp_path)
    _one_line_error(dse("teacher", "inspect", str(store)), message)
    assert _listing(tmp_path) == before


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 96 KiB tmpfs (room for one 100-pair digits shard, not two); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", f"dse-test-{uuid.uuid4().hex[:8]}", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched writer tests cover the library")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_is_one_line_naming_the_file_and_the_store_stays_resumable(full_tmpfs):
    """A real full file system (tmpfs): the second shard does not fit."""
    store = full_tmpfs / "pairs"
    args = ["--num", "300", "--shard-size", "100", "--steps", "2", "--device", "cpu"]
    out = dse("teacher", "generate", "--out", str(store), *args)
    _one_line_error(out, "No space left on device")
    assert f"{store}/x-00001.npy" in out.stderr or f"{store}/z-00001.npy" in out.stderr  # the file that did not fit
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "x-00000.npy", "y-00000.npy", "z-00000.npy"]
    summary = dse("teacher", "inspect", str(store), "--json", "--png", str(full_tmpfs.parent / "g.png"))
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["num_pairs"] == 100  # the finished shard is kept, whole

    fresh = full_tmpfs / "fresh" / "pairs"  # a store whose first shard does not fit leaves no folder
    out = dse("teacher", "generate", "--out", str(fresh), *args)
    _one_line_error(out, "No space left on device")
    assert not (full_tmpfs / "fresh").exists()


def test_teacher_generate_takes_its_defaults_from_the_teacher_section_and_edm():
    """`dse teacher generate` makes pairs as a study's [teacher] section would: same defaults, and the
    number of Heun steps is EDM's."""
    import typer.main

    from dse.cli import app
    from dse.config import TeacherConfig
    from dse.teacher.edm import NUM_STEPS

    generate = typer.main.get_command(app).commands["teacher"].commands["generate"]
    defaults = {p.name: p.default for p in generate.params}
    t = TeacherConfig()
    assert (defaults["num"], defaults["seed"], defaults["num_steps"], defaults["shard_size"], defaults["image_dtype"]) == \
        (t.num_pairs, t.seed, t.num_steps, t.shard_size, t.image_dtype)
    assert defaults["num_steps"] == NUM_STEPS
