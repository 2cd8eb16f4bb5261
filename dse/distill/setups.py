"""Owns the distillation setups: each turns a batch of teacher pairs into the student's loss.

A setup is a small class registered in `SETUPS` under the name a search space uses
(`setup = "get" | "mi1"`). Setups with trainable parts of their own (DMD's fake score, TA's
expansion) add them through `extra_parameters` and `after_step`; GET and MI1 have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dse.config import TrainConfig
from dse.distill.losses import Loss
from dse.teacher.edm import sigma_schedule


@dataclass
class Batch:
    """Teacher pairs on the training device: noise z (B, C, H, W), labels y (B,), images x (B, C, H, W)."""

    z: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


class Setup:
    """The interface every setup follows; the defaults suit a setup with nothing of its own to train."""

    def __init__(self, loss: Loss, cfg: TrainConfig | None = None):
        self.loss, self.cfg = loss, cfg or TrainConfig()

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the student by the same optimizer."""
        return []


class GET(Setup):
    """GET (Geng et al. 2024; paper App. B.1): L(x, x_hat(z, c)) over offline teacher pairs."""

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_hat = student(batch.z, batch.y, generator=generator)  # (B, C, H, W)
        return self.loss(batch.x, x_hat)  # L_GET, paper App. B.1


def mi1_sigma(tau: float, sigma_min: float = 0.02, sigma_max: float = 80.0, rho: float = 7.0) -> float:
    """Noise level of MI1 time `tau`, written as in the paper's Table 4: the fraction of noise left.

    tau = 1 is the noise end (sigma_max) and tau = 0 the clean image (sigma = 0); in between, EDM's
    schedule sigma(t) at t = 1 - tau (paper App. B.3, whose t runs from noise, 0, to image, 1).
    """
    if tau == 0:
        return 0.0
    return float(sigma_schedule(torch.tensor(1.0 - tau, dtype=torch.float64), sigma_min, sigma_max, rho))


def mi1_target(x0: torch.Tensor, z: torch.Tensor, sigma: float, sigma_max: float = 80.0) -> torch.Tensor:
    """x(t) on the forward PF-ODE between the pair's image x0 and noise z (paper App. B.3):
    x(t) = sqrt(a(t)) x0 + sqrt(1 - a(t)) eps, a = 1 / (1 + sigma^2),
    eps = (z - sqrt(a(1)) x0) / sqrt(1 - a(1)) with a(1) at sigma_max, so x(1) = z and x(0) = x0."""
    a_end = 1.0 / (1.0 + sigma_max**2)
    eps = (z - a_end**0.5 * x0) / (1.0 - a_end) ** 0.5
    a = 1.0 / (1.0 + sigma**2)
    return a**0.5 * x0 + (1.0 - a) ** 0.5 * eps


class MI1(Setup):
    """Multi-In-One (paper App. B.3): block l's output, decoded by the student's final layer, is
    matched to x(t_l); L_MI1 = sum_{l, t} L(x(t), x_hat_l). Blocks count from 1; the usual last
    mapping, (depth, 0), is GET's loss on the student's image."""

    def __init__(self, loss: Loss, cfg: TrainConfig | None = None):
        super().__init__(loss, cfg)
        cfg = self.cfg
        if not cfg.mi1_blocks or len(cfg.mi1_blocks) != len(cfg.mi1_times):
            raise ValueError("MI1 needs train.mi1_blocks and train.mi1_times of the same, non-zero length")
        self.sigmas = [mi1_sigma(t, cfg.mi1_sigma_min, cfg.mi1_sigma_max, cfg.mi1_rho) for t in cfg.mi1_times]

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        depth = len(student.blocks)
        if max(self.cfg.mi1_blocks) > depth:
            raise ValueError(f"MI1 maps block {max(self.cfg.mi1_blocks)}, but the student has {depth} blocks")
        x_hat, trace = student(batch.z, batch.y, return_features=True, generator=generator)
        total = batch.x.new_zeros(())
        for block, sigma in zip(self.cfg.mi1_blocks, self.sigmas):
            x_hat_l = x_hat if block == depth else student.decode(trace.blocks[block - 1], trace.c)  # (B, C, H, W)
            total = total + self.loss(mi1_target(batch.x, batch.z, sigma, self.cfg.mi1_sigma_max), x_hat_l)
        return total  # L_MI1, paper App. B.3


# Setups by the name a search space uses; keep in step with dse.config.KNOWN_SETUPS.
SETUPS: dict[str, type[Setup]] = {"get": GET, "mi1": MI1}


def make_setup(name: str, loss: Loss, cfg: TrainConfig | None = None) -> Setup:
    if name not in SETUPS:
        raise KeyError(f"unknown setup {name!r}; known: {', '.join(SETUPS)}")
    return SETUPS[name](loss, cfg)
