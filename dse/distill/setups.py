"""Owns the distillation setups: each turns a batch of teacher pairs into the student's loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dse.distill.losses import Loss


@dataclass
class Batch:
    """Teacher pairs on the training device: noise z (B, C, H, W), labels y (B,), images x (B, C, H, W)."""

    z: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


class GET:
    """GET (Geng et al. 2024; paper App. B.1): L(x, x_hat(z, c)) over offline teacher pairs."""

    def __init__(self, loss: Loss):
        self.loss = loss

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_hat = student(batch.z, batch.y, generator=generator)  # (B, C, H, W)
        return self.loss(batch.x, x_hat)  # L_GET, paper App. B.1


# Setups by the name a search space uses (`setup = "get"`); keep in step with dse.config.KNOWN_SETUPS.
SETUPS: dict[str, type] = {"get": GET}


def make_setup(name: str, loss: Loss):
    if name not in SETUPS:
        raise KeyError(f"unknown setup {name!r}; known: {', '.join(SETUPS)}")
    return SETUPS[name](loss)
