"""Owns cohort training (issue 14): several students of one architecture, on the same pairs under the
same schedule, trained in one process as one batched model, each member exactly the student that
`dse.distill.train.train_student` would have trained alone (to float tolerance; bitwise equality is
lost only to the batched kernels' rounding).

The members' parameters are stacked along a leading member dimension (`torch.func.stack_module_state`)
and one forward pass of the student, `vmap`ped over the members (`functional_call`), maps z (K, B, C,
H, W) and y (K, B) to K batches of images. Each member keeps what makes its run its own: its batches
(`BatchOrder` of its seed; the K batches are gathered in one read), its label dropout (its generator
at each step, applied before the forward pass, which runs with dropout off), its loss (members with
the same loss are scored in one call: l1 / l2 vmapped, LPIPS of one (net, size) over all their images),
its curve and its NaN guard. The member losses are summed and differentiated once: a member's
gradient depends on its own loss alone. One AdamW steps all the stacked leaves (AdamW is elementwise:
stacked equals separate; fused on a GPU) and one foreach EMA follows them. `pos_embed` is stacked
with requires_grad off, so it gets no gradient and AdamW (weight decay included) leaves it alone.

Which trials may form a cohort is `dse.cohorts`' decision (`train_key`): setup GET, every [train] key
equal but the seed and the loss (`MEMBER_KEYS`). Each member has its own `last.pt` in
`train_student`'s format, so either trainer resumes the other's checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from dse.cohorts import COHORT_SETUPS, MEMBER_KEYS, train_key
from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import Loss, LPIPSLoss, make_loss
from dse.distill.setups import make_setup
from dse.distill.train import (
    CURVE_POINTS, BatchOrder, Curve, PairFeed, TrainOutcome, _resume, _save, compiled, dropout_generator,
    prepare_device, read_losses, total_steps, train_student,
)
from dse.layout import LAST_CHECKPOINT
from dse.training import TrainingDiverged, TrainState, autocast, load_checkpoint, restoring

Progress = Callable[[int, list[float]], None]  # (step, each member's last loss read)


def check_cohort(students: Sequence[nn.Module], cfgs: Sequence[TrainConfig]) -> None:
    """ValueError unless `students` (DiTs of one architecture and geometry) and their `cfgs` may train as
    one cohort: every config's `train_key` equal and not None; the message names what differs."""
    if len(students) != len(cfgs):
        raise ValueError(f"a cohort needs one config per student ({len(students)} students, {len(cfgs)} configs)")
    for cfg in cfgs:
        if train_key(cfg) is None:
            raise ValueError(f"train.setup {cfg.setup!r} trains alone; cohorts train {', '.join(COHORT_SETUPS)}")
    if len({train_key(c) for c in cfgs}) > 1:
        differ = [f.name for f in dataclasses.fields(TrainConfig)
                  if f.name not in MEMBER_KEYS and len({repr(getattr(c, f.name)) for c in cfgs}) > 1]
        values = ", ".join(sorted({repr(getattr(c, differ[0])) for c in cfgs}))
        raise ValueError(f"cohort members differ in train.{differ[0]} ({values}); "
                         f"only {', '.join(MEMBER_KEYS)} may differ")
    first = _shape(students[0])
    for k, student in enumerate(students[1:], start=1):
        if _shape(student) != first:
            raise ValueError(f"cohort member {k} differs from member 0 in architecture, geometry or label dropout")


def _shape(student: nn.Module) -> Hashable:
    return (type(student), getattr(student, "arch", None), getattr(student, "geometry", None),
            student.y_embedder.dropout_prob, tuple((n, tuple(p.shape)) for n, p in student.named_parameters()))


class _Stack(nn.Module):
    """The members' parameters, each stacked along a leading member dimension (K, ...), in the order
    of a member's `named_parameters`: a stacked AdamW's state lines up index for index with a member's."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        params, self.frozen = stack_module_state(list(models))  # frozen: the buffers (a DiT has none)
        self.stacked = nn.ParameterList([nn.Parameter(t, requires_grad=t.requires_grad) for t in params.values()])
        self.weights = dict(zip(params, self.stacked))  # name -> (K, ...) leaf, as functional_call takes them


def _batched_forward(student: nn.Module) -> Callable:
    """(weights, buffers, z (K, B, C, H, W), y (K, B)) -> images (K, B, C, H, W): `student`'s forward pass
    with each member's weights, labels left as given (the module runs in eval mode: no dropout)."""
    base = copy.deepcopy(student).to("meta").eval()

    def one(weights, buffers, z, y):
        return functional_call(base, (weights, buffers), (z, y))

    return vmap(one)


