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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

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


def _epoch_order(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of epoch `epoch` (from 0): a permutation of the pairs seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def batch_indices(num_pairs: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The pair indices of training step `step` (from 1): epochs of shuffles seeded by (seed, epoch),
    the last short batch of an epoch dropped unless the store is smaller than one batch."""
    return BatchOrder(num_pairs, batch_size, seed)(step)


class BatchOrder:
    """`batch_indices` of one run, step after step, each epoch's shuffle computed once (a permutation
    of 1M pairs costs about 10 ms, more than a tiny student's step on a GPU)."""

    def __init__(self, num_pairs: int, batch_size: int, seed: int):
        self.num_pairs, self.seed = num_pairs, seed
        self.size = min(batch_size, num_pairs)
        self.per_epoch = num_pairs // self.size
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def __call__(self, step: int) -> np.ndarray:
        epoch, slot = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, _epoch_order(self.num_pairs, self.seed, epoch)
        return self._order[slot * self.size : (slot + 1) * self.size]


# A store goes whole onto a GPU when it takes at most this share of the GPU's free memory (the rest is
# for the students, their optimizer and activations); otherwise each batch is gathered on the host into
# pinned memory, PREFETCH batches ahead, and copied without blocking.
RESIDENT_FRACTION = 0.5
PREFETCH = 2


def store_bytes(pairs: PairStore) -> int:
    """Bytes of the store's arrays as they are kept (z float32, y int64, x in the store's image dtype)."""
    per_pair = sum(int(np.prod(pairs.manifest["shapes"][k])) * np.dtype(d).itemsize
                   for k, d in (("z", "float32"), ("x", pairs.manifest["image_dtype"])))
    return len(pairs) * (per_pair + 8)


class PairFeed:
    """The batches of a pair store on the training device, by pair indices.

    Resident (the default on a GPU when the store takes at most `RESIDENT_FRACTION` of the free memory of
    this process's share of it, `memory_share`: the GPU fraction Ray gave the trial, so packed trials do
    not crowd each other out): the whole store is copied to the device once, in its own dtypes, and a
    batch is an index on the device.
    Streamed (the CPU, or a store too big): the batch is gathered from the memory-mapped shards; on a GPU
    into pinned memory by a thread `PREFETCH` batches ahead, copied without blocking. Both give the same
    values (images become float32 after the gather, exactly), so the mode never changes a result.
    """

    def __init__(self, pairs: PairStore, device: torch.device, resident: bool | None = None, chunk: int = 65536,
                 memory_share: float = 1.0):
        self.pairs, self.device = pairs, device
        if resident is None:
            room = RESIDENT_FRACTION * memory_share * _free_bytes(device) if device.type == "cuda" else 0
            resident = store_bytes(pairs) <= room
        self.resident = resident
        if resident:
            arrays = {"z": [], "y": [], "x": []}
            for shard in pairs.shards:
                for key in arrays:
                    for lo in range(0, len(shard[key]), chunk):
                        part = np.array(shard[key][lo : lo + chunk])  # a writable copy of the memory map
                        arrays[key].append(torch.from_numpy(part).to(device))
            self.z, self.y, self.x = (torch.cat(arrays[k]) for k in ("z", "y", "x"))

    def batch(self, indices: np.ndarray) -> Batch:
        """The pairs at `indices` (global, as `PairStore.batch`) on the device: z, x float32, y int64."""
        if self.resident:
            idx = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device, non_blocking=True)
            return Batch(self.z.index_select(0, idx), self.y.index_select(0, idx), self.x.index_select(0, idx).float())
        return self._copy(self._gather(indices))

    def batches(self, order: Callable[[int], np.ndarray], first: int, last: int) -> Iterator[tuple[int, Batch]]:
        """(step, batch) for steps `first`..`last` of `order` (step -> indices); streamed to a GPU, the
        next batches are gathered by a thread while the device works."""
        if self.resident or self.device.type != "cuda":
            for step in range(first, last + 1):
                yield step, self.batch(order(step))
            return
        with ThreadPoolExecutor(1, thread_name_prefix="dse-pairs") as pool:
            ahead: dict[int, Future] = {}
            for step in range(first, last + 1):
                for s in range(step, min(last, step + PREFETCH) + 1):
                    if s not in ahead:
                        ahead[s] = pool.submit(self._gather, order(s))
                yield step, self._copy(ahead.pop(step).result())

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        arrays = [torch.from_numpy(a) for a in self.pairs.batch(indices)]
        return tuple(a.pin_memory() for a in arrays) if self.device.type == "cuda" else tuple(arrays)

    def _copy(self, arrays: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Batch:
        z, y, x = (a.to(self.device, non_blocking=True) for a in arrays)
        return Batch(z, y, x)


def _free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


class LossLog:
    """The losses of the steps since the host last looked, kept on the device so that a step never
    waits for the GPU: `add` records a step's loss (and the first step whose loss was NaN or infinite),
    `flush` reads them all at once (one synchronisation) into the curve and raises TrainingDiverged
    naming that step. The trainer flushes every `progress_every` steps, before every checkpoint and at
    the end, so a run never saves a diverged state and still reports the exact step."""

    def __init__(self, curve: Curve):
        self.curve = curve
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.last = float("nan")

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss.detach())

    def flush(self) -> float:
        """Read the pending losses; the last one read (NaN when none has been)."""
        if not self.losses:
            return self.last
        values = torch.stack(self.losses).float().tolist()
        steps, self.steps, self.losses = self.steps, [], []
        self.last = read_losses(self.curve, steps, values)
        return self.last


def read_losses(curve: Curve, steps: list[int], values: list[float]) -> float:
    """Add the losses read for `steps` to `curve` in order and return the last; TrainingDiverged at the
    first NaN or infinite one, naming its step (what `LossLog` and a cohort's log do with a flush)."""
    for step, value in zip(steps, values):
        check_finite(torch.tensor(value), step)
        curve.add(step, value)
    return values[-1]


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


def _resume(path: Path, trainer: TrainState, setup: Setup, curve: Curve,
            state: dict | None = None) -> tuple[int, float]:
    """Restore the checkpoint at `path` (`state`: its contents, if already read); (step, loss) it holds."""
    state = load_checkpoint(path, "trial checkpoint") if state is None else state
    with restoring(path, "trial checkpoint", "delete it to train from scratch"):
        trainer.load_state_dict(state, "student")
        setup.load_state_dict(state.get("setup", {}))
        curve.load_state_dict(state)
        return int(state["step"]), float(state["loss"])


def dropout_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator label dropout draws from at step `step` of a run seeded `seed` (module docstring)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def compiled(model: nn.Module | Callable, device: torch.device) -> nn.Module | Callable:
    """`model` under torch.compile (train.compile): with CUDA graphs on a GPU ("reduce-overhead"; a
    trial's shapes are static, the last short batch of an epoch being dropped), inductor's default on
    the CPU. The module returned shares the weights of `model`, which stays the one saved (a cohort
    compiles its batched forward function the same way)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def prepare_device(device: torch.device) -> None:
    """TF32 matmuls on a GPU (the forward pass also runs under bf16 autocast: `dse.training.autocast`)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train_student(
    student: nn.Module, pairs: PairStore, cfg: TrainConfig, device: torch.device,
    progress: Callable[[int, float], None] | None = None, progress_every: int = 50,
    checkpoint_dir: str | Path | None = None, curve_points: int = CURVE_POINTS, resident: bool | None = None,
    memory_share: float = 1.0,
) -> TrainOutcome:
    """Distil the teacher pairs into `student` for `total_steps(cfg, len(pairs))` steps; returns the EMA model.

    With `checkpoint_dir`, the state is saved atomically to `checkpoint_dir/last.pt` every
    `cfg.checkpoint_every` steps (if > 0) and at the end, and a run that finds a checkpoint there
    resumes from it. `progress(step, loss)` is called every `progress_every` steps and at the last
    one: the host reads the losses only then (`LossLog`), so steps in between never wait for the device;
    a NaN or infinite loss is still reported with its step. The outcome's `curve` has about
    `curve_points` points (module docstring). The setup is prepared once before the loop (a TA setup
    keeps its teaching assistant in `checkpoint_dir/ta`) and its own state travels in the checkpoint.
    `resident`: keep the pairs on the device (`PairFeed`; None chooses, within `memory_share` of the GPU).
    """
    prepare_device(device)
    student.to(device).train()
    loss_fn = make_loss(cfg.loss, device, lpips_net=cfg.lpips_net, lpips_size=cfg.lpips_size or None)
    setup = make_setup(cfg.setup, loss_fn, cfg)
    path = Path(checkpoint_dir) / LAST_CHECKPOINT if checkpoint_dir else None
    setup.prepare(setup_context(pairs, device, student.geometry, student.arch.width,
                                path.parent if path is not None else None, cfg.seed))
    trainer = TrainState(student, lr=cfg.lr, weight_decay=cfg.weight_decay, ema_decay=cfg.ema_decay,
                         extra=setup.extra_parameters(), fused=device.type == "cuda")
    first, loss_value = 1, float("nan")
    steps = total_steps(cfg, len(pairs))
    curve = Curve(steps, curve_points)
    if path is not None and path.is_file():
        done, loss_value = _resume(path, trainer, setup, curve)
        first = done + 1
    log = LossLog(curve)
    log.last = loss_value
    forward = compiled(student, device) if cfg.compile else student
    feed = PairFeed(pairs, device, resident, memory_share=memory_share)
    seen, start = 0, time.perf_counter()
    for step, batch in feed.batches(BatchOrder(len(pairs), cfg.batch_size, cfg.seed), first, steps):
        dropout = dropout_generator(cfg.seed, step, device)
        with autocast(device):
            loss = setup(forward, batch, generator=dropout)
        trainer.step(loss)
        setup.after_step(student, batch, generator=dropout)
        trainer.update_ema()
        log.add(step, loss)
        seen += len(batch.y)
        checkpoint = path is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == steps)
        report = step % max(1, progress_every) == 0 or step == steps
        if checkpoint or report:
            loss_value = log.flush()
        if checkpoint:
            _save(path, step, trainer, setup, loss_value, curve)
        if report and progress is not None:
            progress(step, loss_value)
    loss_value = log.flush()
    seconds = time.perf_counter() - start
    return TrainOutcome(trainer.ema.model, loss_value, steps, seconds, seen / max(seconds, 1e-9),
                        resumed_from=first - 1, curve=list(curve.points))
