"""The TA (paper App. B.2) and DMD (Yin et al. 2024) setups: formulas, graph hygiene, loss falling on
tiny digits pairs, the teacher kinds DMD runs with, and exact resume."""

import dataclasses

import numpy as np
import pytest
import torch

from dse.config import TrainConfig, study_from_dict
from dse.data.pairs import PairStore
from dse.distill.losses import l2
from dse.distill.setups import DMD, TA, Batch, penultimate
from dse.distill.train import setup_context, train_student
from dse.errors import DseError
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)
CPU = torch.device("cpu")
TINY_TA = {"ta_depth": 2, "ta_width": 48, "ta_heads": 4}
TINY_FAKE = {"dmd_fake_depth": 1, "dmd_fake_width": 32, "dmd_fake_heads": 4}


def _student(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(StudentArch(2, 32, 4), G)


def _batch(n: int = 4) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n), torch.rand(n, 1, 8, 8, generator=g) * 2 - 1)


def _ta(tiny_pairs, tmp_path=None, **overrides) -> TA:
    cfg = TrainConfig(setup="ta", batch_size=32, lr=1e-3, **{"ta_steps": 3, **TINY_TA, **overrides})
    setup = TA(l2, cfg)
    setup.prepare(setup_context(PairStore.open(tiny_pairs), CPU, G, 32, tmp_path, seed=0))
    return setup


def _losses(student, pairs, cfg, **kwargs) -> list[float]:
    losses = []
    train_student(student, pairs, cfg, CPU, progress=lambda s, l: losses.append(l), progress_every=1, **kwargs)
    return losses


# ---------------------------------------------------------------------------------------------- TA


def test_ta_expansion_maps_student_features_to_the_ta_width(tiny_pairs):
    setup = _ta(tiny_pairs)
    student = _student().eval()
    batch = _batch()
    _, trace = student(batch.z, batch.y, return_features=True)
    h_s = setup.expansion(penultimate(trace.blocks))
    assert penultimate(trace.blocks).shape == (4, 16, 32)  # (B, T, w_s), T = (8 / 2)^2
    assert h_s.shape == (4, 16, 48)  # (B, T, w_TA)
    _, trace_ta = setup.ta(batch.z, batch.y, return_features=True)
    assert setup.ta.decode(h_s, trace_ta.c).shape == (4, 1, 8, 8)
    assert not any(p.requires_grad for p in setup.ta.parameters()) and not setup.ta.training


def test_ta_loss_is_the_weighted_sum_of_its_three_terms(tiny_pairs):
    setup = _ta(tiny_pairs, ta_lambda0=0.5, ta_lambda1=2.0, ta_lambda2=3.0, ta_feature_loss="mse")
    student, batch = _student().eval(), _batch()
    loss = setup(student, batch)
    x_hat, trace = student(batch.z, batch.y, return_features=True)
    x_ta, trace_ta = setup.ta(batch.z, batch.y, return_features=True)
    feature = (setup.expansion(trace.blocks[-2]) - trace_ta.blocks[-2]).square().mean()
    assert torch.allclose(loss, 0.5 * l2(batch.x, x_hat) + 2.0 * l2(x_ta, x_hat) + 3.0 * feature, atol=1e-6)


def test_ta_terms_with_lambda_0_do_not_touch_the_graph(tiny_pairs):
    setup = _ta(tiny_pairs, ta_lambda2=0.0)
    calls = []
    setup.ta.register_forward_hook(lambda *args: calls.append(1))
    student, batch = _student(), _batch()
    setup(student, batch).backward()
    assert setup.expansion.weight.grad is None and len(calls) == 1  # E unused, the TA called once

    setup.cfg = dataclasses.replace(setup.cfg, ta_lambda1=0.0)
    setup(student, batch).backward()
    assert len(calls) == 1  # lambda1 = lambda2 = 0: the TA is never called

    setup.cfg = dataclasses.replace(setup.cfg, ta_lambda0=0.0, ta_lambda2=1.0, ta_feature_loss="mse")
    setup(student, batch).backward()
    assert setup.expansion.weight.grad is not None and setup.expansion.weight.grad.abs().sum() > 0