@contextlib.contextmanager
def _quiet(device: torch.device) -> Iterator[None]:
    """On the CPU, silence torch's note that its flash attention has no vmap rule (it loops over the
    members instead, which measured faster there than the math kernel, which has one)."""
    if device.type != "cpu":
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        yield


class _MemberLosses:
    """Each member's loss on its own images, (K, B, C, H, W) twice -> (K,): members with the same loss in
    one call, l1 / l2 vmapped over them, LPIPS of one (net, size) over all their images at once
    (`LPIPSLoss.per_image`, its mean per member); one network per (net, size)."""

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device):
        groups: dict[tuple, list[int]] = {}
        for k, cfg in enumerate(cfgs):
            key = (cfg.loss, cfg.lpips_net, cfg.lpips_size) if cfg.loss == "lpips" else (cfg.loss,)
            groups.setdefault(key, []).append(k)
        self.size = len(cfgs)
        self.groups: list[tuple[list[int], torch.Tensor, Loss]] = []
        for members in groups.values():
            cfg = cfgs[members[0]]
            fn = make_loss(cfg.loss, device, lpips_net=cfg.lpips_net, lpips_size=cfg.lpips_size or None)
            self.groups.append((members, torch.tensor(members, device=device), fn))
        order = [k for members, _, _ in self.groups for k in members]
        self.inverse = torch.from_numpy(np.argsort(order)).to(device)  # group order -> member order

    def loss_of(self, k: int) -> Loss:
        return next(fn for members, _, fn in self.groups if k in members)

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        out = []
        for members, idx, fn in self.groups:
            target, pred = x, x_hat
            if len(members) < self.size:
                target, pred = x.index_select(0, idx), x_hat.index_select(0, idx)
            if isinstance(fn, LPIPSLoss):
                out.append(fn.per_image(target.flatten(0, 1), pred.flatten(0, 1)).view(len(members), -1).mean(1))
            else:
                out.append(vmap(fn)(target, pred))  # (K_g,)
        losses = torch.cat(out)
        return losses if len(self.groups) == 1 else losses.index_select(0, self.inverse)  # (K,)


