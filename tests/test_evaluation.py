import pickle

import pytest
import torch

from dse.config import Geometry, StudentArch
from dse.errors import DseError
from dse.evaluation import load_student, save_student
from dse.models.dit import DiT


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
        (_Boom(), "corrupt"),
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
