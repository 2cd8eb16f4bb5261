"""Cohorts (issue 14): several students trained as one batched model, each member equal (to float
tolerance on the CPU) to the same student trained alone by `train_student`, resume included, in either
direction; a diverging member reported at its step while the others train on."""

import dataclasses

import numpy as np
import pytest
import torch

from dse.config import TrainConfig
from dse.data.pairs import PairStore, PairWriter
from dse.distill.cohort import _MemberLosses, train_cohort
from dse.distill.train import batch_indices, train_student
from dse.models.dit import DiT
from dse.training import TrainingDiverged, load_checkpoint
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)
CPU = torch.device("cpu")
ARCH = StudentArch(2, 32, 4)


def fresh(init: int) -> DiT:
    torch.manual_seed(init)
    return DiT(ARCH, G)


def configs(*members, **shared) -> list[TrainConfig]:
    """One config per member: (seed, loss) pairs over the shared keys."""
    base = TrainConfig(**{"steps": 10, "batch_size": 16, "lr": 1e-3, **shared})
    return [dataclasses.replace(base, seed=seed, loss=loss) for seed, loss in members]


def solo(cfg: TrainConfig, pairs, **kw):
    return train_student(fresh(cfg.seed), pairs, cfg, CPU, **kw)


def cohort(cfgs, pairs, **kw):
    students = [fresh(c.seed) for c in cfgs]
    return students, train_cohort(students, pairs, cfgs, CPU, **kw)


def assert_same_run(a, b, atol=2e-6):
    """Two outcomes of the same training: EMA weights and curves equal to float tolerance."""
    for (name, p), q in zip(a.ema.named_parameters(), b.ema.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=1e-5), name
    assert [s for s, _ in a.curve] == [s for s, _ in b.curve]
    assert [l for _, l in a.curve] == pytest.approx([l for _, l in b.curve], rel=1e-5)
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-5) and a.steps == b.steps


