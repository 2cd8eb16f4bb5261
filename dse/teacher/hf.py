"""Owns the `diffusers` teacher: a local Hugging Face diffusers folder (a model saved with
`save_pretrained` and its scheduler) wrapped as an EDM denoiser D(x, sigma, labels), and the
mapping between EDM's noise level sigma and the scheduler's timestep (`vp_timestep`, written once).

A folder is either a model folder (config.json + diffusion_pytorch_model.safetensors, with
scheduler_config.json beside them or in scheduler/) or a pipeline folder (model_index.json, unet/ or
transformer/, scheduler/). The model is `UNet2DModel` (class-conditional through num_class_embeds,
or unconditional) or `DiTTransformer2DModel` (class-conditional). Schedules:

- VP / DDPM (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, ...: a beta table, alphas_cumprod):
  the model sees x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps; in EDM's variables x = x_vp / sqrt(abar)
  = x0 + sigma eps with sigma = sqrt((1 - abar) / abar), so x_vp = x / sqrt(1 + sigma^2) and the
  timestep of a sigma interpolates log sigma over the scheduler's table (`vp_timestep`, as diffusers'
  own `EulerDiscreteScheduler._sigma_to_t`). Predictions: epsilon, v_prediction, sample.
- EDM (EDMEulerScheduler, EDMDPMSolverMultistepScheduler, ...): the scheduler's own
  `precondition_inputs` / `precondition_noise` / `precondition_outputs`.

Security: only JSON and safetensors are read (`from_pretrained(..., local_files_only=True,
use_safetensors=True)`); a folder holding only a .bin pickle is refused, and the model and
scheduler classes are diffusers' own, chosen from the folder's `_class_name` by an allow-list.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from dse.errors import DseError, one_line
from dse.types import Geometry

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "diffusion_pytorch_model.safetensors"
MODEL_WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"  # a sharded save
PICKLED_WEIGHTS = "diffusion_pytorch_model.bin"
SCHEDULER_CONFIG = "scheduler_config.json"
PIPELINE_INDEX = "model_index.json"
MODEL_SUBFOLDERS = ("unet", "transformer")  # where a pipeline keeps its denoising network
MODEL_CLASSES = ("UNet2DModel", "DiTTransformer2DModel")  # the networks whose call this module knows
VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")
EDM_PREDICTIONS = ("epsilon", "v_prediction")
_SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9]+Scheduler$")


@dataclass(frozen=True)
class DiffusersFolder:
    """What a diffusers folder holds, read from its JSON files only (no weights, no torch model)."""

    root: Path
    model_dir: Path  # config.json + diffusion_pytorch_model.safetensors
    scheduler_dir: Path  # scheduler_config.json
    model_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    @property
    def model_class(self) -> str:
        return str(self.model_config.get("_class_name", ""))

    @property
    def scheduler_class(self) -> str:
        return str(self.scheduler_config.get("_class_name", ""))

    @property
    def num_classes(self) -> int | None:
        """The model's number of classes; None for an unconditional model."""
        c = self.model_config
        if self.model_class == "DiTTransformer2DModel":
            return c.get("num_embeds_ada_norm")
        return c.get("num_class_embeds")

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def manifest_entry(self) -> dict[str, Any]:
        """What a pair store's manifest says about this teacher, beside its kind and source."""
        return {"conditional": self.conditional, "model": self.model_class, "scheduler": self.scheduler_class,
                "prediction_type": self.prediction_type}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DseError(f"{path} is not a readable {what} ({one_line(e)})") from None
    if not isinstance(value, dict):
        raise DseError(f"{path} is not a {what}: it holds a {type(value).__name__}, not an object")
    return value


def _check_weights(model_dir: Path) -> None:
    if (model_dir / MODEL_WEIGHTS).is_file() or (model_dir / MODEL_WEIGHTS_INDEX).is_file():
        return
    pickled = sorted(p.name for p in model_dir.glob("*.bin"))
    if pickled:
        raise DseError(
            f"{model_dir} holds {pickled[0]} (a pickle, which dse never loads: it can run code) but not "
            f"{MODEL_WEIGHTS}; re-save the model with save_pretrained(DIR, safe_serialization=True) "
            "in an environment you trust (docs/teachers.md)"
        )
    raise DseError(f"{model_dir} has no {MODEL_WEIGHTS}: save the model with save_pretrained(DIR)")


