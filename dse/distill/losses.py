"""Owns the image losses a setup can regress with: L(target, prediction) -> scalar, mean over the batch."""

from __future__ import annotations

from typing import Callable

import torch

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels; images (B, C, H, W)."""
    return (pred - target).abs().mean()


def l2(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels; images (B, C, H, W)."""
    return (pred - target).square().mean()


# Losses by the name a search space uses (`loss = "l2"`); keep in step with dse.config.KNOWN_LOSSES.
LOSSES: dict[str, Loss] = {"l1": l1, "l2": l2}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]
