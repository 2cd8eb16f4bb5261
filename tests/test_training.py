"""What the student's and the teacher's training loops share (dse.training): one divergence error,
one checkpoint save / resume, both checkpoint dialects kept as users have them on disk."""

import pytest
import torch

from dse.errors import DseError
from dse.layout import LAST_CHECKPOINT
from dse.training import (
    TrainingDiverged,
    TrainState,
    check_finite,
    checkpoint_file,
    load_checkpoint,
    restoring,
    save_checkpoint,
    seeded_init,
)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_loss_that_is_not_finite_stops_the_run_with_one_error_type(value):
    with pytest.raises(TrainingDiverged, match=f"loss became {value} at step 7; lower the learning rate") as err:
        check_finite(torch.tensor(value), 7)
    # a user's mistake (one line, exit 2 in the CLI) that old `except RuntimeError` code still catches
    assert isinstance(err.value, DseError) and isinstance(err.value, RuntimeError)
    check_finite(torch.tensor(1.0), 7)


def test_the_teacher_loop_diverges_with_the_same_error(tmp_path, monkeypatch):
    from dse.teacher import train

    monkeypatch.setattr(train, "edm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    cfg = train.TeacherTrainConfig(depth=1, width=16, heads=2, batch_size=8, steps=3)
    with pytest.raises(TrainingDiverged, match="teacher training diverged: loss became nan at step 1"):
        train.train_teacher(cfg, tmp_path)


def _state(seed: int = 0) -> TrainState:
    model = seeded_init(seed, lambda: torch.nn.Linear(3, 2))
    return TrainState(model, lr=0.1, weight_decay=0.01, ema_decay=0.9)


def test_a_train_state_survives_a_checkpoint_bitwise(tmp_path):
    a = _state()
    for _ in range(3):
        a.step(a.model(torch.ones(4, 3)).square().mean())
        a.update_ema()
    save_checkpoint(tmp_path / LAST_CHECKPOINT, {"step": 3, **a.state_dict("student")})
    state = load_checkpoint(checkpoint_file(tmp_path), "trial checkpoint")  # the folder names its last.pt
    assert list(state) == ["step", "student", "ema", "ema_updates", "optimizer"]
    b = _state(seed=1)
    b.load_state_dict(state, "student")
    for x, y in ((a.model, b.model), (a.ema.model, b.ema.model)):
        assert all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters()))
    assert b.ema.updates == 3
    a.step(a.model(torch.ones(4, 3)).sum())
    b.step(b.model(torch.ones(4, 3)).sum())
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_restoring_a_damaged_state_is_one_line_naming_the_file(tmp_path):
    state = _state().state_dict("model")
    del state["ema"]["weight"]
    with pytest.raises(DseError, match=r"teacher checkpoint .*x\.pt is corrupt \(RuntimeError: .*; delete it") as err:
        with restoring(tmp_path / "x.pt", "teacher checkpoint", "delete it and retrain"):
            _state().load_state_dict(state, "model")
    assert "\n" not in str(err.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DseError, match="is empty, not a trial checkpoint"):
        load_checkpoint(tmp_path / "empty.pt", "trial checkpoint")
