import json
import pickle

import numpy as np
import pytest
import torch

from dse.config import eval_from_dict
from dse.data.datasets import load_digits
from dse.errors import DseError
from dse.evaluation import evaluate_checkpoint, load_student, measure_quality, save_student
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch
from tests.data.test_pairs import _listing
from tests.test_cli import dse

TINY_EVAL = {"num_samples": 20, "latency_num_images": 8, "latency_batch": 4, "latency_repeats": 1,
             "reference_num": 100, "samples_per_class": 2, "onnx_num_images": 8}


def _student():
    torch.manual_seed(0)
    model = DiT(StudentArch(2, 16, 2), Geometry(8, 1, 10), label_dropout=0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_a_saved_student_comes_back_identical_with_its_metadata(tmp_path):
    model = _student()
    path = save_student(tmp_path / "s.pt", model, dataset="digits", data_root="/d", trial_id="t1")
    loaded, meta = load_student(path)
    assert meta == {"dataset": "digits", "data_root": "/d", "trial_id": "t1"}
    assert loaded.arch == model.arch and loaded.geometry == model.geometry
    assert loaded.y_embedder.dropout_prob == 0.2
    z, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 9, 10])
    assert torch.equal(loaded(z, y), model(z, y))


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"not a checkpoint", "corrupt"),
        ({"step": 3, "ema": {}, "optimizer": {}}, "trainer checkpoint"),
        ({"format": "dse-student-v1", "arch": {"depth": 1}}, "damaged"),
        (_Boom(), "could run code from the file"),
        (b"", "is empty"),
    ],
)
def test_anything_but_a_student_file_is_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, _Boom):
        path.write_bytes(pickle.dumps(content))
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(DseError, match=message):
        load_student(path)
    assert "code ran" not in capsys.readouterr().out  # weights_only: nothing in the file is executed


def test_a_single_line_even_for_torchs_paragraphs(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"model": _Boom()}))
    with pytest.raises(DseError) as err:
        load_student(path)
    assert "\n" not in str(err.value) and "refused" in str(err.value)


@pytest.fixture
def trial_dir(tmp_path):
    """A trial's artifacts folder holding a tiny digits student, as a study leaves it."""
    folder = tmp_path / "results" / "s" / "artifacts" / "t1"
    save_student(folder / "student.pt", _student(), dataset="digits", trial_id="t1")
    (folder / "samples.png").write_bytes(b"the study's own grid")
    return folder


