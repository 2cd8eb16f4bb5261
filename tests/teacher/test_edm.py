import math

import torch

from dse.teacher.edm import SamplerSettings, heun_sample, sigma_schedule, time_steps


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, labels):
        self.calls += 1
        return self.fn(x, sigma)


def test_schedule_endpoints_and_monotonicity():
    s = SamplerSettings()
    t = time_steps(s)
    assert len(t) == 19 and t[-1] == 0
    assert math.isclose(t[0].item(), 80.0) and math.isclose(t[-2].item(), 0.002, rel_tol=1e-9)
    assert torch.all(t[1:] < t[:-1])
    assert math.isclose(sigma_schedule(torch.tensor(0.5, dtype=torch.float64), 0.02, 80, 7).item(),
                        (80 ** (1 / 7) + 0.5 * (0.02 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


def test_single_point_data_reaches_the_point_with_nfe_2n_minus_1():
    x0 = torch.tensor([0.3, -0.7, 0.1]).view(1, 3, 1, 1)
    d = Counting(lambda x, sigma: x0.expand_as(x).double())
    z = torch.randn(8, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    out = heun_sample(d, z, torch.zeros(8, dtype=torch.int64))
    assert torch.allclose(out, x0.expand_as(out), atol=1e-6)
    assert d.calls == SamplerSettings().nfe == 35


def _gaussian_endpoint_error(steps: int, n: int = 64) -> float:
    """Max relative error of the Heun endpoint for data N(mu, s^2), whose exact PF-ODE is known.

    D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), so x(sigma) - mu is proportional to
    sqrt(s^2 + sigma^2): from x_T = sigma_max z the ODE ends at mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
    """
    mu, s = 0.4, 0.5
    d = Counting(lambda x, sigma: mu + s**2 / (s**2 + sigma.view(-1, 1, 1, 1) ** 2) * (x - mu))
    z = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = heun_sample(d, z, torch.zeros(n, dtype=torch.int64), SamplerSettings(num_steps=steps)).double()
    assert d.calls == 2 * steps - 1
    start = 80 * z - mu  # x_T - mu
    shrink = s / math.sqrt(s**2 + 80**2)
    return ((out - (mu + start * shrink)).abs() / (start * shrink).abs()).max().item()


def test_gaussian_data_reaches_the_closed_form_pf_ode_endpoint():
    # Stated tolerance: with the paper's 18 steps the endpoint is within 6% of its exact value
    # (relative to the distance from the mean), and within 0.1% at 144 steps.
    assert _gaussian_endpoint_error(18) < 0.06
    assert _gaussian_endpoint_error(144) < 1e-3


def test_heun_converges_at_second_order():
    # Doubling the steps divides the error by about 4 (Euler would give 2): guards the correction.
    for steps in (18, 36):
        ratio = _gaussian_endpoint_error(steps) / _gaussian_endpoint_error(2 * steps)
        assert 3.5 < ratio < 5.0