def test_a_ta_is_trained_once_per_artifacts_dir_and_loads_from_a_checkpoint(tiny_pairs, tmp_path):
    first = _ta(tiny_pairs, tmp_path)
    file = tmp_path / "ta" / "last.pt"
    stamp = file.stat().st_mtime_ns
    second = _ta(tiny_pairs, tmp_path)
    assert file.stat().st_mtime_ns == stamp  # loaded, not retrained
    loaded = _ta(tiny_pairs, ta_checkpoint=str(tmp_path / "ta"), ta_steps=0)
    for a, b, c in zip(first.ta.parameters(), second.ta.parameters(), loaded.ta.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(DseError, match="ta_width"):
        _ta(tiny_pairs, ta_checkpoint=str(file), ta_width=64)


@pytest.mark.parametrize("extra", [
    {"ta_lambda2": 1.0, "ta_feature_loss": "mse"},
    {"loss": "lpips", "lpips_size": 64, "ta_lambda2": 1.0, "ta_feature_loss": "lpips"},
])
def test_ta_lowers_its_loss_on_a_tiny_problem(tiny_pairs, extra):
    cfg = TrainConfig(setup="ta", steps=30, batch_size=32, lr=1e-3, ta_steps=20, **TINY_TA, **extra)
    losses = _losses(_student(), PairStore.open(tiny_pairs), cfg)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_ta_resume_is_exact(tiny_pairs, tmp_path):
    cfg = TrainConfig(setup="ta", steps=6, batch_size=32, lr=1e-3, ta_steps=4, ta_lambda2=1.0,
                      ta_feature_loss="mse", **TINY_TA)
    pairs = PairStore.open(tiny_pairs)
    straight = train_student(_student(), pairs, cfg, CPU)
    train_student(_student(), pairs, dataclasses.replace(cfg, steps=3), CPU, checkpoint_dir=tmp_path)
    resumed = train_student(_student(), pairs, cfg, CPU, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 3
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- DMD


def _dmd(tiny_pairs, **overrides) -> DMD:
    setup = DMD(l2, TrainConfig(setup="dmd", **{**TINY_FAKE, **overrides}))
    setup.prepare(setup_context(PairStore.open(tiny_pairs), CPU, G, 32, None, seed=0))
    return setup


def test_dmd_gradient_vanishes_when_the_fake_score_equals_the_real_one(tiny_pairs):
    setup = _dmd(tiny_pairs)
    setup.fake = setup.real
    x_hat = _batch().x.clone().requires_grad_(True)
    setup.distribution_matching(x_hat, torch.arange(4), torch.Generator().manual_seed(0)).backward()
    assert torch.count_nonzero(x_hat.grad) == 0


def test_dmd_gradient_is_the_normalised_score_difference(tiny_pairs):
    # D_real = 0 and D_fake = 0.1: grad x_hat = w (D_fake - D_real) / numel with w = 1 / mean|x_hat|
    setup = _dmd(tiny_pairs)
    setup.real = lambda x, sigma, y: torch.zeros_like(x, dtype=torch.float64)
    setup.fake = lambda x, sigma, y: torch.full_like(x, 0.1)
    x_hat = _batch().x.clone().requires_grad_(True)
    setup.distribution_matching(x_hat, torch.arange(4), torch.Generator().manual_seed(0)).backward()
    w = 1 / x_hat.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x_hat.grad, (0.1 * w / x_hat.numel()).expand_as(x_hat), rtol=1e-5)


def test_dmd_lowers_its_loss_with_the_empirical_teacher(tiny_pairs, monkeypatch):
    # The distribution-matching term is a surrogate: its value, 0.5 mean(w (D_fake - D_real))^2, is
    # the squared score gap, which does not fall while the fake score (from scratch) still learns.
    # So the total falls less than GET's; the regression part must fall as clearly as GET's does.
    matching, dm = DMD.distribution_matching, []

    def recorded(self, *args):
        value = matching(self, *args)
        dm.append(value.item())
        return value

    monkeypatch.setattr(DMD, "distribution_matching", recorded)
    cfg = TrainConfig(setup="dmd", steps=30, batch_size=32, lr=1e-3, dmd_fake_lr=1e-3, **TINY_FAKE)
    losses = np.array(_losses(_student(), PairStore.open(tiny_pairs), cfg))
    regression = losses - np.array(dm)
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])
    assert np.mean(regression[-5:]) < 0.9 * np.mean(regression[:5])


