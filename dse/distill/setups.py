"""Owns the distillation setups: each turns a batch of teacher pairs into the student's loss.

A setup is a small class registered in `SETUPS` under the name a search space uses
(`setup = "get" | "mi1" | "ta" | "dmd"`). Setups with parts of their own build them in `prepare`
(TA: the teaching assistant and the expansion E; DMD: the real and fake scores), train them with
the student through `extra_parameters` (E) or by themselves in `after_step` (DMD's fake score), and
keep them in the trial checkpoint through `state_dict`; GET and MI1 have none. What a setup needs
from above it (a way to train its TA, a way to load the pairs' teacher) comes in its `SetupContext`,
which the trainer (`dse.distill.train.setup_context`) fills.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dse.config import TrainConfig
from dse.data.pairs import PairStore
from dse.distill.losses import Loss, make_loss
from dse.errors import DseError, one_line
from dse.fileio import load_weights_only
from dse.layout import LAST_CHECKPOINT, TA_DIR
from dse.models.dit import DiT
from dse.teacher.edm import (
    P_MEAN, P_STD, RHO, SIGMA_DATA, SIGMA_MAX, Denoiser, EDMDenoiser, edm_loss, sample_training_sigma, sigma_schedule,
)
from dse.training import adamw, checkpoint_file, optimizer_step, seeded_init
from dse.types import Geometry, StudentArch

# Trains `model` (a DiT) with GET under a TrainConfig on the context's pairs and device, keeping its
# checkpoint in a folder (None: none); returns its EMA.
Pretrain = Callable[[nn.Module, TrainConfig, Path | None], nn.Module]
# Builds the teacher `kind` for (dataset, device, source, data_root), as dse.teacher.registry.make_teacher.
LoadTeacher = Callable[[str, str, str, str, str | None], Denoiser]


@dataclass
class Batch:
    """Teacher pairs on the training device: noise z (B, C, H, W), labels y (B,), images x (B, C, H, W)."""

    z: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


@dataclass
class SetupContext:
    """What `Setup.prepare` may use: the trial's pairs and device, the student's geometry and width,
    the trial's artifacts folder (None: keep nothing on disk), its seed, and the trainer's ways to
    train a TA (`pretrain`) and to load the pairs' teacher (`load_teacher`)."""

    pairs: PairStore
    device: torch.device
    geometry: Geometry
    student_width: int
    artifacts_dir: Path | None = None
    seed: int = 0
    pretrain: Pretrain | None = None
    load_teacher: LoadTeacher | None = None


class Setup:
    """The interface every setup follows; the defaults suit a setup with nothing of its own to train.

    The trainer calls `prepare` once before the loop, then per step `__call__` (the loss),
    backward and the optimizer step over the student and `extra_parameters()`, then `after_step`.
    `state_dict()` is saved in the trial checkpoint and given back to `load_state_dict` on resume.
    """

    def __init__(self, loss: Loss, cfg: TrainConfig | None = None):
        self.loss, self.cfg = loss, cfg or TrainConfig()

    def prepare(self, ctx: SetupContext) -> None:
        """Build (or load) what the setup needs besides the student."""

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> None:
        """Called after the student's optimizer step (DMD trains its fake score here)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the student by the same optimizer."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The setup's own trained state (tensors, numbers), saved with the trial for exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


class GET(Setup):
    """GET (Geng et al. 2024; paper App. B.1): L(x, x_hat(z, c)) over offline teacher pairs."""

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x_hat = student(batch.z, batch.y, generator=generator)  # (B, C, H, W)
        return self.loss(batch.x, x_hat)  # L_GET, paper App. B.1


def mi1_sigma(tau: float, sigma_min: float = 0.02, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> float:
    """Noise level of MI1 time `tau`, written as in the paper's Table 4: the fraction of noise left.

    tau = 1 is the noise end (sigma_max) and tau = 0 the clean image (sigma = 0); in between, EDM's
    schedule sigma(t) at t = 1 - tau (paper App. B.3, whose t runs from noise, 0, to image, 1).
    """
    if tau == 0:
        return 0.0
    return float(sigma_schedule(torch.tensor(1.0 - tau, dtype=torch.float64), sigma_min, sigma_max, rho))


def mi1_target(x0: torch.Tensor, z: torch.Tensor, sigma: float, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
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


def penultimate(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The penultimate block's output (B, T, w) (the only block's of a depth-1 DiT), as TA matches it."""
    return blocks[-2] if len(blocks) >= 2 else blocks[-1]


