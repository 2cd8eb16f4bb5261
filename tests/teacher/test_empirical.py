import torch

from dse.teacher.edm import SamplerSettings, heun_sample
from dse.teacher.empirical import EmpiricalDenoiser


def _data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 4, 4, generator=g) * 2 - 1
    labels = torch.arange(12) % 3
    return images, labels


def test_denoiser_is_the_softmax_weighted_mean_of_the_class():
    images, labels = _data()
    d = EmpiricalDenoiser(images.numpy(), labels.numpy())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.7, 2.0], dtype=torch.float64)
    y = torch.tensor([1, 2])
    out = d(x, sigma, y)
    for i in range(2):
        members = images[labels == y[i]].double().flatten(1)
        w = torch.softmax(-((x[i].flatten() - members) ** 2).sum(1) / (2 * sigma[i] ** 2), 0)
        assert torch.allclose(out[i].flatten(), w @ members, atol=1e-10)


def test_limits_small_sigma_snaps_to_nearest_and_large_sigma_gives_class_mean():
    images, labels = _data()
    d = EmpiricalDenoiser(images.numpy(), labels.numpy())
    target = images[4:5].double()  # class 1
    near = d(target + 0.01, torch.tensor([1e-3], dtype=torch.float64), torch.tensor([1]))
    assert torch.allclose(near, target, atol=1e-9)
    far = d(torch.zeros(1, 1, 4, 4), torch.tensor([1e4], dtype=torch.float64), torch.tensor([1]))
    assert torch.allclose(far[0], images[labels == 1].double().mean(0), atol=1e-6)


def test_pf_ode_with_the_exact_denoiser_ends_on_a_training_image_of_the_label():
    images, labels = _data()
    d = EmpiricalDenoiser(images.numpy(), labels.numpy())
    y = torch.tensor([0, 1, 2, 0])
    out = heun_sample(d, torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3)), y, SamplerSettings())
    for i in range(4):
        dist = (images[labels == y[i]] - out[i]).flatten(1).norm(dim=1)
        assert dist.min() < 1e-3


def test_chunked_sum_equals_the_one_shot_softmax():
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(300, 1, 4, 4, generator=g) * 2 - 1, torch.arange(300) % 2
    whole = EmpiricalDenoiser(images.numpy(), labels.numpy(), chunk=10_000)
    chunked = EmpiricalDenoiser(images.numpy(), labels.numpy(), chunk=7)
    x = torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 2
    for s in (0.002, 0.3, 5.0, 80.0):
        sigma = torch.full((16,), s, dtype=torch.float64)
        assert torch.allclose(chunked(x * s, sigma, y), whole(x * s, sigma, y), atol=1e-12)
