import math

import numpy as np
import pytest
import torch

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import l2
from dse.distill.setups import MI1, Batch, mi1_sigma, mi1_target
from dse.distill.train import train_student
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)


def test_mi1_target_is_the_image_at_time_0_and_the_noise_end_at_time_1():
    g = torch.Generator().manual_seed(0)
    x0, z = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    assert mi1_sigma(0.0) == 0.0 and math.isclose(mi1_sigma(1.0), 80.0)
    assert torch.allclose(mi1_target(x0, z, mi1_sigma(0.0)), x0, atol=1e-6)
    assert torch.allclose(mi1_target(x0, z, mi1_sigma(1.0)), z, atol=1e-5)


def test_mi1_sigma_follows_the_edm_schedule_of_the_paper():
    # App. B.3: sigma(t) = (smax^(1/rho) + t (smin^(1/rho) - smax^(1/rho)))^rho with t = 1 - tau
    t = 1 - 0.66
    expected = (80 ** (1 / 7) + t * (0.02 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(mi1_sigma(0.66), expected, rel_tol=1e-12)
    assert mi1_sigma(0.33) < mi1_sigma(0.5) < mi1_sigma(0.66)  # more noise left, larger sigma


def test_mi1_loss_sums_the_decoded_blocks_against_their_targets():
    torch.manual_seed(0)
    model = DiT(StudentArch(6, 32, 4), G, label_dropout=0.0).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    cfg = TrainConfig(setup="mi1", mi1_blocks=(3, 6), mi1_times=(0.5, 0.0))
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 1, 8, 8, generator=g), torch.arange(4), torch.rand(4, 1, 8, 8, generator=g))
    loss = MI1(l2, cfg)(model, batch)
    image, trace = model(batch.z, batch.y, return_features=True)
    x3 = model.decode(trace.blocks[2], trace.c)
    expected = l2(mi1_target(batch.x, batch.z, mi1_sigma(0.5)), x3) + l2(batch.x, image)
    assert torch.allclose(loss, expected, atol=1e-6)


def test_mi1_refuses_blocks_the_student_does_not_have():
    cfg = TrainConfig(setup="mi1", mi1_blocks=(2, 4, 6), mi1_times=(0.66, 0.33, 0.0))
    batch = Batch(torch.randn(2, 1, 8, 8), torch.arange(2), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="6"):
        MI1(l2, cfg)(DiT(StudentArch(4, 16, 2), G), batch)


@pytest.mark.parametrize("setup, extra", [
    ("get", {}),
    ("get", {"loss": "lpips", "lpips_size": 64}),  # AlexNet needs >= ~32 px; 64 keeps the test fast on CPU
    ("mi1", {"mi1_blocks": (1, 2), "mi1_times": (0.5, 0.0)}),
])
def test_each_setup_lowers_its_loss_on_a_tiny_problem(tiny_pairs, setup, extra):
    cfg = TrainConfig(setup=setup, steps=40, batch_size=64, lr=1e-3, seed=0, **extra)
    losses = []
    torch.manual_seed(0)
    train_student(DiT(StudentArch(2, 32, 4), G), PairStore.open(tiny_pairs), cfg, torch.device("cpu"),
                  progress=lambda s, l: losses.append(l), progress_every=1)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