class TA(Setup):
    """Teaching assistant (paper App. B.2; Mirzadeh et al. 2020): a bigger DiT, trained first with
    GET on the same pairs (or loaded), teaches the student next to the teacher's images:
    L_TA = lambda0 L(x, x_hat) + lambda1 L(x_TA, x_hat) + lambda2 L_feat(h_TA, E(h_s)).

    Choices where the paper is vague:
    - only the penultimate blocks are matched (Muralidharan et al. 2024, as the paper says), so the
      sum over l has one term; E is a learned nn.Linear(w_student, w_TA) per token;
    - `ta_feature_loss = "lpips"` (the paper's LPIPS on features): both feature maps are decoded into
      images by the TA's frozen final layer, conditioned on the TA's c, and compared with LPIPS
      (gradients flow through that layer into E and the student; the TA never changes); "mse" is
      the plain mean square error between E(h_s) and h_TA;
    - the TA sees the true labels in eval mode (no label dropout), the student its usual dropout;
    - the TA is the EMA of its GET run, kept in `artifacts_dir/ta` so a resumed trial reuses it;
    - a term whose lambda is 0 is not computed at all.
    """

    def __init__(self, loss: Loss, cfg: TrainConfig | None = None):
        super().__init__(loss, cfg)
        self.ta: DiT | None = None
        self.expansion: nn.Linear | None = None
        self.feature_loss: Loss | None = None

    def prepare(self, ctx: SetupContext) -> None:
        cfg = self.cfg
        arch = StudentArch(cfg.ta_depth, cfg.ta_width, cfg.ta_heads)
        ta = seeded_init(ctx.seed, lambda: DiT(arch, ctx.geometry, label_dropout=cfg.label_dropout))
        if cfg.ta_checkpoint:
            _load_ta(ta, Path(cfg.ta_checkpoint))
        else:
            if ctx.pretrain is None:
                raise RuntimeError("TA.prepare needs ctx.pretrain to train its TA (dse.distill.train.setup_context)")
            ta_cfg = dataclasses.replace(cfg, setup="get", steps=cfg.ta_steps)
            ta_dir = ctx.artifacts_dir / TA_DIR if ctx.artifacts_dir is not None else None
            ta = ctx.pretrain(ta, ta_cfg, ta_dir)
        self.ta = ta.to(ctx.device).eval().requires_grad_(False)
        self.expansion = seeded_init(ctx.seed + 1, lambda: nn.Linear(ctx.student_width, cfg.ta_width)).to(ctx.device)
        if cfg.ta_lambda2 > 0 and cfg.ta_feature_loss == "lpips":
            self.feature_loss = self.loss if cfg.loss == "lpips" else make_loss(
                "lpips", ctx.device, lpips_net=cfg.lpips_net, lpips_size=cfg.lpips_size or None)

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        if self.ta is None or self.expansion is None:
            raise RuntimeError("TA.prepare must run before the TA loss")
        x_hat, trace_s = student(batch.z, batch.y, return_features=True, generator=generator)  # (B, C, H, W)
        total = batch.x.new_zeros(())
        if cfg.ta_lambda0 > 0:
            total = total + cfg.ta_lambda0 * self.loss(batch.x, x_hat)
        if cfg.ta_lambda1 > 0 or cfg.ta_lambda2 > 0:
            with torch.no_grad():
                x_ta, trace_ta = self.ta(batch.z, batch.y, return_features=True)  # (B, C, H, W)
            if cfg.ta_lambda1 > 0:
                total = total + cfg.ta_lambda1 * self.loss(x_ta, x_hat)
            if cfg.ta_lambda2 > 0:
                h_ta = penultimate(trace_ta.blocks)  # (B, T, w_TA)
                h_s = self.expansion(penultimate(trace_s.blocks))  # (B, T, w_s) -> (B, T, w_TA)
                total = total + cfg.ta_lambda2 * self.feature_term(h_ta, h_s, trace_ta.c)
        return total  # TA loss, paper App. B.2: lambda0 L(x, x_hat) + lambda1 L(x_TA, x_hat) + lambda2 L_feat

    def feature_term(self, h_ta: torch.Tensor, h_s: torch.Tensor, c_ta: torch.Tensor) -> torch.Tensor:
        """L_feat(h_TA, E(h_s)) on (B, T, w_TA) features: LPIPS on both decoded by the TA's final
        layer with its conditioning c_TA (B, w_TA), or MSE on the features themselves."""
        if self.feature_loss is None:
            return (h_s - h_ta).square().mean()
        return self.feature_loss(self.ta.decode(h_ta, c_ta), self.ta.decode(h_s, c_ta))  # (B, C, H, W) each

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.expansion.parameters()) if self.expansion is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {"expansion": self.expansion.state_dict()} if self.expansion is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.expansion.load_state_dict(state["expansion"])