def test_dmd_resume_is_exact(tiny_pairs, tmp_path):
    cfg = TrainConfig(setup="dmd", steps=4, batch_size=32, lr=1e-3, dmd_fake_lr=1e-3, **TINY_FAKE)
    pairs = PairStore.open(tiny_pairs)
    straight = train_student(_student(), pairs, cfg, CPU)
    train_student(_student(), pairs, dataclasses.replace(cfg, steps=2), CPU, checkpoint_dir=tmp_path)
    resumed = train_student(_student(), pairs, cfg, CPU, checkpoint_dir=tmp_path)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


EXTERNAL_TEACHER = '''
import torch


def build(device="cpu"):
    """The exact denoiser of N(0, 0.5^2 I) data."""
    return lambda x, sigma, labels: 0.25 / (0.25 + sigma.view(-1, 1, 1, 1) ** 2) * x
'''


@pytest.mark.parametrize("kind", ["external", "trained"])
def test_dmd_runs_with_the_external_and_trained_teachers(kind, tmp_path, monkeypatch):
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings
    from dse.teacher.train import TeacherTrainConfig, train_teacher

    if kind == "external":
        (tmp_path / "dse_test_dmd_teacher.py").write_text(EXTERNAL_TEACHER)
        monkeypatch.syspath_prepend(str(tmp_path))
        source = "dse_test_dmd_teacher:build"
    else:
        source = str(train_teacher(TeacherTrainConfig(depth=1, width=16, heads=2, steps=2, batch_size=8), tmp_path / "teacher"))
    pairs = generate_pairs(tmp_path / "pairs", teacher=kind, source=source, num_pairs=32,
                           settings=SamplerSettings(num_steps=2))
    setup_cfg = TrainConfig(setup="dmd", steps=2, batch_size=16, lr=1e-3, dmd_fake_lr=1e-3, **TINY_FAKE)
    out = train_student(_student(), PairStore.open(pairs), setup_cfg, CPU)
    assert np.isfinite(out.final_loss) and out.final_loss > 0


def test_dmd_needs_pairs_that_name_their_teacher(tiny_pairs):
    store = PairStore.open(tiny_pairs)
    store.manifest = {k: v for k, v in store.manifest.items() if k != "teacher"}
    with pytest.raises(DseError, match="teacher"):
        DMD(l2, TrainConfig(setup="dmd")).prepare(setup_context(store, CPU, G, 32))


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("train, message", [
    ({"setup": "ta", "ta_lambda0": 0.0, "ta_lambda1": 0.0}, "not all 0"),
    ({"setup": "ta", "ta_lambda1": -1.0}, "not all 0"),
    ({"setup": "ta", "ta_width": 100, "ta_heads": 12}, "ta_width"),
    ({"setup": "ta", "ta_feature_loss": "cosine"}, "ta_feature_loss"),
    ({"setup": "ta", "ta_steps": 0}, "ta_checkpoint"),
    ({"setup": "dmd", "dmd_weight": 0.0, "dmd_regression_weight": 0.0}, "not both 0"),
    ({"setup": "dmd", "dmd_fake_width": 30}, "dmd_fake_width"),
    ({"setup": "dmd", "dmd_fake_lr": 0.0}, "dmd_fake_lr"),
])
def test_bad_ta_and_dmd_settings_are_config_errors(train, message):
    with pytest.raises(DseError, match=message):
        study_from_dict({"space": {"budget": "420k", "setups": [train["setup"]]}, "train": train})


def test_ta_and_dmd_defaults_validate():
    for setup in ("ta", "dmd"):
        assert study_from_dict({"space": {"budget": "420k", "setups": [setup]}}).trainings()[0][1].setup == setup


def test_the_trainers_context_gives_setups_what_they_would_otherwise_import(tiny_pairs):
    from dse.distill.setups import SetupContext
    from dse.teacher.registry import make_teacher

    ctx = setup_context(PairStore.open(tiny_pairs), CPU, G, 32)
    assert ctx.load_teacher is make_teacher and callable(ctx.pretrain)
    bare = SetupContext(PairStore.open(tiny_pairs), CPU, G, 32)  # without the trainer's ways
    with pytest.raises(RuntimeError, match="ctx.pretrain"):
        TA(l2, TrainConfig(setup="ta", **TINY_TA)).prepare(bare)
    with pytest.raises(RuntimeError, match="ctx.load_teacher"):
        DMD(l2, TrainConfig(setup="dmd", **TINY_FAKE)).prepare(bare)
