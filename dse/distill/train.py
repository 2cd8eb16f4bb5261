"""Owns the training loop: AdamW over shuffled teacher pairs for a fixed number of steps, an EMA of
the weights, and a guard that stops a run whose loss is NaN or infinite.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import get_loss
from dse.distill.setups import Batch, make_setup


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial is stored as failed with this message."""


@dataclass
class TrainOutcome:
    ema: nn.Module
    final_loss: float
    steps: int
    seconds: float
    images_per_second: float


class EMA:
    """Exponential moving average of a model's weights, with a warm-up so short runs are meaningful:
    decay_t = min(decay, (1 + t) / (10 + t)) at update t."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)


def batches(num_pairs: int, batch_size: int, rng: np.random.Generator):
    """Endless index batches: epochs of shuffled indices, the last short batch of an epoch dropped
    unless the store is smaller than one batch."""
    size = min(batch_size, num_pairs)
    while True:
        perm = rng.permutation(num_pairs)
        for start in range(0, num_pairs - size + 1, size):
            yield perm[start : start + size]


def train_student(
    student: nn.Module, pairs: PairStore, cfg: TrainConfig, device: torch.device,
    progress: Callable[[int, float], None] | None = None, progress_every: int = 50,
) -> TrainOutcome:
    """Distil the teacher pairs into `student` for `cfg.steps` steps; returns the EMA model.

    Same config and seed give the same weights on CPU. `progress(step, loss)` is called every
    `progress_every` steps.
    """
    student.to(device).train()
    setup = make_setup(cfg.setup, get_loss(cfg.loss))
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(student, cfg.ema_decay)
    rng = np.random.default_rng(cfg.seed)
    dropout_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    index_batches = batches(len(pairs), cfg.batch_size, rng)
    loss_value, seen, start = float("nan"), 0, time.perf_counter()
    for step in range(1, cfg.steps + 1):
        z, y, x = pairs.batch(next(index_batches))
        batch = Batch(torch.from_numpy(z).to(device), torch.from_numpy(y).to(device), torch.from_numpy(x).to(device))
        loss = setup(student, batch, generator=dropout_gen)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(student)
        loss_value, seen = loss.item(), seen + len(y)
        if progress and (step % progress_every == 0 or step == cfg.steps):
            progress(step, loss_value)
    seconds = time.perf_counter() - start
    return TrainOutcome(ema.model, loss_value, cfg.steps, seconds, seen / max(seconds, 1e-9))
