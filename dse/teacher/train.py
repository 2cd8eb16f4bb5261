"""Owns the `trained` teacher: a small EDM-preconditioned DiT denoiser trained with the EDM loss
(Karras et al. 2022) on a data set, with atomic checkpoints and exact resume, for users who have
data but no teacher.

The network F is `dse.models.dit.DiT`, with its timestep embedder fed the noise level (see
`dse.teacher.edm.dit_time`); the EDM formulas live in `dse.teacher.edm`, what this loop shares with
the student's in `dse.training`. Checkpoints are plain tensors, numbers and strings, read back with
`torch.load(..., weights_only=True)` only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dse.data.datasets import ImageDataset, load_dataset
from dse.errors import DseError, one_line
from dse.fileio import load_format_file
from dse.layout import LAST_CHECKPOINT, TEACHER_CONFIG_FILE, TEACHER_WEIGHTS_FILE
from dse.models.dit import DiT
from dse.teacher.edm import P_MEAN, P_STD, SIGMA_DATA, Denoiser, EDMDenoiser, edm_loss
from dse.training import TrainState, check_finite, checkpoint_file, restoring, save_checkpoint, seeded_init
from dse.types import Geometry, StudentArch

CHECKPOINT_FORMAT = "dse-teacher-v1"
FILES_FORMAT = "dse-teacher-safetensors-v1"  # teacher.safetensors + teacher.json (save_teacher_files)


@dataclass(frozen=True)
class TeacherTrainConfig:
    """How a `trained` teacher is trained. The defaults (a 0.7M-parameter DiT, 3000 steps of 128
    images) train a usable digits teacher in about 4 minutes on 2 CPU cores.

    `steps`, `checkpoint_every` and `data_root` may change between runs in one folder (to train
    longer, or to read the data from elsewhere); every other field must match the checkpoint being
    resumed.
    """

    dataset: str = "digits"
    data_root: str | None = None  # folder of a downloaded data set; None: the loader's default
    depth: int = 4
    width: int = 96
    heads: int = 4
    patch_size: int = 2
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200  # linear learning-rate warm-up from 0
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # labels dropped to the null class, for classifier-free guidance
    seed: int = 0
    checkpoint_every: int = 500
    sigma_data: float = SIGMA_DATA
    P_mean: float = P_MEAN
    P_std: float = P_STD

    def __post_init__(self) -> None:
        positive = ("depth", "width", "heads", "patch_size", "steps", "batch_size", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise DseError(f"teacher training: {name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads or self.width % 4:
            raise DseError(f"teacher training: width {self.width} must be a multiple of 4 and of heads {self.heads}")
        if not (self.lr > 0 and self.sigma_data > 0 and self.P_std > 0 and self.warmup_steps >= 0):
            raise DseError("teacher training: lr, sigma_data and P_std must be positive, warmup_steps >= 0")
        if not (0 <= self.ema_decay < 1 and 0 <= self.label_dropout < 1):
            raise DseError("teacher training: ema_decay and label_dropout must lie in [0, 1)")

    @property
    def arch(self) -> StudentArch:
        return StudentArch(depth=self.depth, width=self.width, heads=self.heads)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TeacherTrainConfig:
        return cls(**json.loads(text))


# ---------------------------------------------------------------------------------------------
# Training with checkpoints and resume.
# ---------------------------------------------------------------------------------------------


def build_denoiser(cfg: TeacherTrainConfig, geometry: Geometry) -> EDMDenoiser:
    """A freshly initialised denoiser; its initial weights are a function of `cfg.seed` alone."""
    return seeded_init(cfg.seed, lambda: EDMDenoiser(DiT(cfg.arch, geometry, label_dropout=cfg.label_dropout),
                                                     cfg.sigma_data))


def _geometry(data: ImageDataset, cfg: TeacherTrainConfig) -> Geometry:
    g = data.geometry
    if g.image_size % cfg.patch_size:
        raise DseError(f"teacher training: patch_size {cfg.patch_size} must divide the image size {g.image_size}")
    return replace(g, patch_size=cfg.patch_size)


def _learning_rate(cfg: TeacherTrainConfig, step: int) -> float:
    """Learning rate at `step` (1-based): a linear warm-up, then constant (so training longer
    continues the same run)."""
    return cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A teacher checkpoint (weights_only load, on CPU); a missing, corrupt or refused file is a
    one-line DseError."""
    return load_format_file(checkpoint_file(path), CHECKPOINT_FORMAT, "dse teacher checkpoint",
                            "train one with `dse teacher train`")