class _CohortLog:
    """`LossLog` for a cohort: each step's (K,) losses stay on the device until `flush` reads them all at
    once into each member's curve. A member whose loss was NaN or infinite is marked diverged (the
    TrainingDiverged naming its first such step) and read no more; the others go on."""

    def __init__(self, curves: list[Curve], last: list[float]):
        self.curves, self.last = curves, list(last)
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []
        self.diverged: dict[int, TrainingDiverged] = {}

    def add(self, step: int, losses: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(losses.detach())

    def flush(self) -> list[float]:
        """Read the pending losses; each member's last one read (its non-finite one once diverged)."""
        if not self.losses:
            return self.last
        rows = torch.stack(self.losses).float().tolist()  # (S, K)
        steps, self.steps, self.losses = self.steps, [], []
        for k, curve in enumerate(self.curves):
            if k in self.diverged:
                continue
            values = [row[k] for row in rows]
            try:
                self.last[k] = read_losses(curve, steps, values)
            except TrainingDiverged as exc:
                self.diverged[k] = exc
                self.last[k] = next(v for v in values if not math.isfinite(v))
        return self.last


class _Cohort:
    """The cohort's trained state: the stacked weights under one `TrainState` (AdamW over the stacked
    leaves, EMA of them), and each member's own `TrainState` (its student, a solo AdamW, its EMA), into
    which its slice is copied for a checkpoint or the outcome (`scatter`) and from which a resumed
    cohort is stacked (`gather`). A member's solo AdamW holds state only while its checkpoint is written."""

    def __init__(self, members: list[TrainState], cfg: TrainConfig, fused: bool):
        self.members = members
        self.stack = _Stack([m.model for m in members])
        self.trainer = TrainState(self.stack, lr=cfg.lr, weight_decay=cfg.weight_decay, ema_decay=cfg.ema_decay,
                                  fused=fused)

    @torch.no_grad()
    def gather(self) -> None:
        """Take the members' EMA and AdamW state (their weights are stacked at construction)."""
        params = [list(m.model.parameters()) for m in self.members]
        emas = [list(m.ema.model.parameters()) for m in self.members]
        for i, ema in enumerate(self.trainer.ema.model.parameters()):
            ema.copy_(torch.stack([e[i] for e in emas]))
        self.trainer.ema.updates = self.members[0].ema.updates
        for i, leaf in enumerate(self.stack.stacked):
            states = [m.opt.state.get(ps[i]) for m, ps in zip(self.members, params)]
            if states[0]:
                self.trainer.opt.state[leaf] = {
                    key: value.clone() if value.dim() == 0 else torch.stack([s[key] for s in states])
                    for key, value in states[0].items()}
        for m in self.members:
            m.opt.state.clear()

    @torch.no_grad()
    def scatter(self, k: int, optimizer: bool) -> TrainState:
        """Member k's TrainState holding its slice: weights, EMA and (with `optimizer`) AdamW state."""
        member = self.members[k]
        for p, leaf in zip(member.model.parameters(), self.stack.stacked):
            p.copy_(leaf[k])
        for p, ema in zip(member.ema.model.parameters(), self.trainer.ema.model.parameters()):
            p.copy_(ema[k])
        member.ema.updates = self.trainer.ema.updates
        member.opt.state.clear()
        if optimizer:
            for p, leaf in zip(member.model.parameters(), self.stack.stacked):
                if leaf in self.trainer.opt.state:
                    member.opt.state[p] = {key: value.clone() if value.dim() == 0 else value[k].clone()
                                           for key, value in self.trainer.opt.state[leaf].items()}
        return member


def _checkpoint_steps(paths: list[Path | None]) -> tuple[list[dict | None], list[int | None]]:
    """Each member's checkpoint (None: none) and the step it holds."""
    states, steps = [], []
    for path in paths:
        state = load_checkpoint(path, "trial checkpoint") if path is not None and path.is_file() else None
        if state is not None:
            with restoring(path, "trial checkpoint", "delete it to train from scratch"):
                steps.append(int(state["step"]))
        else:
            steps.append(None)
        states.append(state)
    return states, steps


def train_cohort(
    students: Sequence[nn.Module], pairs: PairStore, cfgs: Sequence[TrainConfig], device: torch.device, *,
    progress: Progress | None = None, progress_every: int = 50,
    checkpoint_dirs: Sequence[str | Path | None] | None = None,
    curve_points: int = CURVE_POINTS, resident: bool | None = None, memory_share: float = 1.0,
) -> list[TrainOutcome | TrainingDiverged]:
    """Train `students` (DiTs of one architecture and geometry) on `pairs` as one cohort, member k under
    `cfgs[k]`: outcome k is what `train_student(students[k], pairs, cfgs[k], device,
    checkpoint_dir=checkpoint_dirs[k])` returns (its EMA on `device`, final loss, curve, `resumed_from`;
    `seconds` the cohort's wall time, `images_per_second` the member's own images over it), or the
    TrainingDiverged it raises, at index k, the other members trained on unaffected. The students end
    holding their trained weights, as `train_student` leaves its student. ValueError if the configs may
    not share a cohort (`check_cohort`: all `dse.cohorts.train_key` equal; the message names the key).

    Checkpoints: member k's `checkpoint_dirs[k]/last.pt` (None: none), in `train_student`'s format, every
    `cfg.checkpoint_every` steps and at the end (a diverged member's never again). Resume: all members'
    checkpoints at the same step resume the cohort; none starts it fresh; a mix (some missing, or at
    different steps) trains each member alone with `train_student`, each resuming its own exactly.
    `progress(step, losses)` is called every `progress_every` steps and at the last one with each
    member's last loss read (losses are read from the device only then, as `train_student` does; alone,
    with the other members' last known ones, NaN before they ran). `resident`: as `train_student`.
    `cfg.compile` compiles the batched forward pass (`compiled`: CUDA graphs on a GPU; on the CPU too, as
    `train_student`, where inductor's compile, about 30 s cold, outlasts any tiny run: the test is 3 steps).
    """
    size = len(students)
    if size == 0:
        return []
    check_cohort(students, cfgs)
    dirs = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * size
    if len(dirs) != size:
        raise ValueError(f"a cohort needs one checkpoint folder per student ({size} students, {len(dirs)} folders)")
    paths = [Path(d) / LAST_CHECKPOINT if d else None for d in dirs]
    states, done = _checkpoint_steps(paths)
    if len(set(done)) > 1:
        return _alone(students, pairs, cfgs, device, dirs, progress, progress_every, curve_points, resident,
                      memory_share)

    prepare_device(device)
    cfg = cfgs[0]  # every key but the members' own is the same in all
    fused = device.type == "cuda"
    losses = _MemberLosses(cfgs, device)
    members, setups, curves, last = [], [], [], []
    steps = total_steps(cfg, len(pairs))
    for k, student in enumerate(students):
        student.to(device).train()
        members.append(TrainState(student, lr=cfg.lr, weight_decay=cfg.weight_decay, ema_decay=cfg.ema_decay,
                                  fused=fused))
        setups.append(make_setup(cfgs[k].setup, losses.loss_of(k), cfgs[k]))  # GET: nothing to prepare or keep
        curves.append(Curve(steps, curve_points))
        last.append(float("nan"))
        if states[k] is not None:
            _, last[k] = _resume(paths[k], members[k], setups[k], curves[k], state=states[k])
            states[k] = None
    first = (done[0] or 0) + 1
    cohort = _Cohort(members, cfg, fused)
    if first > 1:
        cohort.gather()
    log = _CohortLog(curves, last)
    forward = _batched_forward(students[0])
    if cfg.compile:
        forward = compiled(forward, device)
    orders = [BatchOrder(len(pairs), cfg.batch_size, c.seed) for c in cfgs]
    feed = PairFeed(pairs, device, resident, memory_share=memory_share)
    drop = students[0].y_embedder.dropout_prob > 0  # the same in all (check_cohort)
    saving = any(p is not None for p in paths)
    stack, seen, start = cohort.stack, 0, time.perf_counter()
    for step, batch in feed.batches(lambda s: np.concatenate([o(s) for o in orders]), first, steps):
        z = batch.z.view(size, -1, *batch.z.shape[1:])  # (K, B, C, H, W)
        x = batch.x.view(size, -1, *batch.x.shape[1:])  # (K, B, C, H, W)
        y = batch.y.view(size, -1)  # (K, B)
        if drop:  # each member's labels dropped as its own run drops them
            y = torch.stack([s.y_embedder.token_drop(y[k], dropout_generator(c.seed, step, device))
                             for k, (s, c) in enumerate(zip(students, cfgs))])
        with autocast(device), _quiet(device):
            member_losses = losses(x, forward(stack.weights, stack.frozen, z, y))  # (K,)
        cohort.trainer.step(member_losses.sum())
        cohort.trainer.update_ema()
        log.add(step, member_losses)
        seen += y.shape[1]
        checkpoint = saving and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == steps)
        report = step % max(1, progress_every) == 0 or step == steps
        if checkpoint or report:
            log.flush()
        if checkpoint:
            for k, path in enumerate(paths):
                if path is not None and k not in log.diverged:
                    _save(path, step, cohort.scatter(k, optimizer=True), setups[k], log.last[k], curves[k])
                    members[k].opt.state.clear()
        if report and progress is not None:
            progress(step, list(log.last))
        if len(log.diverged) == size:
            break
    log.flush()
    seconds = time.perf_counter() - start
    outcomes: list[TrainOutcome | TrainingDiverged] = []
    for k in range(size):
        if k in log.diverged:
            outcomes.append(log.diverged[k])
            continue
        member = cohort.scatter(k, optimizer=False)
        outcomes.append(TrainOutcome(member.ema.model, log.last[k], steps, seconds, seen / max(seconds, 1e-9),
                                     resumed_from=first - 1, curve=list(curves[k].points)))
    return outcomes


def _alone(students: Sequence[nn.Module], pairs: PairStore, cfgs: Sequence[TrainConfig], device: torch.device,
           dirs: list, progress: Progress | None, progress_every: int, curve_points: int,
           resident: bool | None, memory_share: float = 1.0) -> list[TrainOutcome | TrainingDiverged]:
    """Each member trained alone by `train_student`, resuming its own checkpoint (members at different steps)."""
    last = [float("nan")] * len(students)
    outcomes: list[TrainOutcome | TrainingDiverged] = []
    for k, (student, cfg, folder) in enumerate(zip(students, cfgs, dirs)):
        def report(step: int, loss: float, k: int = k) -> None:
            last[k] = loss
            progress(step, list(last))

        try:
            outcome = train_student(student, pairs, cfg, device, progress=report if progress is not None else None,
                                    progress_every=progress_every, checkpoint_dir=folder, curve_points=curve_points,
                                    resident=resident, memory_share=memory_share)
            last[k] = outcome.final_loss
        except TrainingDiverged as exc:
            outcome = exc
        outcomes.append(outcome)
    return outcomes
