import numpy as np
import pytest
import torch

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import l1, l2
from dse.distill.setups import GET, Batch
from dse.distill.train import batch_indices, train_student
from dse.models.dit import DiT
from dse.training import TrainingDiverged
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)


def test_losses_against_their_formulas():
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 1.0]])
    assert l2(a, b).item() == (1 + 9) / 2
    assert l1(a, b).item() == (1 + 3) / 2
    assert l2(a, a).item() == 0


def test_get_regresses_the_student_image_onto_the_teacher_image():
    model = DiT(StudentArch(1, 16, 2), G, label_dropout=0.0).eval()
    z, y, x = torch.randn(4, 1, 8, 8), torch.arange(4), torch.randn(4, 1, 8, 8)
    loss = GET(l2)(model, Batch(z, y, x))
    assert torch.allclose(loss, ((model(z, y) - x) ** 2).mean())


def test_batches_cover_each_epoch_once():
    first_epoch = np.concatenate([batch_indices(10, 4, 0, 1), batch_indices(10, 4, 0, 2)])
    assert len(set(first_epoch)) == 8  # 2 full batches, the short one dropped
    second_epoch = np.concatenate([batch_indices(10, 4, 0, 3), batch_indices(10, 4, 0, 4)])
    assert len(set(second_epoch)) == 8 and not np.array_equal(first_epoch, second_epoch)
    assert sorted(batch_indices(3, 8, 0, 5)) == [0, 1, 2]  # small store: one batch of all


def test_training_lowers_the_loss_and_is_deterministic(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfg = TrainConfig(steps=40, batch_size=64, lr=1e-3, seed=3)

    def run():
        torch.manual_seed(cfg.seed)
        losses = []
        out = train_student(DiT(StudentArch(2, 32, 4), G), pairs, cfg, torch.device("cpu"),
                            progress=lambda s, l: losses.append(l), progress_every=1)
        return out, losses

    a, losses = run()
    b, _ = run()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    for p, q in zip(a.ema.parameters(), b.ema.parameters()):
        assert torch.equal(p, q)
    assert a.steps == 40 and a.images_per_second > 0


def test_nan_loss_stops_training_with_the_step(tmp_path):
    from dse.data.pairs import PairWriter

    meta = {"teacher": {"kind": "t"}, "sampler": {}, "dataset": "digits", "seed": 0, "image_dtype": "float32"}
    x = np.zeros((8, 1, 8, 8), np.float32)
    x[3] = np.nan
    PairWriter(tmp_path, meta).append(np.zeros((8, 1, 8, 8)), np.arange(8), x)
    cfg = TrainConfig(steps=5, batch_size=8, seed=0)
    try:
        train_student(DiT(StudentArch(1, 16, 2), G), PairStore.open(tmp_path), cfg, torch.device("cpu"))
    except TrainingDiverged as exc:
        assert "at step 1" in str(exc)
    else:
        raise AssertionError("a NaN image must stop training")


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny_pairs, tmp_path):
    pairs = PairStore.open(tiny_pairs)
    cfg = TrainConfig(steps=12, batch_size=64, lr=1e-3, seed=5, checkpoint_every=5)

    def fresh():
        torch.manual_seed(cfg.seed)
        return DiT(StudentArch(2, 32, 4), G)

    straight = train_student(fresh(), pairs, cfg, torch.device("cpu"))
    # a run that "crashed" after its step-5 checkpoint, then started again in the same folder
    import dataclasses

    train_student(fresh(), pairs, dataclasses.replace(cfg, steps=5), torch.device("cpu"), checkpoint_dir=tmp_path)
    resumed = train_student(fresh(), pairs, cfg, torch.device("cpu"), checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 5
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 12


def test_a_damaged_checkpoint_is_a_clear_error(tiny_pairs, tmp_path):
    from dse.errors import DseError

    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    try:
        train_student(DiT(StudentArch(1, 16, 2), G), PairStore.open(tiny_pairs), TrainConfig(steps=2, batch_size=8),
                      torch.device("cpu"), checkpoint_dir=tmp_path)
    except DseError as exc:
        assert "last.pt" in str(exc)
    else:
        raise AssertionError("a damaged checkpoint must be reported")


def test_a_length_in_epochs_counts_whole_batches(tiny_pairs):
    from dse.distill.train import total_steps

    assert total_steps(TrainConfig(steps=7), 512) == 7
    assert total_steps(TrainConfig(epochs=2, batch_size=100), 512) == 10  # 5 whole batches an epoch
    assert total_steps(TrainConfig(epochs=0.5, batch_size=64), 512) == 4
    out = train_student(DiT(StudentArch(1, 16, 2), G), PairStore.open(tiny_pairs),
                        TrainConfig(epochs=1, batch_size=128, steps=999), torch.device("cpu"))
    assert out.steps == 4


def test_a_trial_checkpoint_keeps_the_keys_users_have_on_disk(tiny_pairs, tmp_path):
    from dse.training import load_checkpoint

    cfg = TrainConfig(steps=2, batch_size=64, seed=0)
    train_student(DiT(StudentArch(1, 16, 2), G), PairStore.open(tiny_pairs), cfg, torch.device("cpu"),
                  checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt", "trial checkpoint")
    assert list(state) == ["step", "student", "ema", "ema_updates", "optimizer", "setup", "loss", "curve", "curve_window"]


def test_the_curve_is_the_mean_loss_of_each_stretch_and_the_last_step(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfg = TrainConfig(steps=10, batch_size=64, lr=1e-3, seed=1)
    losses = []
    torch.manual_seed(0)
    out = train_student(DiT(StudentArch(1, 16, 2), G), pairs, cfg, torch.device("cpu"),
                        progress=lambda s, l: losses.append(l), progress_every=1, curve_points=3)
    # every 10 // 3 = 3 steps, and the last: the means of steps 1-3, 4-6, 7-9 and 10
    assert [s for s, _ in out.curve] == [3, 6, 9, 10]
    expected = [np.mean(losses[0:3]), np.mean(losses[3:6]), np.mean(losses[6:9]), losses[9]]
    assert [l for _, l in out.curve] == pytest.approx(expected, rel=1e-12)


class _Crash(Exception):
    pass


def test_a_resumed_run_gives_the_curve_of_the_uninterrupted_run(tiny_pairs, tmp_path):
    pairs = PairStore.open(tiny_pairs)
    cfg = TrainConfig(steps=12, batch_size=64, lr=1e-3, seed=5, checkpoint_every=5)

    def fresh():
        torch.manual_seed(cfg.seed)
        return DiT(StudentArch(2, 32, 4), G)

    straight = train_student(fresh(), pairs, cfg, torch.device("cpu"), curve_points=4)

    def crash_at_7(step, loss):
        if step == 7:
            raise _Crash  # after the step-5 checkpoint, in the middle of the stretch 7-9

    with pytest.raises(_Crash):
        train_student(fresh(), pairs, cfg, torch.device("cpu"), checkpoint_dir=tmp_path, progress=crash_at_7,
                      progress_every=1, curve_points=4)
    resumed = train_student(fresh(), pairs, cfg, torch.device("cpu"), checkpoint_dir=tmp_path, curve_points=4)
    assert resumed.resumed_from == 5
    assert [s for s, _ in straight.curve] == [3, 6, 9, 12]
    assert resumed.curve == straight.curve  # the point at 6 averages steps 4-5 (before) and 6 (after the resume)
    again = train_student(fresh(), pairs, cfg, torch.device("cpu"), checkpoint_dir=tmp_path, curve_points=4)
    assert again.curve == straight.curve  # a finished run "resumed" at its end keeps its curve
