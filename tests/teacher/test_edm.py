import inspect
import math

import pytest
import torch

from dse import config
from dse.distill.setups import mi1_sigma, mi1_target
from dse.models.dit import STUDENT_TIME
from dse.teacher import edm
from dse.teacher.edm import (
    SamplerSettings,
    dit_time,
    edm_loss_weight,
    edm_preconditioning,
    heun_sample,
    sample_training_sigma,
    sigma_schedule,
    time_steps,
)
from dse.teacher.train import TeacherTrainConfig

SD = 0.5


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


def test_preconditioning_at_sigma_data():
    c_skip, c_out, c_in, c_noise = edm_preconditioning(torch.tensor([SD], dtype=torch.float64), SD)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(SD / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (SD * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(SD) / 4)


def test_preconditioning_at_other_noise_levels():
    sigma = torch.tensor([0.1, 2.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, SD)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(SD**2 / (s**2 + SD**2))
        assert c_out[i].item() == pytest.approx(s * SD / math.sqrt(s**2 + SD**2))
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + SD**2))
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4)
    # Unit variance of the network's input: Var(c_in (y + n)) = 1 for data of standard deviation SD.
    torch.testing.assert_close(c_in**2 * (SD**2 + sigma**2), torch.ones(3, dtype=torch.float64))


def test_loss_weight():
    sigma = torch.tensor([0.01, SD, 3.0], dtype=torch.float64)
    weight = edm_loss_weight(sigma, SD)
    assert weight[1].item() == pytest.approx(2 / SD**2)  # (2 sd^2) / sd^4
    assert weight[0].item() == pytest.approx((0.01**2 + SD**2) / (0.01 * SD) ** 2)
    # EDM chooses lambda = 1 / c_out^2, so the network's effective target has unit weight.
    _, c_out, _, _ = edm_preconditioning(sigma, SD)
    torch.testing.assert_close(weight * c_out**2, torch.ones(3, dtype=torch.float64))


def test_dit_time_maps_log_sigma_onto_dits_range():
    sigma = torch.tensor([math.exp(-8), 1.0, math.exp(8)], dtype=torch.float64)
    _, _, _, c_noise = edm_preconditioning(sigma, SD)
    torch.testing.assert_close(dit_time(c_noise), torch.tensor([0.0, 500.0, 1000.0], dtype=torch.float64))


def test_training_sigma_is_log_normal():
    g = torch.Generator().manual_seed(0)
    log_sigma = sample_training_sigma(100_000, -1.2, 1.2, g, "cpu").log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)


def test_edm_constants_are_the_papers_and_every_default_refers_to_them():
    assert (edm.SIGMA_MIN, edm.SIGMA_MAX, edm.RHO, edm.NUM_STEPS) == (0.002, 80.0, 7.0, 18)
    assert (edm.SIGMA_DATA, edm.P_MEAN, edm.P_STD) == (0.5, -1.2, 1.2)
    s = SamplerSettings()
    assert (s.num_steps, s.sigma_min, s.sigma_max, s.rho) == (edm.NUM_STEPS, edm.SIGMA_MIN, edm.SIGMA_MAX, edm.RHO)
    t = TeacherTrainConfig()
    assert (t.sigma_data, t.P_mean, t.P_std) == (edm.SIGMA_DATA, edm.P_MEAN, edm.P_STD)
    assert STUDENT_TIME == edm.SIGMA_MAX  # the one-step student's constant time input
    for fn, names in ((sigma_schedule, ("sigma_min", "sigma_max", "rho")), (mi1_sigma, ("sigma_max", "rho")),
                      (mi1_target, ("sigma_max",))):
        defaults = inspect.signature(fn).parameters
        assert [defaults[n].default for n in names] == [getattr(edm, n.upper()) for n in names], fn.__name__


def test_the_configs_literal_defaults_equal_edms_constants():
    # dse.config imports no torch, so it spells EDM's defaults as literals: they must stay equal.
    t = config.TeacherConfig()
    assert (t.num_steps, t.sigma_min, t.sigma_max, t.rho) == (edm.NUM_STEPS, edm.SIGMA_MIN, edm.SIGMA_MAX, edm.RHO)
    train = config.TrainConfig()
    assert (train.mi1_sigma_max, train.mi1_rho) == (edm.SIGMA_MAX, edm.RHO)
    assert train.mi1_sigma_min == inspect.signature(mi1_sigma).parameters["sigma_min"].default
