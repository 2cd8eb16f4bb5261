"""Owns the EDM probability-flow ODE: the sigma schedule and the deterministic Heun sampler
(Karras et al. 2022, Algorithm 1 with S_churn = 0), which turns noise into teacher images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# A denoiser D(x, sigma, labels) -> denoised: x (B, C, H, W), sigma (B,), labels (B,) int64.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    """EDM's deterministic sampler settings; the defaults are the paper's teacher (18 steps)."""

    num_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    @property
    def nfe(self) -> int:
        """Denoiser evaluations: two per step, except the last, which takes no 2nd-order correction."""
        return 2 * self.num_steps - 1


def sigma_schedule(
    t: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
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