def test_eval_writes_files_only_where_out_says(trial_dir, tmp_path):
    before = _listing(tmp_path)
    cfg = eval_from_dict(TINY_EVAL)
    row = evaluate_checkpoint(trial_dir / "student.pt", cfg, device="cpu")
    assert _listing(tmp_path) == before  # no --out: no file at all, the trial's folder untouched
    assert row["samples_png"] is None and row["onnx_path"] is None and row["latency_onnx_cpu_s"] > 0
    assert row["fid_num_samples"] == 20
    # how precise the FID is, whether samples follow labels, and which evaluation seed made them
    assert row["fid_bootstrap"] == 100 and row["fid_std"] > 0 and row["eval_seed"] == 0
    assert row["fid_ci_low"] < row["fid"] < row["fid_ci_high"]
    assert 0.0 <= row["label_agreement"] <= 1.0

    out = tmp_path / "eval"
    row = evaluate_checkpoint(trial_dir / "student.pt", cfg, device="cpu", out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["samples.png", "student.onnx"]
    assert row["samples_png"] == str(out / "samples.png") and row["onnx_path"] == str(out / "student.onnx")
    assert {k: v for k, v in _listing(tmp_path).items() if not k.startswith("eval")} == before


def _fashion_student(folder):
    torch.manual_seed(0)
    model = DiT(StudentArch(1, 16, 2), Geometry(28, 1, 10)).eval()
    return save_student(folder / "fashion.pt", model, dataset="fashion-mnist", data_root=str(folder / "no" / "data"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "imagenet"}, "unknown data set 'imagenet'"),
        ({"dataset": "cifar10"}, "makes 8x8x1 images of 10 classes, cifar10 has 32x32x3"),
        ({"out_dir": "{trial}/student.pt"}, "is not a folder"),
        ({"device": "cudax"}, "device 'cudax'"),
        ({"device": "cuda:99"}, "device 'cuda:99'"),
        ({"checkpoint": "fashion"}, "fashion-mnist (train) not found"),
    ],
)
def test_eval_refuses_every_bad_input_before_writing(trial_dir, tmp_path, kwargs, message):
    kwargs = {k: v.format(trial=trial_dir) for k, v in kwargs.items()}
    checkpoint = _fashion_student(tmp_path) if kwargs.pop("checkpoint", None) else trial_dir / "student.pt"
    before = _listing(tmp_path)
    with pytest.raises(DseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate_checkpoint(checkpoint, eval_from_dict(TINY_EVAL), **{"out_dir": tmp_path / "eval", **kwargs})
    assert _listing(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_eval_on_cuda_without_cuda_is_refused_before_writing(trial_dir, tmp_path):
    before = _listing(tmp_path)
    with pytest.raises(DseError, match="no CUDA GPU"):
        evaluate_checkpoint(trial_dir / "student.pt", eval_from_dict(TINY_EVAL), device="cuda", out_dir=tmp_path / "eval")
    assert _listing(tmp_path) == before


def _set(values):
    return [arg for k, v in values.items() for arg in ("--set", f"eval.{k}={v}")]


@pytest.mark.parametrize(
    "checkpoint, extra, message",
    [
        ("student.pt", ["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        ("student.pt", ["--device", "cudax"], "device 'cudax'"),
        ("student.pt", ["--out", "{trial}/samples.png"], "is not a folder"),
        ("empty.pt", [], "is empty, not a dse student checkpoint"),
        ("text.pt", [], "is corrupt or not a dse student checkpoint"),
        ("truncated.pt", [], "is corrupt or not a dse student checkpoint"),
        ("code.pt", [], "could run code from the file"),
    ],
)
def test_eval_mistakes_are_one_line_and_write_nothing(trial_dir, tmp_path, checkpoint, extra, message):
    (trial_dir / "empty.pt").write_bytes(b"")
    (trial_dir / "text.pt").write_text("a student\n")
    (trial_dir / "truncated.pt").write_bytes((trial_dir / "student.pt").read_bytes()[:1000])
    (trial_dir / "code.pt").write_bytes(pickle.dumps({"model": _Ran(tmp_path / "ran")}))
    before = _listing(tmp_path)
    extra = [a.format(trial=trial_dir) for a in extra]
    out_flag = [] if "--out" in extra else ["--out", str(tmp_path / "eval")]
    out = dse("eval", str(trial_dir / checkpoint), *out_flag, *extra, *_set(TINY_EVAL))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert _listing(tmp_path) == before  # nothing written, and the code in code.pt did not run


class _Ran:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_eval_without_out_leaves_the_trials_folder_as_it_was(trial_dir, tmp_path):
    before = _listing(tmp_path)
    out = dse("eval", str(trial_dir / "student.pt"), "--device", "cpu", *_set(TINY_EVAL), "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["samples_png"] is None and row["onnx_path"] is None and row["latency_onnx_cpu_s"] > 0
    assert _listing(tmp_path) == before


class _RealDigits(torch.nn.Module):
    """A stand-in student that returns real digits images, chosen by its noise: of the class it is asked
    for (`follows_labels`), or of any class, whatever the label (a collapsed student that ignores labels)."""

    def __init__(self, follows_labels):
        super().__init__()
        data = load_digits()
        self.geometry = Geometry(8, 1, 10)
        self.follows_labels = follows_labels
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 1, 8, 8)
        self.labels = torch.from_numpy(data.labels)

    def forward_with_cfg(self, z, y, guidance):
        pick = (z.flatten(1)[:, 0].abs() * 1e4).long()  # (B,): a pseudo-random choice made by the noise alone
        out = []
        for p, label in zip(pick.tolist(), y.tolist()):
            if self.follows_labels:
                members = torch.nonzero(self.labels == label).flatten()
            else:
                members = torch.arange(len(self.labels))
            out.append(self.images[members[p % len(members)]])
        return torch.stack(out)


def test_a_collapsed_student_is_visible_in_its_row_though_its_fid_is_fine():
    cfg = eval_from_dict({"num_samples": 400, "fid_bootstrap": 20, "seed": 5})
    follows = measure_quality(_RealDigits(follows_labels=True), "digits", cfg)
    ignores = measure_quality(_RealDigits(follows_labels=False), "digits", cfg)
    assert follows["label_agreement"] > 0.8
    assert abs(ignores["label_agreement"] - 0.1) < 0.06  # chance: 1 / 10 classes
    # both draw real digits, so FID alone cannot tell them apart: within each other's intervals
    assert ignores["fid"] < follows["fid_ci_high"] + 2 * ignores["fid_std"]
    assert follows["fid"] < ignores["fid_ci_high"] + 2 * follows["fid_std"]
    for row in (follows, ignores):
        assert row["eval_seed"] == 5 and row["fid_bootstrap"] == 20 and row["fid_num_samples"] == 400
