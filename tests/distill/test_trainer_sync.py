"""The trainer without host round-trips (issue 14): losses read every `progress_every` steps, a NaN still
caught at its own step and never checkpointed, the pairs fed resident or streamed with the same values,
the epoch order computed once, and torch.compile as an option."""

import dataclasses

import numpy as np
import pytest
import torch

import dse.distill.train as train_module
from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import l2
from dse.distill.train import BatchOrder, LossLog, Curve, PairFeed, batch_indices, store_bytes, train_student
from dse.models.dit import DiT
from dse.training import TrainingDiverged
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)
CPU = torch.device("cpu")


def fresh(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(StudentArch(2, 32, 4), G)


def nan_at(step: int):
    """A make_loss stand-in whose l2 turns NaN at call `step` (one call per training step)."""
    calls = {"n": 0}

    def make(name, device="cpu", **_):
        def loss(target, pred):
            calls["n"] += 1
            out = l2(target, pred)
            return out * float("nan") if calls["n"] == step else out
        return loss
    return make


def test_the_batch_order_is_the_same_formula_step_after_step():
    order = BatchOrder(37, 8, seed=4)
    for step in range(1, 30):  # several epochs of 4 batches
        assert np.array_equal(order(step), batch_indices(37, 8, 4, step))
    assert len(set(np.concatenate([order(s) for s in range(5, 9)]))) == 32  # epoch 2 has distinct pairs


@pytest.mark.parametrize("nan_step, every", [(7, 5), (5, 5), (1, 50), (12, 4)])
def test_a_nan_is_reported_at_its_own_step_though_losses_are_read_in_batches(tiny_pairs, monkeypatch, nan_step, every):
    monkeypatch.setattr(train_module, "make_loss", nan_at(nan_step))
    seen = []
    with pytest.raises(TrainingDiverged, match=f"at step {nan_step};"):
        train_student(fresh(), PairStore.open(tiny_pairs), TrainConfig(steps=12, batch_size=16), CPU,
                      progress=lambda s, l: seen.append(s), progress_every=every)
    assert all(s < nan_step for s in seen)  # no progress reported past the NaN


def test_a_diverged_run_never_writes_its_checkpoint(tiny_pairs, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "make_loss", nan_at(7))
    cfg = TrainConfig(steps=12, batch_size=16, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match="at step 7;"):
        train_student(fresh(), PairStore.open(tiny_pairs), cfg, CPU, checkpoint_dir=tmp_path, progress_every=50)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 5  # the step-10 checkpoint was refused: its state had seen the NaN
    assert all(torch.isfinite(v).all() for v in state["student"].values())


def test_progress_gets_the_loss_of_its_own_step(tiny_pairs, monkeypatch):
    values = iter(np.linspace(3.0, 1.0, 12))

    def make(name, device="cpu", **_):
        return lambda target, pred: l2(target, pred) * 0 + float(next(values))
    monkeypatch.setattr(train_module, "make_loss", make)
    seen = []
    out = train_student(fresh(), PairStore.open(tiny_pairs), TrainConfig(steps=12, batch_size=16), CPU,
                        progress=lambda s, l: seen.append((s, l)), progress_every=5, curve_points=12)
    expected = np.linspace(3.0, 1.0, 12)
    assert [s for s, _ in seen] == [5, 10, 12]
    assert [l for _, l in seen] == pytest.approx([expected[4], expected[9], expected[11]])
    assert [l for _, l in out.curve] == pytest.approx(expected)  # every step's loss, read in three batches
    assert out.final_loss == pytest.approx(expected[-1])


def test_loss_log_reads_pending_losses_once():
    log = LossLog(Curve(4, 4))
    for step, value in enumerate([1.0, 2.0, 3.0], start=1):
        log.add(step, torch.tensor(value))
    assert log.flush() == 3.0 and log.curve.points == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert log.flush() == 3.0 and len(log.curve.points) == 3  # nothing pending: nothing added
    log.add(4, torch.tensor(float("inf")))
    with pytest.raises(TrainingDiverged, match="inf at step 4"):
        log.flush()


def test_resident_and_streamed_pairs_give_the_same_batches_and_the_same_run(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    resident, streamed = PairFeed(pairs, CPU, resident=True), PairFeed(pairs, CPU, resident=False)
    assert resident.resident and not streamed.resident
    idx = np.array([5, 0, 63, 17])
    for a, b in zip(dataclasses.astuple(resident.batch(idx)), dataclasses.astuple(streamed.batch(idx))):
        assert a.dtype == b.dtype and torch.equal(a, b)
    cfg = TrainConfig(steps=6, batch_size=16, lr=1e-3)
    one = train_student(fresh(), pairs, cfg, CPU, resident=True)
    two = train_student(fresh(), pairs, cfg, CPU, resident=False)
    for p, q in zip(one.ema.parameters(), two.ema.parameters()):
        assert torch.equal(p, q)
    assert not PairFeed(pairs, CPU).resident  # the CPU reads its memory maps


def test_store_bytes_counts_the_stored_dtypes(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    per_pair = 4 * 64 + 8 + np.dtype(pairs.manifest["image_dtype"]).itemsize * 64  # z float32, y int64, x 1x8x8
    assert store_bytes(pairs) == len(pairs) * per_pair


def test_the_ema_follows_its_formula_with_one_call_for_all_parameters():
    from dse.models.ema import EMA

    model = fresh()
    ema = EMA(model, decay=0.5)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = min(0.5, 2 / 11)
    for old, new, cur in zip(before, ema.model.parameters(), model.parameters()):
        assert torch.allclose(new, d * old + (1 - d) * cur)


def test_compiled_training_matches_eager_training(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfg = TrainConfig(steps=4, batch_size=16, lr=1e-3)
    eager = train_student(fresh(), pairs, cfg, CPU)
    compiled = train_student(fresh(), pairs, dataclasses.replace(cfg, compile=True), CPU)
    for p, q in zip(eager.ema.parameters(), compiled.ema.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert compiled.curve[-1][1] == pytest.approx(eager.curve[-1][1], rel=1e-4)
