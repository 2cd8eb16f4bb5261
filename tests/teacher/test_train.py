import re
from dataclasses import replace

import pytest
import torch

from dse.errors import DseError
from dse.teacher.train import TeacherTrainConfig, load_trained_teacher, read_checkpoint, train_teacher

# A tiny network and short runs keep these tests fast; warm-up is short so the loss moves quickly.
TINY = TeacherTrainConfig(depth=1, width=32, heads=2, batch_size=32, steps=6, checkpoint_every=3, warmup_steps=5)


def test_config_is_validated():
    with pytest.raises(DseError, match="multiple of 4 and of heads"):
        TeacherTrainConfig(width=30, heads=4)
    with pytest.raises(DseError, match="steps must be at least 1"):
        TeacherTrainConfig(steps=0)
    assert TeacherTrainConfig.from_json(TINY.to_json()) == TINY


def test_short_training_lowers_the_edm_loss(tmp_path):
    losses = []
    cfg = TeacherTrainConfig(depth=1, width=32, heads=2, batch_size=64, steps=60, warmup_steps=10,
                             checkpoint_every=1000)
    path = train_teacher(cfg, tmp_path, progress=lambda step, steps, loss: losses.append(loss), progress_every=20)
    assert path == tmp_path / "last.pt" and read_checkpoint(path)["step"] == 60
    assert len(losses) == 3
    assert losses[-1] < 0.8 * losses[0], losses


def _state(path):
    ckpt = read_checkpoint(path)
    return ckpt["step"], ckpt["model"], ckpt["ema"], ckpt["ema_updates"], ckpt["optimizer"], ckpt["generator"]


def _assert_bitwise_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_bitwise_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bitwise_equal(x, y)
    else:
        assert a == b


class Crash(Exception):
    pass


def _crash_at(step_to_crash):
    def progress(step, steps, loss):
        if step == step_to_crash:
            raise Crash

    return progress


def test_resume_after_a_crash_is_exact(tmp_path):
    straight = train_teacher(TINY, tmp_path / "straight")
    with pytest.raises(Crash):  # the checkpoint of step 3 survives; steps 4 and 5 are lost
        train_teacher(TINY, tmp_path / "resumed", progress=_crash_at(5), progress_every=1)
    assert read_checkpoint(tmp_path / "resumed")["step"] == 3
    done = []
    resumed = train_teacher(TINY, tmp_path / "resumed", progress=lambda step, *_: done.append(step), progress_every=1)
    assert done == [4, 5, 6]  # resumed, not restarted
    _assert_bitwise_equal(_state(straight), _state(resumed))


def test_training_longer_continues_the_same_run(tmp_path):
    straight = train_teacher(TINY, tmp_path / "straight")
    train_teacher(replace(TINY, steps=4), tmp_path / "longer")
    done = []
    longer = train_teacher(TINY, tmp_path / "longer", progress=lambda step, *_: done.append(step), progress_every=1)
    assert done == [5, 6]
    _assert_bitwise_equal(_state(straight), _state(longer))


def test_finished_run_is_left_alone(tmp_path):
    path = train_teacher(TINY, tmp_path)
    before = path.read_bytes()
    assert train_teacher(TINY, tmp_path) == path
    assert path.read_bytes() == before


def test_resume_with_another_config_is_an_error(tmp_path):
    train_teacher(TINY, tmp_path)
    with pytest.raises(DseError, match=r"different config \(lr 0.002 -> 0.0001\)"):
        train_teacher(replace(TINY, lr=1e-4), tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_teacher(TINY, tmp_path_factory.mktemp("teacher"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trained_teacher_shape_dtype_and_small_sigma_identity(trained, dtype):
    teacher = load_trained_teacher(trained.parent)  # the folder works as well as the file
    x = torch.randn(5, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(5)
    out = teacher(x, torch.full((5,), 1.0, dtype=dtype), labels)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    near_clean = teacher(x, torch.full((5,), 1e-4, dtype=dtype), labels)  # c_skip -> 1, c_out -> 0
    torch.testing.assert_close(near_clean, x, atol=1e-3, rtol=0)


def test_trained_teacher_is_deterministic_and_checks_its_data_set(trained):
    teacher = load_trained_teacher(trained, dataset="digits")
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.tensor([80.0, 1.0, 0.1]), torch.tensor([0, 5, 10])
    torch.testing.assert_close(teacher(x, sigma, labels), teacher(x, sigma, labels), rtol=0, atol=0)
    with pytest.raises(DseError, match="trained on 'digits', not 'cifar10'"):
        load_trained_teacher(trained, dataset="cifar10")


def test_bad_checkpoints_are_errors_naming_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(DseError, match=f"{re.escape(str(missing))}.*not found"):
        load_trained_teacher(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DseError, match=f"{re.escape(str(junk))}.*corrupt"):
        load_trained_teacher(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DseError, match=f"{re.escape(str(foreign))} is not a dse teacher checkpoint"):
        load_trained_teacher(foreign)


def test_truncated_checkpoint_is_an_error(trained, tmp_path):
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(trained.read_bytes()[:2000])
    with pytest.raises(DseError, match="corrupt"):
        load_trained_teacher(truncated)
    with pytest.raises(DseError, match="corrupt"):  # and training does not silently start over
        train_teacher(TINY, tmp_path)


class _Ran:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_refusals_are_one_line_and_run_nothing(trained, tmp_path):
    import pickle

    marker = tmp_path / "ran"
    cases = {"empty.pt": (b"", "is empty, not a dse teacher checkpoint"),
             "code.pt": (pickle.dumps({"format": "dse-teacher-v1", "ema": _Ran(marker)}), "could run code from the file")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DseError, match=message) as err:
            load_trained_teacher(tmp_path / name)
        assert "\n" not in str(err.value)
    ckpt = torch.load(trained, weights_only=True)
    ckpt["ema"] = {k: v for k, v in list(ckpt["ema"].items())[1:]}  # a key missing: torch lists them on many lines
    torch.save(ckpt, tmp_path / "short.pt")
    with pytest.raises(DseError, match="is corrupt .*Missing key") as err:
        load_trained_teacher(tmp_path / "short.pt")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_teacher_checkpoint_keeps_its_format_and_keys(trained):
    ckpt = read_checkpoint(trained)
    assert ckpt["format"] == "dse-teacher-v1"
    assert list(ckpt) == ["format", "config", "geometry", "step", "model", "ema", "ema_updates", "optimizer",
                          "generator"]
