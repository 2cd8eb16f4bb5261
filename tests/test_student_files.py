"""The student's safetensors form (issue 15): every saved student has `student.safetensors` + `student.json`
beside its `student.pt`, holding the same weights with no pickle; `load_student` (so `dse eval` and
`dse export`) reads it by either path or by the folder; a changed, truncated or foreign file or JSON is
one line, exit 2, nothing written."""

import hashlib
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from dse.errors import DseError
from dse.evaluation import load_student, save_student
from dse.layout import STUDENT_CONFIG_FILE, STUDENT_FILE, STUDENT_WEIGHTS_FILE
from dse.models.dit import STUDENT_TIME, DiT
from dse.sizing import count_params
from dse.types import Geometry, StudentArch
from tests.test_cli import dse


def _student(seed=0):
    torch.manual_seed(seed)
    model = DiT(StudentArch(2, 16, 2), Geometry(8, 1, 10), label_dropout=0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    """A trial's artifacts folder as a trial leaves it: student.pt and its safetensors pair."""
    folder = tmp_path / "artifacts" / "t1"
    model = _student()
    save_student(folder / STUDENT_FILE, model, dataset="digits", data_root="/d", trial_id="t1")
    return folder, model


def test_a_saved_student_has_a_safetensors_twin_with_a_json_config(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted([STUDENT_FILE, STUDENT_WEIGHTS_FILE, STUDENT_CONFIG_FILE])
    weights = load_file(folder / STUDENT_WEIGHTS_FILE)  # plain safetensors: any reader loads it, no dse needed
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    config = json.loads((folder / STUDENT_CONFIG_FILE).read_text())
    assert config["format"] == "dse-student-v1" and config["trial_id"] == "t1" and config["dataset"] == "digits"
    assert config["arch"] == {"depth": 2, "width": 16, "heads": 2, "mlp_ratio": 4.0}
    assert config["geometry"] == {"image_size": 8, "channels": 1, "num_classes": 10, "patch_size": 2}
    assert config["label_dropout"] == 0.2 and config["student_time"] == STUDENT_TIME
    assert config["weights_bytes"] == (folder / STUDENT_WEIGHTS_FILE).stat().st_size


@pytest.mark.parametrize("which", [STUDENT_WEIGHTS_FILE, STUDENT_CONFIG_FILE, ".", STUDENT_FILE])
def test_every_form_loads_the_same_student(saved, which):
    folder, model = saved
    loaded, meta = load_student(folder / which)
    assert meta == {"dataset": "digits", "data_root": "/d", "trial_id": "t1"}
    assert loaded.arch == model.arch and loaded.geometry == model.geometry and loaded.y_embedder.dropout_prob == 0.2
    z, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 9, 10])
    assert torch.equal(loaded(z, y), model(z, y))


def test_the_folder_prefers_safetensors_and_falls_back_to_the_pt_file(saved):
    folder, model = saved
    (folder / STUDENT_FILE).write_bytes(b"damaged")  # not read: the safetensors form is there
    assert load_student(folder)[0].arch == model.arch
    save_student(folder / STUDENT_FILE, model, dataset="digits")
    (folder / STUDENT_WEIGHTS_FILE).unlink()  # an older trial: only student.pt
    assert load_student(folder)[0].arch == model.arch


def test_a_safetensors_path_writes_only_the_pair(tmp_path):
    path = save_student(tmp_path / "mine.safetensors", _student(), dataset="digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.safetensors"]
    assert load_student(path)[0].arch == StudentArch(2, 16, 2)


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_json(**changes):
    def edit(folder):
        p = folder / STUDENT_CONFIG_FILE
        p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))
    return edit


def _forged(folder):
    """Weights of another architecture with a JSON whose sha256 vouches for them: the shapes are still checked."""
    data = safetensors_bytes(DiT(StudentArch(1, 8, 2), Geometry(8, 1, 10)).state_dict())
    (folder / STUDENT_WEIGHTS_FILE).write_bytes(data)
    _edit_json(weights_bytes=len(data), weights_sha256=hashlib.sha256(data).hexdigest())(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: _flip_a_byte(f / STUDENT_WEIGHTS_FILE), "was changed, truncated or replaced"),
    (lambda f: (f / STUDENT_WEIGHTS_FILE).write_bytes((f / STUDENT_WEIGHTS_FILE).read_bytes()[:100]), "truncated"),
    (lambda f: (f / STUDENT_CONFIG_FILE).write_text('{"format": "dse-stu'), "is corrupt"),
    (lambda f: (f / STUDENT_CONFIG_FILE).write_text("[1, 2]"), "is not a dse student configuration"),
    (_edit_json(format="something-else"), "is not a dse student configuration"),
    (_edit_json(weights_sha256="0" * 64), "was changed, truncated or replaced"),
    (_edit_json(arch={"depth": 3, "width": 16, "heads": 2, "mlp_ratio": 4.0}), "damaged dse-student-v1"),
    (_forged, "damaged dse-student-v1"),
    (lambda f: (f / STUDENT_CONFIG_FILE).unlink(), "configuration"),
])
def test_a_damaged_pair_is_one_line(saved, damage, message):
    folder, _ = saved
    damage(folder)
    with pytest.raises(DseError, match=message) as err:
        load_student(folder / STUDENT_WEIGHTS_FILE)
    assert "\n" not in str(err.value)


def test_safetensors_that_are_not_safetensors_are_refused_even_with_a_matching_json(saved):
    folder, _ = saved
    junk = pickle.dumps({"a": 1})
    (folder / STUDENT_WEIGHTS_FILE).write_bytes(junk)
    _edit_json(weights_bytes=len(junk), weights_sha256=hashlib.sha256(junk).hexdigest())(folder)
    with pytest.raises(DseError, match="is corrupt, not safetensors"):
        load_student(folder)


def test_a_folder_without_a_student_is_one_clear_error(tmp_path):
    with pytest.raises(DseError, match="holds no dse student"):
        load_student(tmp_path)


def test_dse_export_reads_the_safetensors_form_and_refuses_a_tampered_one(saved, tmp_path):
    folder, _ = saved
    (folder / STUDENT_FILE).unlink()  # the safetensors pair alone is enough
    out = dse("export", str(folder / STUDENT_WEIGHTS_FILE), "--out", str(tmp_path / "s.onnx"))
    assert out.returncode == 0 and (tmp_path / "s.onnx").is_file(), out.stderr
    _flip_a_byte(folder / STUDENT_WEIGHTS_FILE)
    out = dse("export", str(folder), "--out", str(tmp_path / "t.onnx"))
    assert out.returncode == 2 and not (tmp_path / "t.onnx").exists()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "was changed, truncated or replaced" in lines[0], out.stderr


def test_dse_eval_measures_the_safetensors_form(saved):
    folder, _ = saved
    (folder / STUDENT_FILE).unlink()
    out = dse("eval", str(folder / STUDENT_WEIGHTS_FILE), "--num-samples", "20", "--latency-images", "8", "--device", "cpu",
              "--set", "eval.reference_num=100", "--set", "eval.latency_batch=4", "--set", "eval.latency_repeats=1",
              "--set", "eval.onnx=false", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["trial_id"] == "t1" and row["dataset"] == "digits" and row["fid"] > 0
    assert row["checkpoint"] == str((folder / STUDENT_WEIGHTS_FILE).resolve())
    assert row["params"] == count_params(StudentArch(2, 16, 2), Geometry(8, 1, 10))