def locate(source: str | Path) -> DiffusersFolder:
    """The model and scheduler folders of the diffusers folder `source`, with their configs; every
    problem (missing folder, no safetensors weights, no scheduler, a latent pipeline) is a DseError."""
    root = Path(source)
    if not root.exists():
        raise DseError(f"diffusers teacher folder {root} not found")
    if not root.is_dir():
        raise DseError(f"diffusers teacher {root} is a file, not a folder saved with save_pretrained")
    if (root / PIPELINE_INDEX).is_file():
        index = _read_json(root / PIPELINE_INDEX, "diffusers pipeline index")
        latent = [k for k in ("vae", "vqvae") if k in index]
        if latent:
            raise DseError(f"{root} is a latent diffusion pipeline (it has a {latent[0]}); dse distils "
                           "pixel-space teachers only")
        model_dir = next((root / s for s in MODEL_SUBFOLDERS if (root / s / MODEL_CONFIG).is_file()), None)
        if model_dir is None:
            raise DseError(f"the pipeline {root} has no {' or '.join(f'{s}/{MODEL_CONFIG}' for s in MODEL_SUBFOLDERS)}")
        scheduler_dir = root / "scheduler"
    elif (root / MODEL_CONFIG).is_file():
        model_dir = root
        scheduler_dir = root / "scheduler" if (root / "scheduler" / SCHEDULER_CONFIG).is_file() else root
    else:
        raise DseError(f"{root} is not a diffusers folder: it has neither {MODEL_CONFIG} (a model saved with "
                       f"save_pretrained) nor {PIPELINE_INDEX} (a pipeline)")
    _check_weights(model_dir)
    if not (scheduler_dir / SCHEDULER_CONFIG).is_file():
        raise DseError(f"{root} has no scheduler: expected {SCHEDULER_CONFIG} beside {MODEL_CONFIG} or in "
                       "scheduler/ (save the one the model was trained with: scheduler.save_pretrained(DIR))")
    return DiffusersFolder(root, model_dir, scheduler_dir, _read_json(model_dir / MODEL_CONFIG, "model config"),
                           _read_json(scheduler_dir / SCHEDULER_CONFIG, "scheduler config"))


def check_folder(folder: DiffusersFolder, geometry: Geometry | None = None) -> None:
    """Refuse a model dse cannot call, or (with `geometry`) whose images or classes are not the data set's."""
    c, name = folder.model_config, folder.model_class
    if name not in MODEL_CLASSES:
        raise DseError(f"{folder.model_dir}: model class {name or 'none'!r} is not supported; "
                       f"the diffusers teacher wraps {' or '.join(MODEL_CLASSES)}")
    if not _SCHEDULER_NAME.match(folder.scheduler_class):
        raise DseError(f"{folder.scheduler_dir / SCHEDULER_CONFIG} names no diffusers scheduler "
                       f"(_class_name {folder.scheduler_class!r})")
    if name == "UNet2DModel":
        if c.get("class_embed_type") is not None:
            raise DseError(f"{folder.model_dir}: class_embed_type {c['class_embed_type']!r} is not supported; "
                           "the diffusers teacher takes integer labels through num_class_embeds")
        if c.get("time_embedding_type", "positional") != "positional":
            raise DseError(f"{folder.model_dir}: time_embedding_type {c['time_embedding_type']!r} (a score-SDE "
                           "model) is not supported; the diffusers teacher needs a positional timestep")
    if geometry is None:
        return
    size = c.get("sample_size")
    sizes = set(size) if isinstance(size, (list, tuple)) else {size}
    channels = c.get("in_channels")
    out = c.get("out_channels") or channels
    problems = []
    if size is not None and sizes != {geometry.image_size}:
        problems.append(f"image size {size} (the data set's: {geometry.image_size})")
    if channels != geometry.channels or out not in (channels, 2 * channels):
        problems.append(f"{channels} input / {out} output channels (the data set's: {geometry.channels})")
    if folder.conditional and folder.num_classes != geometry.num_classes:
        problems.append(f"{folder.num_classes} classes (the data set's: {geometry.num_classes})")
    if problems:
        raise DseError(f"the diffusers teacher {folder.root} does not fit the data set: it has {'; '.join(problems)}")


