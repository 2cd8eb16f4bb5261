"""Owns the student's training loop: AdamW over shuffled teacher pairs for a fixed number of steps,
an EMA of the weights, atomic checkpoints with exact resume, and a guard that stops a run whose loss
is NaN or infinite (the parts it shares with the teacher's loop are in `dse.training`), the training
curve; and the `SetupContext` it gives a setup, with the ways to train a TA and to load a teacher.

The training curve: about `CURVE_POINTS` points (step, loss), one every `max(1, steps // CURVE_POINTS)`
steps and one at the last step, each the mean training loss of the steps since the point before it
(a mean, so that the convergence test of `dse.convergence` sees the trend rather than one batch's
noise). The curve and the running mean travel in the checkpoint: a resumed run gives the same curve.

Every random choice of step s is a function of (seed, s): the batch is slot s of a shuffle seeded by
(seed, epoch) and label dropout draws from a generator seeded by (seed, s). So a run resumed from
its checkpoint at step k continues exactly as the uninterrupted run would have (bitwise on CPU).
On CUDA, matmuls use TF32 and the forward pass bf16 autocast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import make_loss
from dse.distill.setups import Batch, Setup, SetupContext, make_setup
from dse.layout import LAST_CHECKPOINT
from dse.teacher.registry import make_teacher
from dse.training import TrainState, autocast, check_finite, load_checkpoint, restoring, save_checkpoint
from dse.types import Geometry


CURVE_POINTS = 100  # points of a training curve (about; one more where the last step is off the grid)


@dataclass
class TrainOutcome:
    ema: nn.Module
    final_loss: float
    steps: int
    seconds: float
    images_per_second: float
    resumed_from: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the point before)


class Curve:
    """The training curve being recorded: its points and the running sum of the losses since the last one."""

    def __init__(self, steps: int, points: int = CURVE_POINTS):
        self.every, self.last = max(1, steps // max(1, points)), steps
        self.points: list[tuple[int, float]] = []
        self.total, self.count = 0.0, 0

    def add(self, step: int, loss: float) -> None:
        self.total, self.count = self.total + loss, self.count + 1
        if step % self.every == 0 or step == self.last:
            self.points.append((step, self.total / self.count))
            self.total, self.count = 0.0, 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        points = torch.tensor(self.points, dtype=torch.float64).reshape(-1, 2)  # (N, 2): step, loss
        return {"curve": points, "curve_window": torch.tensor([self.total, self.count], dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a checkpoint written before curves were kept starts an empty one."""
        if "curve" in state:
            self.points = [(int(s), float(l)) for s, l in state["curve"].tolist()]
            total, count = state["curve_window"].tolist()
            self.total, self.count = float(total), int(count)


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


def setup_context(pairs: PairStore, device: torch.device, geometry: Geometry, student_width: int,
                  artifacts_dir: Path | None = None, seed: int = 0) -> SetupContext:
    """The context a setup is prepared with: the trial's pairs, device, geometry, student width,
    artifacts folder and seed, a TA trained by this loop with GET on the same pairs, and the teacher
    registry's `make_teacher`."""

    def pretrain(model: nn.Module, cfg: TrainConfig, checkpoint_dir: Path | None) -> nn.Module:
        return train_student(model, pairs, cfg, device, checkpoint_dir=checkpoint_dir).ema

    return SetupContext(pairs, device, geometry, student_width, artifacts_dir, seed,
                        pretrain=pretrain, load_teacher=make_teacher)


def _save(path: Path, step: int, trainer: TrainState, setup: Setup, loss: float, curve: Curve) -> None:
    save_checkpoint(path, {"step": step, **trainer.state_dict("student"), "setup": setup.state_dict(), "loss": loss,
                           **curve.state_dict()})


def _resume(path: Path, trainer: TrainState, setup: Setup, curve: Curve) -> tuple[int, float]:
    state = load_checkpoint(path, "trial checkpoint")
    with restoring(path, "trial checkpoint", "delete it to train from scratch"):
        trainer.load_state_dict(state, "student")
        setup.load_state_dict(state.get("setup", {}))
        curve.load_state_dict(state)
        return int(state["step"]), float(state["loss"])


def train_student(
    student: nn.Module, pairs: PairStore, cfg: TrainConfig, device: torch.device,
    progress: Callable[[int, float], None] | None = None, progress_every: int = 50,
    checkpoint_dir: str | Path | None = None, curve_points: int = CURVE_POINTS,
) -> TrainOutcome:
    """Distil the teacher pairs into `student` for `total_steps(cfg, len(pairs))` steps; returns the EMA model.

    With `checkpoint_dir`, the state is saved atomically to `checkpoint_dir/last.pt` every
    `cfg.checkpoint_every` steps (if > 0) and at the end, and a run that finds a checkpoint there
    resumes from it. `progress(step, loss)` is called every `progress_every` steps and at the last
    one. The outcome's `curve` has about `curve_points` points (module docstring). The setup is
    prepared once before the loop (a TA setup keeps its teaching assistant in `checkpoint_dir/ta`)
    and its own state travels in the checkpoint.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    student.to(device).train()
    loss_fn = make_loss(cfg.loss, device, lpips_net=cfg.lpips_net, lpips_size=cfg.lpips_size or None)
    setup = make_setup(cfg.setup, loss_fn, cfg)
    path = Path(checkpoint_dir) / LAST_CHECKPOINT if checkpoint_dir else None
    setup.prepare(setup_context(pairs, device, student.geometry, student.arch.width,
                                path.parent if path is not None else None, cfg.seed))
    trainer = TrainState(student, lr=cfg.lr, weight_decay=cfg.weight_decay, ema_decay=cfg.ema_decay,
                         extra=setup.extra_parameters())
    first, loss_value = 1, float("nan")
    steps = total_steps(cfg, len(pairs))
    curve = Curve(steps, curve_points)
    if path is not None and path.is_file():
        done, loss_value = _resume(path, trainer, setup, curve)
        first = done + 1
    seen, start = 0, time.perf_counter()
    for step in range(first, steps + 1):
        z, y, x = pairs.batch(batch_indices(len(pairs), cfg.batch_size, cfg.seed, step))
        batch = Batch(torch.from_numpy(z).to(device), torch.from_numpy(y).to(device), torch.from_numpy(x).to(device))
        dropout = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        with autocast(device):
            loss = setup(student, batch, generator=dropout)
        check_finite(loss, step)
        trainer.step(loss)
        setup.after_step(student, batch, generator=dropout)
        trainer.update_ema()
        loss_value, seen = loss.item(), seen + len(y)
        curve.add(step, loss_value)
        if path is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == steps):
            _save(path, step, trainer, setup, loss_value, curve)
        if progress and (step % progress_every == 0 or step == steps):
            progress(step, loss_value)
    seconds = time.perf_counter() - start
    return TrainOutcome(trainer.ema.model, loss_value, steps, seconds, seen / max(seconds, 1e-9), resumed_from=first - 1,
                        curve=list(curve.points))