def _checkpoint_config(ckpt: dict[str, Any], file: Path) -> TeacherTrainConfig:
    try:
        return TeacherTrainConfig.from_json(ckpt["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise DseError(f"teacher checkpoint {file} has an unreadable config ({one_line(e)})") from None


class _Run:
    """The mutable state of one training run: model, EMA and optimizer (`trainer`), random generator, step."""

    def __init__(self, cfg: TeacherTrainConfig, geometry: Geometry, device: torch.device):
        self.cfg, self.geometry = cfg, geometry
        self.trainer = TrainState(build_denoiser(cfg, geometry).to(device).train(), lr=cfg.lr, weight_decay=0.0,
                                ema_decay=cfg.ema_decay)
        self.model = self.trainer.model
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_json(),
            "geometry": json.dumps(asdict(self.geometry)),
            "step": self.step,
            **self.trainer.state_dict("model"),
            "generator": self.generator.get_state(),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.trainer.load_state_dict(ckpt, "model")
        self.generator.set_state(ckpt["generator"])
        self.step = int(ckpt["step"])

    def save(self, file: Path) -> None:
        save_checkpoint(file, self.state())


def _resume(run: _Run, file: Path) -> None:
    """Continue the run saved in `file`, which must have been trained with the same settings."""
    ckpt = read_checkpoint(file)
    saved = _checkpoint_config(ckpt, file)
    cfg = run.cfg
    saved = replace(saved, steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, data_root=cfg.data_root)
    if saved != cfg:
        changed = ", ".join(
            f"{name} {old!r} -> {new!r}" for name, old in asdict(saved).items() if (new := getattr(cfg, name)) != old
        )
        raise DseError(
            f"{file} was trained with a different config ({changed}); "
            "use the same settings to resume, or another output folder"
        )
    with restoring(file, "teacher checkpoint", "delete it and retrain"):
        run.restore(ckpt)


def train_teacher(
    cfg: TeacherTrainConfig, out_dir: str | Path, device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None, progress_every: int = 50,
) -> Path:
    """Train an EDM denoiser on `cfg.dataset`; returns the checkpoint `out_dir/last.pt`.

    The checkpoint (model, EMA, optimizer, random generator state, step, config) is written
    atomically every `cfg.checkpoint_every` steps and at the end. If `out_dir` already holds one,
    training resumes from it and finishes the remaining steps (a run already at `cfg.steps` or past
    it is left as it is); on CPU, with the same number of threads, the result is bitwise the same as
    an uninterrupted run. `progress(step, steps, mean_loss)` is called every
    `progress_every` steps and at the end, with the mean loss since the previous call.
    """
    file = Path(out_dir) / LAST_CHECKPOINT
    data = load_dataset(cfg.dataset, root=cfg.data_root)
    dev = torch.device(device)
    run = _Run(cfg, _geometry(data, cfg), dev)
    if file.exists():
        _resume(run, file)
    images = torch.from_numpy(data.as_float()).to(dev)  # (N, C, H, W)
    labels = torch.from_numpy(data.labels).to(dev)  # (N,)
    loss_sum, loss_count = 0.0, 0
    while run.step < cfg.steps:
        run.step += 1
        idx = torch.randint(len(images), (cfg.batch_size,), generator=run.generator, device=dev)  # (B,)
        loss = edm_loss(run.model, images[idx], labels[idx], run.generator,
                        sigma_data=cfg.sigma_data, P_mean=cfg.P_mean, P_std=cfg.P_std)
        check_finite(loss, run.step, "teacher training diverged: ")
        for group in run.trainer.opt.param_groups:
            group["lr"] = _learning_rate(cfg, run.step)
        run.trainer.step(loss)
        run.trainer.update_ema()
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
            run.save(file)
        if progress and (run.step % progress_every == 0 or run.step == cfg.steps):
            progress(run.step, cfg.steps, loss_sum / loss_count)
            loss_sum, loss_count = 0.0, 0
    return file


# ---------------------------------------------------------------------------------------------
# Using a trained teacher.
# ---------------------------------------------------------------------------------------------


class TrainedTeacher:
    """The EMA denoiser of a checkpoint as a Denoiser: no gradients, float32 inside, the output
    in the dtype of `x` (the Heun sampler passes float64)."""

    def __init__(self, denoiser: EDMDenoiser, config: TeacherTrainConfig):
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.config = config

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,) or a scalar, labels (B,) -> denoised (B, C, H, W)."""
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])  # (B,)
        return self.denoiser(x.to(torch.float32), sigma, labels.to(torch.int64)).to(x.dtype)


def load_trained_teacher(path: str | Path, device: str = "cpu", dataset: str | None = None) -> Denoiser:
    """The EMA denoiser saved by `train_teacher` at `path` (a checkpoint file or its folder), or the
    safetensors teacher of `save_teacher_files` (`teacher.safetensors` / `teacher.json` or their folder).

    If `dataset` is given it must be the data set the teacher was trained on. A missing or corrupt
    checkpoint is a DseError naming the file.
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json") or (p.is_dir() and (p / TEACHER_CONFIG_FILE).is_file()):
        denoiser, cfg = load_teacher_files(p if p.is_dir() else p.parent)
        if dataset is not None and dataset != cfg.dataset:
            raise DseError(f"teacher {p} was trained on {cfg.dataset!r}, not {dataset!r}")
        return TrainedTeacher(denoiser.to(device), cfg)
    file = checkpoint_file(path)
    ckpt = read_checkpoint(file)
    cfg = _checkpoint_config(ckpt, file)
    if dataset is not None and dataset != cfg.dataset:
        raise DseError(f"teacher {file} was trained on {cfg.dataset!r}, not {dataset!r}")
    with restoring(file, "teacher checkpoint", "delete it and retrain"):
        geometry = Geometry(**json.loads(ckpt["geometry"]))
        denoiser = build_denoiser(cfg, geometry)
        denoiser.load_state_dict(ckpt["ema"])
    return TrainedTeacher(denoiser.to(device), cfg)


# ---------------------------------------------------------------------------------------------
# The teacher as safetensors + JSON (what `dse teacher convert` writes): no pickle at all.
# ---------------------------------------------------------------------------------------------


def save_teacher_files(denoiser: EDMDenoiser, cfg: TeacherTrainConfig, geometry: Geometry, folder: str | Path) -> Path:
    """Write `denoiser`'s weights to folder/teacher.safetensors and its description (format, config,
    geometry, sha256 of the weights) to folder/teacher.json; returns the folder."""
    import hashlib

    from safetensors.torch import save as safetensors_bytes

    from dse.fileio import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    data = safetensors_bytes(weights, metadata={"format": FILES_FORMAT})
    atomic_write(folder / TEACHER_WEIGHTS_FILE, data)
    description = {"format": FILES_FORMAT, "config": asdict(cfg), "geometry": asdict(geometry),
                   "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(folder / TEACHER_CONFIG_FILE, json.dumps(description, indent=2) + "\n")
    return folder


def load_teacher_files(folder: str | Path) -> tuple[EDMDenoiser, TeacherTrainConfig]:
    """The denoiser (not yet in eval mode) and config written by `save_teacher_files`; a missing,
    tampered or corrupt file is a one-line DseError."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder = Path(folder)
    weights_file, config_file = folder / TEACHER_WEIGHTS_FILE, folder / TEACHER_CONFIG_FILE
    for f in (config_file, weights_file):
        if not f.is_file():
            raise DseError(f"{f} not found; `dse teacher convert` writes {TEACHER_WEIGHTS_FILE} and {TEACHER_CONFIG_FILE}")
    try:
        description = json.loads(config_file.read_text())
        if description.get("format") != FILES_FORMAT:
            raise ValueError(f"format {description.get('format')!r}, not {FILES_FORMAT!r}")
        cfg = TeacherTrainConfig(**description["config"])
        geometry = Geometry(**description["geometry"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DseError(f"{config_file} is not a dse teacher description ({one_line(e)})") from None
    data = weights_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != description.get("sha256"):
        raise DseError(f"{weights_file} does not match the sha256 in {config_file}: it was changed or damaged")
    try:
        weights = load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise DseError(f"{weights_file} is corrupt, not safetensors ({one_line(e)})") from None
    denoiser = build_denoiser(cfg, geometry)
    with restoring(weights_file, "teacher weights", "convert the teacher again"):
        denoiser.load_state_dict(weights)
    return denoiser, cfg