def vp_timestep(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The continuous timestep (B,) of EDM noise levels sigma (B,) on a VP schedule alphas_cumprod (T,).

    Step t of the schedule has sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t; t is log sigma
    interpolated linearly over the table of log sigma_t (as diffusers' `_sigma_to_t`), clamped to
    [0, T - 1] outside it. The model is then called at this t with x / sqrt(1 + sigma^2).
    """
    abar = alphas_cumprod.to(torch.float64)
    log_sigmas = (0.5 * ((1 - abar) / abar).log()).to(sigma.device)  # (T,), increasing
    log_sigma = sigma.to(torch.float64).clamp_min(1e-10).log()  # (B,)
    high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)  # (B,)
    low = high - 1
    w = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
    return low.to(torch.float64) + w


class _VPSchedule:
    """A beta schedule in EDM's variables (see the module docstring)."""

    def __init__(self, scheduler: Any, prediction_type: str):
        if prediction_type not in VP_PREDICTIONS:
            raise DseError(f"prediction_type {prediction_type!r} is not supported for a VP scheduler; "
                           f"use one of {', '.join(VP_PREDICTIONS)}")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)  # (T,)
        self.prediction_type = prediction_type
        # EulerDiscreteScheduler's continuous v-prediction models take t = log(sigma) / 4
        cfg = scheduler.config
        self.log_time = cfg.get("timestep_type") == "continuous" and prediction_type == "v_prediction"

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_vp (B, C, H, W), timestep (B,)) for x = x0 + sigma eps, sigma (B,)."""
        s = sigma.view(-1, 1, 1, 1)
        t = 0.25 * sigma.log() if self.log_time else vp_timestep(sigma, self.alphas_cumprod)
        return x / (1 + s**2).sqrt(), t

    def denoised(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0, abar = 1 / (1 + s^2)
            return x / (1 + s**2) - s * out / (1 + s**2).sqrt()
        return out


class _EDMSchedule:
    """An EDM scheduler's own preconditioning."""

    def __init__(self, scheduler: Any, prediction_type: str):
        if prediction_type not in EDM_PREDICTIONS:
            raise DseError(f"prediction_type {prediction_type!r} is not supported for an EDM scheduler; "
                           f"use one of {', '.join(EDM_PREDICTIONS)}")
        self.scheduler = scheduler

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scheduler.precondition_inputs(x, sigma.view(-1, 1, 1, 1)), self.scheduler.precondition_noise(sigma)

    def denoised(self, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.scheduler.precondition_outputs(x, out, sigma.view(-1, 1, 1, 1))


def make_schedule(scheduler: Any) -> _VPSchedule | _EDMSchedule:
    """The EDM view of a diffusers scheduler instance; a scheduler with neither EDM's preconditioning
    nor a beta table is a DseError."""
    prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
    if hasattr(scheduler, "precondition_noise"):
        return _EDMSchedule(scheduler, prediction_type)
    if isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
        return _VPSchedule(scheduler, prediction_type)
    raise DseError(f"scheduler {type(scheduler).__name__} has neither a beta schedule (alphas_cumprod) nor EDM's "
                   "preconditioning; the diffusers teacher cannot map its timesteps to noise levels")


class DiffusersDenoiser:
    """A diffusers model and its schedule as a Denoiser: no gradients, the schedule's arithmetic in
    float64, the model in its own dtype, the output in x's dtype. An unconditional model ignores
    the labels. A model with learned variance (2C output channels) gives its first C."""

    def __init__(self, model: torch.nn.Module, schedule: _VPSchedule | _EDMSchedule, conditional: bool):
        self.model = model.eval().requires_grad_(False)
        self.schedule, self.conditional = schedule, conditional
        self.dtype = next(model.parameters()).dtype

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,) or a scalar, labels (B,) -> denoised (B, C, H, W)."""
        x64 = x.to(torch.float64)
        sigma = sigma.to(torch.float64).reshape(-1).expand(x.shape[0])  # (B,)
        inp, t = self.schedule.model_input(x64, sigma)
        class_labels = labels.to(torch.int64) if self.conditional else None
        out = self.model(inp.to(self.dtype), timestep=t.to(torch.float32), class_labels=class_labels,
                         return_dict=False)[0]
        out = out[:, : x.shape[1]].to(torch.float64)  # (B, C, H, W)
        return self.schedule.denoised(x64, out, sigma).to(x.dtype)


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' info and warning messages off (e.g. the advice to install accelerate), restored after."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _classes(folder: DiffusersFolder) -> tuple[type, type]:
    """diffusers' model and scheduler classes named by the folder (checked by `check_folder`)."""
    import diffusers
    from diffusers import SchedulerMixin

    model_cls = getattr(diffusers, folder.model_class)
    scheduler_cls = getattr(diffusers, folder.scheduler_class, None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise DseError(f"{folder.scheduler_dir / SCHEDULER_CONFIG}: {folder.scheduler_class!r} is not a scheduler "
                       f"of diffusers {diffusers.__version__}")
    return model_cls, scheduler_cls


def load_diffusers_teacher(
    source: str | Path, device: str = "cpu", geometry: Geometry | None = None
) -> DiffusersDenoiser:
    """The diffusers folder `source` as a denoiser D(x, sigma, labels) on `device`; with `geometry`,
    the model must make the data set's images (and know its classes, if it is conditional)."""
    folder = locate(source)
    check_folder(folder, geometry)
    model_cls, scheduler_cls = _classes(folder)
    with _quiet_diffusers():
        try:
            scheduler = scheduler_cls.from_pretrained(folder.scheduler_dir, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise DseError(f"cannot load the scheduler of {folder.root}: {one_line(e)}") from None
        schedule = make_schedule(scheduler)
        try:
            model = model_cls.from_pretrained(folder.model_dir, local_files_only=True, use_safetensors=True,
                                              low_cpu_mem_usage=False)
        except (OSError, ValueError, TypeError, RuntimeError, KeyError) as e:
            raise DseError(f"cannot load the model of {folder.root}: {one_line(e)}") from None
    return DiffusersDenoiser(model.to(device), schedule, folder.conditional)
