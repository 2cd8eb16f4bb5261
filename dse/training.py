"""Owns what the two training loops share (the student's in `dse.distill.train`, the EDM teacher's in
`dse.teacher.train`): AdamW with an EMA of the weights, one optimizer step, seeded initial weights,
the guard that stops a run whose loss is NaN or infinite, bf16 autocast on CUDA, and a run's
checkpoint file, saved atomically and resumed weights-only, each failure one line.

A checkpoint is a dict of tensors, numbers and strings. Both trainers keep their trained state in it
the same way (`TrainState.state_dict`: the model under the trainer's key, "ema", "ema_updates",
"optimizer") next to entries of their own: a trial's `last.pt` ("student") adds step, setup and loss,
a teacher's ("model") format, config, geometry, step and generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from dse.errors import DseError, one_line
from dse.fileio import atomic_writer, load_weights_only
from dse.layout import LAST_CHECKPOINT
from dse.models.ema import EMA

T = TypeVar("T")

# What restoring a checkpoint raises for a file of the wrong model, a missing key or a damaged tensor.
RESTORE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError, AssertionError)


class TrainingDiverged(DseError, RuntimeError):
    """The loss became NaN or infinite: a trial is stored as failed with this message, and
    `dse teacher train` prints it on one line."""


def check_finite(loss: torch.Tensor, step: int, what: str = "") -> None:
    """Stop the run with TrainingDiverged when the scalar `loss` of `step` is NaN or infinite;
    `what` prefixes the message (e.g. "teacher training diverged: ")."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{what}loss became {loss.item()} at step {step}; lower the learning rate")


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, fused: bool = False) -> torch.optim.AdamW:
    """The optimizer of every dse training loop (student, TA, EDM teacher, DMD's fake score); `fused`
    (on a GPU): one kernel for all parameters instead of a launch per parameter group of tensors."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of `opt` down the gradient of `loss`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def seeded_init(seed: int, build: Callable[[], T]) -> T:
    """`build()` with the global random state seeded by `seed`, leaving that state as it was: a
    network's initial weights as a function of `seed` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def autocast(device: torch.device):
    """The forward pass's autocast: bf16 on CUDA, none elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainState:
    """A model under training, the AdamW optimizer over its parameters (and `extra` ones trained with
    it; `fused` on a GPU), and the EMA of its weights."""

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float, ema_decay: float,
                 extra: Iterable[nn.Parameter] = (), fused: bool = False):
        self.model = model
        self.opt = adamw([*model.parameters(), *extra], lr, weight_decay, fused=fused)
        self.ema = EMA(model, ema_decay)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step down the gradient of `loss` (the EMA is updated by `update_ema`)."""
        optimizer_step(self.opt, loss)

    def update_ema(self) -> None:
        self.ema.update(self.model)

    def state_dict(self, model_key: str) -> dict[str, Any]:
        """The trained state, the model under `model_key` ("student" or "model")."""
        return {model_key: self.model.state_dict(), "ema": self.ema.model.state_dict(),
                "ema_updates": self.ema.updates, "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any], model_key: str) -> None:
        """Restore `state_dict(model_key)`."""
        self.model.load_state_dict(state[model_key])
        self.ema.model.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["optimizer"])


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint for `path`: the file itself, or `last.pt` inside a training folder."""
    path = Path(path)
    return path / LAST_CHECKPOINT if path.is_dir() else path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a reader sees the previous checkpoint or this one."""
    with atomic_writer(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """The checkpoint dict at `path`, read weights-only on CPU; an empty, damaged, unsafe or foreign
    file is a one-line DseError naming `what` it should be."""
    state = load_weights_only(path, what)
    if not isinstance(state, dict):
        raise DseError(f"{path} is not a {what}")
    return state


@contextlib.contextmanager
def restoring(path: Path, what: str, fix: str) -> Iterator[None]:
    """Turn a failure to restore the state read from `path` into one line: "`what` `path` is corrupt
    (reason); `fix`"."""
    try:
        yield
    except RESTORE_ERRORS as e:
        raise DseError(f"{what} {path} is corrupt ({one_line(e)}); {fix}") from None
