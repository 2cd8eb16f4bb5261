"""Bad inputs through the real CLI: each is refused with one line, exit code 2, no traceback, and
nothing written (docs/reliability.md, "Inputs").

Every case runs `python -m dse ...` in a fresh temporary working folder that holds a tiny space
file, a valid student checkpoint, a valid pair store and a valid study with one row, so that each
case differs from a working command by exactly one mistake. The whole folder (and the dse cache,
which lives inside it) is snapshotted before and after: the two must be equal.

Two kinds of refusal:
- dse's own (`DseError`): stderr is exactly one non-empty line starting with `error: ` that names
  the mistake (`must_say`, case-insensitive).
- click's usage errors (an option's value of the wrong type, an unknown option, a missing
  argument): click prints a multi-line "Usage: ... Try ... Error: ..." box by design. For those
  only exit 2, no traceback, the mistake named somewhere in stderr and nothing written are asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE_TIMEOUT_S = 60  # a refusal comes before anything runs; a case that trains instead is cut off here

TINY_SPACE = """
[study]
name = "tiny"
[data]
dataset = "digits"
[teacher]
kind = "store"
pairs_dir = "pairs"
num_pairs = 64
num_steps = 2
[space]
budget = "20k"
widths = [16]
heads = [2]
[train]
steps = 2
batch_size = 16
[eval]
num_samples = 20
latency_num_images = 8
latency_batch = 4
latency_repeats = 1
onnx = false
samples_per_class = 1
"""


class _OpensAFile:
    """Pickled as `open("pwned.txt", "w")`: a file that executes code on load would create it."""

    def __reduce__(self):
        return (open, ("pwned.txt", "w"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """What every case's working folder starts with: tiny.toml, student.pt (a real dse student),
    pairs/ (a real 64-pair store), results/s1/ (a real study with one complete row), evil.pt."""
    import torch

    from dse.config import load_study
    from dse.evaluation import save_student
    from dse.models.dit import DiT
    from dse.store import ResultsStore
    from dse.teacher.edm import SamplerSettings
    from dse.teacher.generate import generate_pairs
    from dse.types import Geometry, StudentArch

    root = tmp_path_factory.mktemp("bad-inputs-assets")
    (root / "tiny.toml").write_text(TINY_SPACE)
    save_student(root / "student.pt", DiT(StudentArch(1, 16, 2), Geometry(8, 1, 10, 2)), dataset="digits")
    generate_pairs(root / "pairs", num_pairs=64, settings=SamplerSettings(num_steps=2), shard_size=32)
    study = root / "results" / "s1"
    (study / "trials").mkdir(parents=True)
    cfg = load_study(root / "tiny.toml")
    raw = cfg.to_raw()
    raw["study"]["name"] = "s1"
    (study / "study.json").write_text(json.dumps(raw, indent=2))
    ResultsStore(study / "trials").write({"trial_id": "t1", "study": "s1", "status": "complete", "params": 1000,
                                          "fid": 1.0, "latency_s": 0.5, "latency_per_image_ms": 0.1})
    torch.save({"format": "dse-student-v1", "payload": _OpensAFile()}, root / "evil.pt")
    return root


# --- what some cases add to the working folder ----------------------------------------------------

def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        p = cwd / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return make


def _mkdir(rel: str) -> Callable[[Path], None]:
    return lambda cwd: (cwd / rel).mkdir(parents=True)


def _half_of(src: str, rel: str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        data = (cwd / src).read_bytes()
        (cwd / rel).write_bytes(data[: len(data) // 2])
    return make


def _pairs_with(change: Callable[[dict, Path], None]) -> Callable[[Path], None]:
    """A copy of the valid store at badpairs/ whose manifest (or files) `change` damages."""
    def make(cwd: Path) -> None:
        shutil.copytree(cwd / "pairs", cwd / "badpairs")
        manifest = json.loads((cwd / "badpairs" / "manifest.json").read_text())
        change(manifest, cwd / "badpairs")
        (cwd / "badpairs" / "manifest.json").write_text(json.dumps(manifest))
    return make


def _outside_shard(manifest: dict, store: Path) -> None:
    shutil.copy(store / "z-00000.npy", store.parent / "outside.npy")  # same bytes: only the path is wrong
    manifest["shards"][0]["files"]["z"]["name"] = "../outside.npy"


def _truncated_shard(manifest: dict, store: Path) -> None:
    data = (store / "x-00001.npy").read_bytes()
    (store / "x-00001.npy").write_bytes(data[:100])


def _study_json(name: str, text: str) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        shutil.copytree(cwd / "results" / "s1", cwd / "results" / name)
        (cwd / "results" / name / "study.json").write_text(text)
    return make


def _get_dir(latent: bytes) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        for sub in ("latent", "image"):
            (cwd / "get" / sub).mkdir(parents=True)
            (cwd / "get" / sub / "000000009.pkl").write_bytes(latent)
    return make


def _evil_get(cwd: Path) -> None:
    _get_dir(b"")(cwd)
    for sub in ("latent", "image"):
        shutil.copy(cwd / "evil.pt", cwd / "get" / sub / "000000009.pkl")


def _half_get(cwd: Path) -> None:
    _get_dir(b"")(cwd)
    data = (cwd / "student.pt").read_bytes()
    for sub in ("latent", "image"):
        (cwd / "get" / sub / "000000009.pkl").write_bytes(data[: len(data) // 2])


def _both(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(cwd: Path) -> None:
        for m in makers:
            m(cwd)
    return make


# --- the cases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    must_say: str  # named in the message (case-insensitive); "{cwd}" is the working folder
    prepare: Callable[[Path], None] | None = None
    usage: bool = False  # click's usage error (multi-line by design), not a DseError
    why: str = ""  # what is wrong with the prepared file, when the command line alone does not say


RUN = ("run", "--space", "tiny.toml")
NO_CUDA = "a machine without CUDA"  # such a case is skipped, saying so, where CUDA is there
CASES = [
    # budgets and units
    Case(("run", "--space", "tiny.toml", "--budget", "5MB"), "5MB"),
    Case(("run", "--space", "tiny.toml", "--budget", "-5M"), "-5M"),
    Case(("run", "--space", "tiny.toml", "--budget", "nan"), "nan"),
    Case(("run", "--space", "tiny.toml", "--budget", "inf"), "inf"),
    Case(("run", "--space", "tiny.toml", "--budget", "0"), "budget"),
    Case(("propose", "--budget", ""), "budget"),
    Case(("propose", "--budget", "5k5"), "5k5"),
    Case(("space", "--budget", "5M", "--lower", "1.5"), "lower"),
    Case(("space", "--budget", "5M", "--upper", "nan"), "upper"),
    Case(("space", "--budget", "5M", "--image-size", "32"), "--channels"),
    Case(("propose", "--budget", "0.42M", "--image-size", "32", "--channels", "3", "--num-classes", "10",
          "--patch-size", "0"), "patch"),
    # numbers in every section: NaN, inf, negative, out of range
    Case((*RUN, "--set", "train.lr=nan"), "lr"),
    Case((*RUN, "--set", "train.lr=-1e-3"), "lr"),
    Case((*RUN, "--set", "train.lr=inf"), "lr"),
    Case((*RUN, "--set", "train.weight_decay=-0.01"), "weight_decay"),
    Case((*RUN, "--set", "train.steps=0"), "steps"),
    Case((*RUN, "--set", "train.batch_size=-8"), "batch_size"),
    Case((*RUN, "--set", "train.ema_decay=1.5"), "ema_decay"),
    Case((*RUN, "--set", "train.label_dropout=nan"), "label_dropout"),
    Case((*RUN, "--set", "train.epochs=-1"), "epochs"),
    Case((*RUN, "--set", "eval.guidance=nan"), "guidance"),
    Case((*RUN, "--set", "eval.guidance=-1"), "guidance"),
    Case((*RUN, "--set", "eval.num_samples=1"), "num_samples"),
    Case((*RUN, "--set", "eval.latency_batch=0"), "latency_batch"),
    Case((*RUN, "--set", "teacher.num_steps=0"), "num_steps"),
    Case((*RUN, "--set", "teacher.sigma_max=inf"), "sigma_max"),
    Case((*RUN, "--set", "space.lower=nan"), "lower"),
    Case((*RUN, "--set", "space.widths=[30]"), "widths"),
    Case((*RUN, "--set", "space.heads=[3]"), "heads"),
    Case((*RUN, "--set", "run.cpus_per_trial=-1"), "cpus_per_trial"),
    Case((*RUN, "--set", "run.gpus_per_trial=-0.5"), "gpus_per_trial"),
    Case((*RUN, "--set", "run.halving_eta=1"), "halving_eta"),
    Case((*RUN, "--set", "data.patch_size=3"), "patch"),
    Case((*RUN, "--set", "data.dataset=imagenet"), "imagenet"),
    # wrong types, unknown keys, bad --set syntax
    Case((*RUN, "--set", "train.steps=2.5"), "steps"),
    Case((*RUN, "--set", "space.widths=\"abc\""), "widths"),
    Case((*RUN, "--set", "eval.onnx=maybe"), "onnx"),
    Case((*RUN, "--set", "train.stepz=3"), "stepz"),
    Case((*RUN, "--set", "nope.key=1"), "nope"),
    Case((*RUN, "--set", "train.steps"), "train.steps"),
    Case((*RUN, "--set", "steps=2"), "steps=2"),
    Case((*RUN, "--set", "=3"), "--set"),
    Case((*RUN, "--cpus-per-trial", "abc"), "--cpus-per-trial", usage=True),
    Case((*RUN, "--no-such-option"), "--no-such-option", usage=True),
    # study names that are not one safe path component
    Case((*RUN, "--study", "../escape"), "../escape"),
    Case((*RUN, "--study", ".."), ".."),
    Case((*RUN, "--study", "{cwd}/elsewhere/x"), "elsewhere"),
    Case((*RUN, "--study", "a b"), "a b"),
    Case((*RUN, "--study", "a/b"), "a/b"),
    Case((*RUN, "--study", ""), "study name"),
    Case((*RUN, "--set", "study.name=../x"), "../x"),
    Case(("status", "../s1"), "../s1"),
    Case(("report", "results/../results/s1"), "results/../results/s1"),
    Case(("results", "../s1"), "../s1"),
    Case(("query", "SELECT 1", "--study", "../s1"), "../s1"),
    # space files: a folder, not UTF-8, truncated, empty, an unknown key, a nameless variant
    Case(("run", "--space", "spacedir"), "spacedir", _mkdir("spacedir")),
    Case(("run", "--space", "latin1.toml"), "latin1.toml", _write("latin1.toml", b'[study]\nname = "\xe9t\xe9"\n')),
    Case(("run", "--space", "cut.toml"), "cut.toml", _write("cut.toml", '[space]\nbudget = "20')),
    Case(("run", "--space", "empty.toml"), "budget", _write("empty.toml", "")),
    Case(("run", "--space", "noise.toml"), "noise.toml", _write("noise.toml", bytes(range(256)) * 4)),
    Case(("space", "--space", "typo.toml"), "stepz", _write("typo.toml", TINY_SPACE + "[run]\nstepz = 3\n")),
    Case(("run", "--space", "variants.toml"), "variants",
         _write("variants.toml", TINY_SPACE + "[[variants]]\nsteps = 3\n")),
    # checkpoints: empty, garbage, truncated, a folder, code inside, then good ones with bad options
    Case(("eval", "empty.pt"), "empty.pt", _write("empty.pt", b""), why="empty file"),
    Case(("eval", "garbage.pt"), "garbage.pt", _write("garbage.pt", os.urandom(4096))),
    Case(("eval", "half.pt"), "half.pt", _half_of("student.pt", "half.pt")),
    Case(("eval", "ckptdir"), "ckptdir", _mkdir("ckptdir")),
    Case(("eval", "evil.pt"), "evil.pt"),
    Case(("eval", "student.pt", "--device", "cudax"), "cudax"),
    Case(("eval", "student.pt", "--device", "cuda:99"), "cuda:99"),
    Case(("eval", "student.pt", "--num-samples", "-5"), "num_samples"),
    Case(("eval", "student.pt", "--set", "eval.guidance=nan"), "guidance"),
    Case(("eval", "student.pt", "--set", "eval.latency_repeats=0"), "latency_repeats"),
    Case(("eval", "student.pt", "--out", "notafolder"), "notafolder", _write("notafolder", "x")),
    Case(("eval",), "CHECKPOINT", usage=True),
    Case(("export", "student.pt", "--out", "onnxdir"), "onnxdir", _mkdir("onnxdir")),
    Case(("export", "student.pt", "--out", "s.onnx", "--guidance", "nan"), "guidance"),
    Case(("export", "empty.pt", "--out", "s.onnx"), "empty.pt", _write("empty.pt", b"")),
    Case(("export", "evil.pt", "--out", "s.onnx"), "evil.pt"),
    # teacher: sources, outputs, devices, numbers, GET folders, pair stores
    Case(("teacher", "generate", "--out", "newpairs", "--num", "-5"), "--num"),
    Case(("teacher", "generate", "--out", "newpairs", "--num", "abc"), "--num", usage=True),
    Case(("teacher", "generate", "--out", "newpairs", "--teacher", "trained", "--source", "no/such.pt"), "no/such.pt"),
    Case(("teacher", "generate", "--out", "newpairs", "--teacher", "trained", "--source", "empty.pt"), "empty.pt",
         _write("empty.pt", b"")),
    Case(("teacher", "generate", "--out", "newpairs", "--teacher", "trained", "--source", "garbage.pt"), "garbage.pt",
         _write("garbage.pt", os.urandom(4096))),
    Case(("teacher", "generate", "--out", "newpairs", "--teacher", "external", "--source", "no_such_module_e:fn"),
         "no_such_module_e"),
    Case(("teacher", "generate", "--out", "newpairs", "--device", "cudax"), "cudax"),
    Case(("teacher", "generate", "--out", "newpairs", "--device", "cuda:99"), "cuda:99"),
    Case(("teacher", "generate", "--out", "afile", "--num", "64"), "afile", _write("afile", "x"), why="afile is a file"),
    Case(("teacher", "generate", "--out", "pairs", "--num", "96", "--steps", "3"), "pairs"),  # other settings
    Case(("teacher", "train", "--out", "teach", "--steps", "-1"), "steps"),
    Case(("teacher", "train", "--out", "teach", "--lr", "nan"), "lr"),
    Case(("teacher", "train", "--out", "teach", "--dataset", "nope"), "nope"),
    Case(("teacher", "train", "--out", "teach", "--device", "cudax"), "cudax"),
    Case(("teacher", "import-get", "emptyget", "--out", "imported"), "emptyget", _mkdir("emptyget")),
    Case(("teacher", "import-get", "afile", "--out", "imported"), "afile", _write("afile", "x"), why="afile is a file"),
    Case(("teacher", "import-get", "get", "--out", "imported"), "000000009.pkl", _get_dir(b""), why="empty .pkl files"),
    Case(("teacher", "import-get", "get", "--out", "imported"), "000000009.pkl", _evil_get, why="code in the .pkl files"),
    Case(("teacher", "import-get", "get", "--out", "imported"), "000000009.pkl", _half_get, why="truncated .pkl files"),
    Case(("teacher", "inspect", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
    Case(("teacher", "inspect", "badpairs"), "manifest.json",
         _both(_mkdir("badpairs"), _write("badpairs/manifest.json", "{not json")), why="manifest not JSON"),
    Case(("teacher", "inspect", "badpairs"), "shards", _pairs_with(lambda m, p: m.pop("shards")), why="manifest without shards"),
    Case(("teacher", "inspect", "badpairs"), "outside", _pairs_with(_outside_shard), why="shard named ../outside.npy"),
    Case(("teacher", "inspect", "badpairs"), "x-00001.npy", _pairs_with(_truncated_shard), why="truncated shard"),
    Case(("teacher", "inspect", "badpairs"), "shape",
         _pairs_with(lambda m, p: m.update(shapes={"z": [3, 32, 32], "x": [3, 32, 32]})), why="manifest shapes wrong"),
    Case((*RUN, "--set", "teacher.pairs_dir=no/such/pairs"), "no/such/pairs"),
    Case((*RUN, "--set", "teacher.pairs_dir=badpairs"), "x-00001.npy", _pairs_with(_truncated_shard),
         why="truncated shard"),
    # addresses and devices
    Case((*RUN, "--address", "not an address"), "not an address"),
    Case((*RUN, "--address", "localhost:99999"), "99999"),
    Case((*RUN, "--address", ":6379"), ":6379"),
    Case((*RUN, "--device", "gpu"), "gpu"),
    Case((*RUN, "--device", "cuda"), "cuda", why=NO_CUDA),
    Case(("teacher", "train", "--out", "teach", "--device", "cuda"), "cuda", why=NO_CUDA),
    Case((*RUN, "--device", "cuda:99"), "cuda:99"),
    # results, query, report, status
    Case(("results", "s1", "--format", "xml"), "xml"),
    Case(("results", "s1", "--columns", "trial_id,no_such_column"), "no_such_column"),
    Case(("query", ""), "SELECT"),
    Case(("query", "   ;  "), "SELECT"),
    Case(("query", "DROP TABLE trials"), "SELECT"),
    Case(("query", "SELECT * FROM no_such_view"), "no_such_view"),
    Case(("query", "SELECT trial_id FROM trials", "--format", "xml"), "xml"),
    Case(("query", "SELECT 1", "--results-dir", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
    Case(("status", "--results-dir", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
    Case((*RUN, "--results-dir", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
    Case((*RUN, "--reports-dir", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
    Case(("report", "broken"), "study.json", _study_json("broken", "{not json"), why="study.json not JSON"),
    Case(("status", "broken"), "study.json", _study_json("broken", "{not json"), why="study.json not JSON"),
    Case(("report", "listy"), "study.json", _study_json("listy", "[1, 2, 3]"), why="study.json a list"),
    Case(("report", "s1", "--reports-dir", "afile"), "afile", _write("afile", "x"), why="afile is a file"),
]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _case_id(case: Case) -> str:
    line = " ".join(repr(a) if (not a or " " in a) else a for a in case.args)
    return f"{line} [{case.why}]" if case.why else line


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with what it is: 'dir', 'link -> target' or the file's sha256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_dse(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), DSE_CACHE=str(cwd / ".dse-cache"), COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "dse", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"`dse {' '.join(args)}` was not refused within {CASE_TIMEOUT_S} s: it ran instead")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_there_are_at_least_40_cases_each_named_by_its_command_line():
    ids = [_case_id(c) for c in CASES]
    assert len(CASES) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_refused_in_one_line_with_exit_2_writing_nothing(case: Case, assets: Path, tmp_path: Path):
    if case.why == NO_CUDA and _has_cuda():
        pytest.skip("this machine has CUDA: `--device cuda` is not a mistake here")
    cwd = tmp_path / "work"
    shutil.copytree(assets, cwd)
    (cwd / ".dse-cache").mkdir()
    if case.prepare:
        case.prepare(cwd)
    args = [a.replace("{cwd}", str(cwd)) for a in case.args]
    before = snapshot(cwd)
    out = run_dse(args, cwd)
    after = snapshot(cwd)
    both = out.stdout + out.stderr
    assert "Traceback" not in both, both
    assert out.returncode == 2, f"exit {out.returncode}\n{both}"
    if case.usage:
        assert "Error" in out.stderr and case.must_say.lower() in out.stderr.lower(), out.stderr
    else:
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].strip() != "error:", out.stderr
        assert case.must_say.replace("{cwd}", str(cwd)).lower() in lines[0].lower(), lines[0]
    assert not (cwd / "pwned.txt").exists(), "a file's code was executed while loading it"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written although refused: {changed}"
