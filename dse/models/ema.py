"""Owns the exponential moving average of a model's weights, which both trainers keep and which is
the model a trial measures and a trained teacher samples with."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """Exponential moving average of a model's weights, with a warm-up so short runs are meaningful:
    decay_t = min(decay, (1 + t) / (10 + t)) at update t, applied to all parameters at once (one
    foreach kernel on a GPU, not a launch per tensor)."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)
