"""Owns all of EDM (Karras et al. 2022): its constants, the sigma schedule and the deterministic Heun
sampler (Algorithm 1 with S_churn = 0), which turns noise into teacher images, and the training side
(preconditioning, loss weight, training noise levels, the preconditioned denoiser and its loss).

Depends on torch only: the networks it wraps are passed in (`dse.models.dit` imports SIGMA_MAX from
here, as the one-step student's constant time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# EDM's constants (Karras et al. 2022, Table 1), defined here only. `dse.config` repeats the
# sampler's as literal defaults (it imports no torch); a test checks that they agree.
SIGMA_MIN = 0.002  # the sampler's last noise level
SIGMA_MAX = 80.0  # the sampler's first noise level (the student's constant time, see dse.models.dit)
RHO = 7.0  # the schedule's curvature
NUM_STEPS = 18  # the paper's teacher: 18 Heun steps, 35 denoiser evaluations
SIGMA_DATA = 0.5  # standard deviation of the data, for the preconditioning
P_MEAN, P_STD = -1.2, 1.2  # training noise levels: ln(sigma) ~ N(P_mean, P_std^2)

# A denoiser D(x, sigma, labels) -> denoised: x (B, C, H, W), sigma (B,), labels (B,) int64.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    """EDM's deterministic sampler settings; the defaults are the paper's teacher (18 steps)."""

    num_steps: int = NUM_STEPS
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO

    @property
    def nfe(self) -> int:
        """Denoiser evaluations: two per step, except the last, which takes no 2nd-order correction."""
        return 2 * self.num_steps - 1


def sigma_schedule(
    t: torch.Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """sigma(t) = (sigma_max^(1/rho) + t (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, t in [0, 1].

    EDM eq. 5; t = 0 is pure noise (sigma_max), t = 1 the end of the schedule (sigma_min).
    """
    return (sigma_max ** (1 / rho) + t * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def time_steps(s: SamplerSettings, device: torch.device | str = "cpu") -> torch.Tensor:
    """The num_steps + 1 noise levels t_0 = sigma_max > ... > t_{N-1} = sigma_min > t_N = 0 (float64)."""
    i = torch.arange(s.num_steps, dtype=torch.float64, device=device)
    t = sigma_schedule(i / (s.num_steps - 1), s.sigma_min, s.sigma_max, s.rho) if s.num_steps > 1 else \
        torch.tensor([s.sigma_max], dtype=torch.float64, device=device)
    return torch.cat([t, torch.zeros_like(t[:1])])


@torch.no_grad()
def heun_sample(
    denoiser: Denoiser, z: torch.Tensor, labels: torch.Tensor, settings: SamplerSettings = SamplerSettings()
) -> torch.Tensor:
    """Integrate the PF-ODE dx/dsigma = (x - D(x, sigma)) / sigma from sigma_max to 0 with Heun's method.

    `z` is unscaled standard normal noise (B, C, H, W); the sampler multiplies it by sigma_max.
    The ODE state is kept in float64 as EDM does; returns float32 images.
    """
    t_steps = time_steps(settings, z.device)
    x_next = z.to(torch.float64) * t_steps[0]
    batch = z.shape[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        denoised = denoiser(x_cur, t_cur.expand(batch), labels).to(torch.float64)
        d_cur = (x_cur - denoised) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur  # Euler step
        if i < settings.num_steps - 1:  # 2nd-order correction, except on the last step (t_next = 0)
            denoised = denoiser(x_next, t_next.expand(batch), labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Training a denoiser: EDM's formulas (Karras et al. 2022, Table 1), each in one place.
# ---------------------------------------------------------------------------------------------


def edm_preconditioning(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise), each shaped like sigma (B,)."""
    # EDM Table 1, "Network and preconditioning" (EDMPrecond).
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) (B,), which makes the effective training target of F unit-variance."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # EDM Table 1, loss weighting


def sample_training_sigma(
    batch: int, P_mean: float, P_std: float, generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """Training noise levels (B,) with ln(sigma) ~ N(P_mean, P_std^2)."""
    return (torch.randn(batch, generator=generator, device=device) * P_std + P_mean).exp()  # EDM Table 1, p_train


def dit_time(c_noise: torch.Tensor) -> torch.Tensor:
    """The DiT timestep (B,) for EDM's c_noise (B,): t = 250 (c_noise + 2).

    DiT's sinusoidal embedder expects t in about [0, 1000]; this maps ln(sigma) in [-8, 8], i.e.
    sigma from 3e-4 to 3e3 (the sampler's SIGMA_MIN..SIGMA_MAX included), linearly onto [0, 1000].
    """
    return 250.0 * (c_noise + 2.0)


class EDMDenoiser(nn.Module):
    """D(x, sigma, y) = c_skip x + c_out F(c_in x, c_noise, y), with F a DiT (`dse.models.dit.DiT`)."""

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,), labels (B,) -> denoised (B, C, H, W). In training mode the
        DiT drops labels to the null class with its `label_dropout`, drawn from `generator`."""
        c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_preconditioning(sigma, self.sigma_data))
        f = self.net(c_in * x, labels, t=dit_time(c_noise.flatten()), generator=generator)  # (B, C, H, W)
        return c_skip * x + c_out * f  # EDM eq. 7


def edm_loss(
    denoiser: EDMDenoiser, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
    sigma_data: float = SIGMA_DATA, P_mean: float = P_MEAN, P_std: float = P_STD,
) -> torch.Tensor:
    """EDM loss lambda(sigma) ||D(y + n, sigma) - y||^2 with n ~ N(0, sigma^2 I), averaged over the
    batch and the pixels; images (B, C, H, W), labels (B,). Draws sigma, then n, from `generator`."""
    sigma = sample_training_sigma(images.shape[0], P_mean, P_std, generator, images.device)  # (B,)
    noise = torch.randn(images.shape, generator=generator, device=images.device) * sigma.view(-1, 1, 1, 1)
    denoised = denoiser(images + noise, sigma, labels, generator=generator)  # (B, C, H, W)
    weight = edm_loss_weight(sigma, sigma_data).view(-1, 1, 1, 1)
    return (weight * (denoised - images).square()).mean()  # EDM eq. 8, written with D instead of F
