"""Owns the training loop: AdamW over shuffled teacher pairs for a fixed number of steps, an EMA of
the weights, atomic checkpoints with exact resume, and a guard that stops a run whose loss is NaN
or infinite.

Every random choice of step s is a function of (seed, s): the batch is slot s of a shuffle seeded by
(seed, epoch) and label dropout draws from a generator seeded by (seed, s). So a run resumed from
its checkpoint at step k continues exactly as the uninterrupted run would have (bitwise on CPU).
On CUDA, matmuls use TF32 and the forward pass bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import make_loss
from dse.distill.setups import Batch, Setup, SetupContext, make_setup
from dse.errors import DseError
from dse.fileio import atomic_writer

CHECKPOINT = "last.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial is stored as failed with this message."""


@dataclass
class TrainOutcome:
    ema: nn.Module
    final_loss: float
    steps: int
    seconds: float
    images_per_second: float
    resumed_from: int = 0


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


def batch_indices(num_pairs: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The pair indices of training step `step` (from 1): epochs of shuffles seeded by (seed, epoch),
    the last short batch of an epoch dropped unless the store is smaller than one batch."""
    size = min(batch_size, num_pairs)
    per_epoch = num_pairs // size
    epoch, slot = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    return order[slot * size : (slot + 1) * size]


def total_steps(cfg: TrainConfig, num_pairs: int) -> int:
    """The run's length: `cfg.epochs` passes over the pairs (whole batches) if set, else `cfg.steps`."""
    if cfg.epochs > 0:
        return max(1, round(cfg.epochs * (num_pairs // min(cfg.batch_size, num_pairs))))
    return cfg.steps


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save(path: Path, step: int, student: nn.Module, ema: EMA, opt: torch.optim.Optimizer, setup: Setup,
          loss: float) -> None:
    state = {"step": step, "student": student.state_dict(), "ema": ema.model.state_dict(),
             "ema_updates": ema.updates, "optimizer": opt.state_dict(), "setup": setup.state_dict(), "loss": loss}
    with atomic_writer(path) as f:
        torch.save(state, f)


def _resume(path: Path, student: nn.Module, ema: EMA, opt: torch.optim.Optimizer, setup: Setup,
            device: torch.device) -> tuple[int, float]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        student.load_state_dict(state["student"])
        ema.model.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        opt.load_state_dict(state["optimizer"])
        setup.load_state_dict(state.get("setup", {}))
        return int(state["step"]), float(state["loss"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, EOFError) as exc:
        raise DseError(f"trial checkpoint {path} is unreadable ({exc}); delete it to train from scratch") from None


def train_student(
    student: nn.Module, pairs: PairStore, cfg: TrainConfig, device: torch.device,
    progress: Callable[[int, float], None] | None = None, progress_every: int = 50,
    checkpoint_dir: str | Path | None = None,
) -> TrainOutcome:
    """Distil the teacher pairs into `student` for `total_steps(cfg, len(pairs))` steps; returns the EMA model.

    With `checkpoint_dir`, the state is saved atomically to `checkpoint_dir/last.pt` every
    `cfg.checkpoint_every` steps (if > 0) and at the end, and a run that finds a checkpoint there
    resumes from it. `progress(step, loss)` is called every `progress_every` steps. The setup is
    prepared once before the loop (a TA setup keeps its teaching assistant in `checkpoint_dir/ta`)
    and its own state travels in the checkpoint.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    student.to(device).train()
    loss_fn = make_loss(cfg.loss, device, lpips_net=cfg.lpips_net, lpips_size=cfg.lpips_size or None)
    setup = make_setup(cfg.setup, loss_fn, cfg)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    setup.prepare(SetupContext(pairs, device, student.geometry, student.arch.width,
                               path.parent if path is not None else None, cfg.seed))
    opt = torch.optim.AdamW([*student.parameters(), *setup.extra_parameters()], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ema = EMA(student, cfg.ema_decay)
    first, loss_value = 1, float("nan")
    if path is not None and path.is_file():
        done, loss_value = _resume(path, student, ema, opt, setup, device)
        first = done + 1
    steps = total_steps(cfg, len(pairs))
    seen, start = 0, time.perf_counter()
    for step in range(first, steps + 1):
        z, y, x = pairs.batch(batch_indices(len(pairs), cfg.batch_size, cfg.seed, step))
        batch = Batch(torch.from_numpy(z).to(device), torch.from_numpy(y).to(device), torch.from_numpy(x).to(device))
        dropout = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        with _autocast(device):
            loss = setup(student, batch, generator=dropout)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        setup.after_step(student, batch, generator=dropout)
        ema.update(student)
        loss_value, seen = loss.item(), seen + len(y)
        if path is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == steps):
            _save(path, step, student, ema, opt, setup, loss_value)
        if progress and (step % progress_every == 0 or step == steps):
            progress(step, loss_value)
    seconds = time.perf_counter() - start
    return TrainOutcome(ema.model, loss_value, steps, seconds, seen / max(seconds, 1e-9), resumed_from=first - 1)