def test_a_cohort_of_three_seeds_equals_three_solo_runs(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((0, "l2"), (1, "l2"), (2, "l2"))
    seen = []
    students, outs = cohort(cfgs, pairs, progress=lambda s, l: seen.append((s, l)), progress_every=4)
    for k, (cfg, out, student) in enumerate(zip(cfgs, outs, students)):
        alone_student = fresh(cfg.seed)
        alone = train_student(alone_student, pairs, cfg, CPU)
        assert_same_run(out, alone)
        assert out.resumed_from == 0 and out.images_per_second == pytest.approx(10 * 16 / out.seconds)
        for p, q in zip(student.parameters(), alone_student.parameters()):  # the students end trained, as alone
            assert torch.allclose(p, q, atol=2e-6, rtol=1e-5)
        assert not torch.equal(out.ema.blocks[0].mlp.fc1.weight, fresh(cfg.seed).blocks[0].mlp.fc1.weight)
    assert [s for s, _ in seen] == [4, 8, 10]  # progress: every 4 steps and the last, each member's loss
    assert seen[-1][1] == [out.final_loss for out in outs] and len(set(seen[-1][1])) == 3


def test_members_with_l1_and_l2_equal_their_solo_runs(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((4, "l1"), (5, "l2"), (6, "l1"))  # two groups, members interleaved
    _, outs = cohort(cfgs, pairs)
    for cfg, out in zip(cfgs, outs):
        assert_same_run(out, solo(cfg, pairs))


def test_an_lpips_member_equals_its_solo_run_and_members_share_one_network(tiny_pairs, offline_torch_home):
    from dse.distill.losses import LPIPSLoss

    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((0, "lpips"), (1, "l2"), (2, "lpips"), steps=4, lpips_size=32)
    nets = [fn for _, _, fn in _MemberLosses(cfgs, CPU).groups if isinstance(fn, LPIPSLoss)]
    assert len(nets) == 1  # one LPIPS call over both lpips members' images
    a, b = torch.rand(6, 1, 8, 8) * 2 - 1, torch.rand(6, 1, 8, 8) * 2 - 1
    assert nets[0].per_image(a, b).shape == (6,)
    assert nets[0].per_image(a, b).mean().item() == pytest.approx(nets[0](a, b).item(), rel=1e-6)
    _, outs = cohort(cfgs, pairs)
    for cfg, out in zip(cfgs, outs):
        assert_same_run(out, solo(cfg, pairs), atol=1e-5)


def test_pos_embed_is_never_trained(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((0, "l2"), (1, "l1"), weight_decay=0.5, lr=1e-2)
    students, outs = cohort(cfgs, pairs)
    for cfg, student, out in zip(cfgs, students, outs):
        initial = fresh(cfg.seed).pos_embed
        assert torch.equal(student.pos_embed, initial) and torch.equal(out.ema.pos_embed, initial)
        assert not student.pos_embed.requires_grad


class _Crash(Exception):
    pass


def crash_at(step):
    def progress(s, losses):
        if s == step:
            raise _Crash
    return progress


def test_a_killed_cohort_resumes_to_the_uninterrupted_solo_runs(tiny_pairs, tmp_path):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((3, "l2"), (8, "l1"), steps=12, checkpoint_every=5)
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(_Crash):  # after the step-5 checkpoints
        cohort(cfgs, pairs, checkpoint_dirs=dirs, progress=crash_at(7), progress_every=1, curve_points=4)
    assert [load_checkpoint(d / "last.pt", "x")["step"] for d in dirs] == [5, 5]
    _, outs = cohort(cfgs, pairs, checkpoint_dirs=dirs, curve_points=4)
    for cfg, out, folder in zip(cfgs, outs, dirs):
        assert out.resumed_from == 5
        assert_same_run(out, solo(cfg, pairs, curve_points=4))
        assert load_checkpoint(folder / "last.pt", "x")["step"] == 12


def test_cohort_and_solo_checkpoints_resume_each_other(tiny_pairs, tmp_path):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((3, "l2"), (8, "l1"), steps=12, checkpoint_every=5)
    cohort_dirs, solo_dirs = [tmp_path / "c0", tmp_path / "c1"], [tmp_path / "s0", tmp_path / "s1"]
    with pytest.raises(_Crash):
        cohort(cfgs, pairs, checkpoint_dirs=cohort_dirs, progress=crash_at(7), progress_every=1)
    for cfg, folder in zip(cfgs, solo_dirs):
        with pytest.raises(_Crash):
            solo(cfg, pairs, checkpoint_dir=folder, progress=crash_at(7), progress_every=1)
    # the same format: keys, optimizer groups and state, values equal to float tolerance
    for c, s in zip(cohort_dirs, solo_dirs):
        mine, theirs = load_checkpoint(c / "last.pt", "x"), load_checkpoint(s / "last.pt", "x")
        assert list(mine) == list(theirs)
        assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
        assert mine["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
        for i, state in theirs["optimizer"]["state"].items():
            assert list(mine["optimizer"]["state"][i]) == list(state)
            for key, value in state.items():
                assert mine["optimizer"]["state"][i][key].dtype == value.dtype
                assert torch.allclose(mine["optimizer"]["state"][i][key], value, atol=1e-9, rtol=1e-4)
        assert mine["ema_updates"] == theirs["ema_updates"] == 5 and mine["setup"] == theirs["setup"] == {}
        assert mine["student"].keys() == theirs["student"].keys()
    straight = [solo(cfg, pairs) for cfg in cfgs]
    by_solo = solo(cfgs[1], pairs, checkpoint_dir=cohort_dirs[1])  # a cohort member resumed alone
    assert by_solo.resumed_from == 5
    assert_same_run(by_solo, straight[1])
    _, by_cohort = cohort(cfgs, pairs, checkpoint_dirs=solo_dirs)  # solo runs resumed as a cohort
    for out, alone in zip(by_cohort, straight):
        assert out.resumed_from == 5
        assert_same_run(out, alone)


def test_checkpoints_at_different_steps_train_each_member_alone(tiny_pairs, tmp_path):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((3, "l2"), (8, "l2"), steps=12, checkpoint_every=5)
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(_Crash):
        solo(cfgs[0], pairs, checkpoint_dir=dirs[0], progress=crash_at(7), progress_every=1)
    seen = []
    _, outs = cohort(cfgs, pairs, checkpoint_dirs=dirs, progress=lambda s, l: seen.append((s, list(l))),
                     progress_every=6)
    assert [out.resumed_from for out in outs] == [5, 0]  # a cohort resumes all or none: these ran alone
    for cfg, out in zip(cfgs, outs):
        alone = solo(cfg, pairs)
        for p, q in zip(out.ema.parameters(), alone.ema.parameters()):
            assert torch.equal(p, q)  # train_student itself: bitwise
    assert [s for s, _ in seen] == [6, 12, 6, 12]
    assert np.isnan(seen[0][1][1]) and seen[-1][1] == [outs[0].final_loss, outs[1].final_loss]


def nan_store(root, nan_index: int):
    meta = {"teacher": {"kind": "t"}, "sampler": {}, "dataset": "digits", "seed": 0, "image_dtype": "float32"}
    rng = np.random.default_rng(0)
    z, x = rng.standard_normal((64, 1, 8, 8)), rng.uniform(-1, 1, (64, 1, 8, 8)).astype(np.float32)
    x[nan_index] = np.nan
    PairWriter(root, meta).append(z, np.arange(64) % 10, x)
    return PairStore.open(root)


def test_a_diverging_member_is_reported_at_its_step_and_the_others_train_on(tmp_path):
    steps, bs = 6, 8
    bad = int(batch_indices(64, bs, 11, 3)[0])  # seed 11 meets the NaN image at step 3
    clean = [s for s in range(100) if not any(bad in batch_indices(64, bs, s, t) for t in range(1, steps + 1))][:2]
    pairs = nan_store(tmp_path / "pairs", bad)
    cfgs = configs((clean[0], "l2"), (11, "l2"), (clean[1], "l1"), steps=steps, batch_size=bs, checkpoint_every=2)
    dirs = [tmp_path / str(k) for k in range(3)]
    seen = []
    _, outs = cohort(cfgs, pairs, checkpoint_dirs=dirs, progress=lambda s, l: seen.append(list(l)), progress_every=2)
    with pytest.raises(TrainingDiverged) as alone:
        solo(cfgs[1], pairs)
    assert isinstance(outs[1], TrainingDiverged) and str(outs[1]) == str(alone.value)
    assert "loss became nan at step 3; lower the learning rate" in str(outs[1])
    assert load_checkpoint(dirs[1] / "last.pt", "x")["step"] == 2  # never saved after its NaN
    for k in (0, 2):
        assert_same_run(outs[k], solo(cfgs[k], pairs))
        assert load_checkpoint(dirs[k] / "last.pt", "x")["step"] == steps
    assert np.isnan(seen[-1][1]) and np.isfinite([seen[-1][0], seen[-1][2]]).all()


def test_configs_that_cannot_share_a_cohort_are_a_value_error_naming_the_key(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    two = configs((0, "l2"), (1, "l2"))
    with pytest.raises(ValueError, match=r"differ in train\.lr"):
        train_cohort([fresh(0), fresh(1)], pairs, [two[0], dataclasses.replace(two[1], lr=0.5)], CPU)
    with pytest.raises(ValueError, match="'mi1' trains alone"):
        train_cohort([fresh(0), fresh(1)], pairs, [two[0], dataclasses.replace(two[1], setup="mi1")], CPU)
    with pytest.raises(ValueError, match="architecture"):
        train_cohort([fresh(0), DiT(StudentArch(1, 32, 4), G)], pairs, two, CPU)
    with pytest.raises(ValueError, match="one checkpoint folder per student"):
        train_cohort([fresh(0), fresh(1)], pairs, two, CPU, checkpoint_dirs=["a"])


def test_a_compiled_cohort_equals_the_eager_solo_runs(tiny_pairs):
    pairs = PairStore.open(tiny_pairs)
    cfgs = configs((0, "l2"), (1, "l1"), steps=3, compile=True)  # tiny: inductor compiles on the CPU
    _, outs = cohort(cfgs, pairs)
    for cfg, out in zip(cfgs, outs):
        assert_same_run(out, solo(dataclasses.replace(cfg, compile=False), pairs), atol=1e-5)