def _load_ta(ta: DiT, path: Path) -> None:
    """Load a TA's weights from a trial checkpoint (`last.pt`, or its folder) of `train_student`:
    its EMA, read with weights_only."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise DseError(f"ta_checkpoint {file} not found; give a trial checkpoint ({LAST_CHECKPOINT}) or leave it "
                       "empty to train a TA")
    state = load_weights_only(file, f"trainer checkpoint ({LAST_CHECKPOINT})")  # one line for an empty, damaged or unsafe file
    try:
        ta.load_state_dict(state["ema"])
    except (KeyError, TypeError, RuntimeError) as e:  # not a trainer checkpoint, or another architecture
        raise DseError(f"ta_checkpoint {file} is not a TA of depth/width/heads {ta.arch.depth}/{ta.arch.width}/"
                       f"{ta.arch.heads} written by dse ({one_line(e)}); check ta_depth, ta_width, ta_heads") from None


class DMD(Setup):
    """Distribution matching distillation (Yin et al. 2024, "One-step Diffusion with Distribution
    Matching Distillation"), with the regression loss on the teacher's pairs:
    L_DMD = dmd_regression_weight L(x, x_hat) + dmd_weight L_dm.

    The real score is the teacher that made the pairs (the pair store's manifest names it), queried
    online; the fake score is a small EDM-preconditioned DiT denoiser trained alongside on the
    student's samples with the EDM loss (one AdamW step per student step, in `after_step`).

    Choices where the papers leave room:
    - the fake score starts from scratch (DMD initialises it from the real score, which here may be
      the empirical teacher, without weights) with no label dropout (no guidance is used);
    - the noise levels sigma are drawn from EDM's training distribution ln sigma ~ N(P_MEAN, P_STD^2),
      the one the fake score learns on, so it is queried where it is trained;
    - DMD's normaliser w = 1 / mean|x_hat - D_real| per image (detached; eps 1e-8 against 0);
    - the fake score trains on the student's samples of the same step, detached (before its update).
    """

    def __init__(self, loss: Loss, cfg: TrainConfig | None = None):
        super().__init__(loss, cfg)
        self.real = None  # Denoiser D(x, sigma, labels)
        self.fake = None  # EDMDenoiser
        self.fake_opt: torch.optim.Optimizer | None = None
        self._samples: torch.Tensor | None = None  # the last step's x_hat, detached (B, C, H, W)

    def prepare(self, ctx: SetupContext) -> None:
        cfg, manifest = self.cfg, ctx.pairs.manifest
        teacher, dataset = manifest.get("teacher"), manifest.get("dataset")
        if not isinstance(teacher, dict) or not teacher.get("kind") or not dataset:
            raise DseError("setup dmd needs the teacher that made the pairs, but the pair store's manifest names "
                           "none (imported pairs?); make the pairs with `dse teacher` or use another setup")
        if ctx.load_teacher is None:
            raise RuntimeError("DMD.prepare needs ctx.load_teacher for its real score (dse.distill.train.setup_context)")
        self.real = ctx.load_teacher(teacher["kind"], dataset, str(ctx.device), teacher.get("source", ""),
                                     cfg.dmd_teacher_data_root or None)
        arch = StudentArch(cfg.dmd_fake_depth, cfg.dmd_fake_width, cfg.dmd_fake_heads)
        fake = seeded_init(ctx.seed, lambda: EDMDenoiser(DiT(arch, ctx.geometry, label_dropout=0.0), SIGMA_DATA))
        self.fake = fake.to(ctx.device).train()
        self.fake_opt = adamw(self.fake.parameters(), cfg.dmd_fake_lr)

    def __call__(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        if self.fake is None:
            raise RuntimeError("DMD.prepare must run before the DMD loss")
        x_hat = student(batch.z, batch.y, generator=generator)  # (B, C, H, W)
        self._samples = x_hat.detach()
        total = batch.x.new_zeros(())
        if cfg.dmd_regression_weight > 0:
            total = total + cfg.dmd_regression_weight * self.loss(batch.x, x_hat)
        if cfg.dmd_weight > 0:
            total = total + cfg.dmd_weight * self.distribution_matching(x_hat, batch.y, generator)
        return total  # L_DMD: regression + distribution matching (Yin et al. 2024, Sec. 3.3)

    def distribution_matching(self, x_hat: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """L_dm (a scalar) whose gradient in x_hat (B, C, H, W) is DMD's w (D_fake - D_real)(x_t)."""
        with torch.no_grad(), torch.autocast(x_hat.device.type, enabled=False):
            x = x_hat.detach().float()  # (B, C, H, W)
            sigma = sample_training_sigma(x.shape[0], P_MEAN, P_STD, generator, x.device)  # (B,)
            x_t = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator, device=x.device)
            p_real = self.real(x_t, sigma, y).to(x.dtype)  # (B, C, H, W); the empirical teacher is float64
            p_fake = self.fake(x_t, sigma, y).to(x.dtype)  # (B, C, H, W)
            w = 1.0 / ((x - p_real).abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)  # (B, 1, 1, 1), DMD eq. 8
            grad = ((p_fake - p_real) * w).to(x_hat.dtype)  # (s_fake - s_real) sigma^2 w, DMD eq. 7-8
        return 0.5 * (x_hat - (x_hat - grad).detach()).square().mean()  # d/dx_hat = grad / numel

    def after_step(self, student: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> None:
        """One AdamW step of the fake score on this step's student samples (EDM loss)."""
        optimizer_step(self.fake_opt, edm_loss(self.fake, self._samples.float(), batch.y, generator))

    def state_dict(self) -> dict[str, Any]:
        return {"fake": self.fake.state_dict(), "fake_optimizer": self.fake_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fake.load_state_dict(state["fake"])
        self.fake_opt.load_state_dict(state["fake_optimizer"])


# Setups by the name a search space uses; dse.config.KNOWN_SETUPS names the same (a test checks).
SETUPS: dict[str, type[Setup]] = {"get": GET, "mi1": MI1, "ta": TA, "dmd": DMD}


def make_setup(name: str, loss: Loss, cfg: TrainConfig | None = None) -> Setup:
    if name not in SETUPS:
        raise KeyError(f"unknown setup {name!r}; known: {', '.join(SETUPS)}")
    return SETUPS[name](loss, cfg)
