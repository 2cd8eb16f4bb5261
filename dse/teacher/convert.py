"""Owns `dse teacher convert`: turning a teacher that runs the user's code (a `module:function`, or a
TorchScript file) once into files dse loads without running any code — safetensors weights plus a
JSON description — and checking that the converted teacher gives the same denoised images.

dse can only rebuild architectures it knows. Supported: a callable that IS or wraps (as an attribute
or a submodule) a diffusers `UNet2DModel` / `DiTTransformer2DModel` together with the diffusers
scheduler it was trained with (written as a diffusers `save_pretrained` folder, for
`--teacher diffusers`), or dse's own EDM teacher network (`dse.teacher.train`: an `EDMDenoiser` over
dse's DiT, or the `TrainedTeacher` holding one; written as teacher.safetensors + teacher.json, for
`--teacher trained`). Anything else, a TorchScript file included (it holds a program, not the Python
code dse would need to rebuild it), is refused in one line that says what to do instead.

Converting runs the source's code, once, by design (as `--teacher external` does); do it in an
environment you trust. What it writes is read back with safetensors and JSON only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dse.data.datasets import dataset_geometry
from dse.errors import DseError, one_line
from dse.teacher.edm import SIGMA_MAX, Denoiser, EDMDenoiser
from dse.teacher.external import ExternalDenoiser, load_external_teacher
from dse.types import Geometry

CONVERT_NOTE = "dse_convert.json"  # what was converted, from where, and how closely it matches the source
MATCH_TOLERANCE = 1e-3  # largest |D_converted - D_source| accepted on the probe batch (float32 models)
_REFUSAL_HINT = ("dse cannot rebuild an unknown architecture without its code: save the network as a diffusers "
                 "folder (model.save_pretrained(DIR) + scheduler.save_pretrained(DIR)) or use --teacher external "
                 "(docs/teachers.md)")


@dataclass(frozen=True)
class Converted:
    out: Path
    kind: str  # the teacher kind that loads `out`: "diffusers" or "trained"
    found: str  # what was found in the source, e.g. "UNet2DModel + DDPMScheduler"
    max_abs_diff: float  # converted vs source on the probe batch


def _candidates(obj: Any) -> list[Any]:
    """`obj`, what it holds as attributes (a bound method's object, a wrapper's fields) and, for
    modules, every submodule: where a known network or a scheduler may be."""
    seen, out, todo = set(), [], [obj, getattr(obj, "__self__", None)]
    for attr in ("fn", "denoiser", "model", "net", "unet", "transformer", "scheduler"):
        todo.append(getattr(obj, attr, None))
    todo.extend(vars(obj).values() if hasattr(obj, "__dict__") and not isinstance(obj, type) else ())
    for item in todo:
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        out.append(item)
        if isinstance(item, ExternalDenoiser):
            todo.append(item.fn)
        todo.extend(c.cell_contents for c in getattr(item, "__closure__", None) or () if c.cell_contents is not None)
        for attr in ("denoiser", "model", "net", "unet", "transformer", "scheduler", "fn"):
            todo.append(getattr(item, attr, None))
        if isinstance(item, nn.Module):
            todo.extend(m for _, m in item.named_modules())
    return out


def _find_dse_teacher(objs: list[Any], dataset: str, geometry: Geometry):
    """(EDMDenoiser, TeacherTrainConfig) of dse's own teacher among `objs`, or None."""
    from dataclasses import replace

    from dse.models.dit import DiT
    from dse.teacher.train import TeacherTrainConfig, TrainedTeacher

    for obj in objs:
        if isinstance(obj, TrainedTeacher):
            _check_geometry(obj.denoiser.net.geometry, geometry, dataset)
            return obj.denoiser, replace(obj.config, dataset=dataset)
    for obj in objs:
        if isinstance(obj, EDMDenoiser) and isinstance(obj.net, DiT):
            net: DiT = obj.net
            _check_geometry(net.geometry, geometry, dataset)
            if net.arch.mlp_ratio != 4.0:
                raise DseError(f"dse's EDM teacher has mlp_ratio {net.arch.mlp_ratio}; `dse teacher train` (and so "
                               "--teacher trained) builds 4.0 only")
            return obj, TeacherTrainConfig(dataset=dataset, depth=net.arch.depth, width=net.arch.width,
                                           heads=net.arch.heads, patch_size=net.geometry.patch_size,
                                           label_dropout=net.y_embedder.dropout_prob, sigma_data=obj.sigma_data)
    return None


def _check_geometry(net: Geometry, data: Geometry, dataset: str) -> None:
    have, want = (net.image_size, net.channels, net.num_classes), (data.image_size, data.channels, data.num_classes)
    if have != want:
        raise DseError(f"dse's EDM teacher makes {have[0]}x{have[0]}x{have[1]} images of {have[2]} classes, "
                       f"not {dataset}'s {want[0]}x{want[0]}x{want[1]} of {want[2]}; pass its --dataset")


def _find_diffusers(objs: list[Any]) -> tuple[Any, Any] | None:
    """(model, scheduler or None) of a diffusers network among `objs`, or None."""
    try:
        from diffusers import ModelMixin, SchedulerMixin
    except ImportError:
        return None
    models = [o for o in objs if isinstance(o, ModelMixin)]
    if not models:
        return None
    scheduler = next((o for o in objs if isinstance(o, SchedulerMixin)), None)
    return models[0], scheduler


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DseError(f"{out} already exists and is not an empty folder; choose another --out")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DseError(f"{parent} is a file, not a folder; choose another --out")


def _probe_diff(converted: Denoiser, source: Denoiser, geometry: Geometry, device: str) -> float:
    """The largest |converted - source| over three noise levels and two labels (float64 inputs, as
    the Heun sampler gives)."""
    g = torch.Generator().manual_seed(0)
    shape = (geometry.channels, geometry.image_size, geometry.image_size)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64).to(device)  # (3, C, H, W)
    sigma = torch.tensor([SIGMA_MAX, 1.0, 0.05], dtype=torch.float64, device=device)  # (3,)
    x = x * sigma.view(-1, 1, 1, 1).clamp_min(1.0)
    labels = torch.tensor([0, geometry.num_classes - 1, 1 % geometry.num_classes], device=device)
    try:
        b = source(x, sigma, labels).to(torch.float64)
    except DseError:
        raise
    except Exception as e:  # the user's code may raise anything; say where it came from
        raise DseError(f"the teacher to convert failed on a probe batch of shape {tuple(x.shape)}: "
                       f"{one_line(e)}") from None
    a = converted(x, sigma, labels).to(torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max())


def convert_teacher(source: str, out: str | Path, dataset: str = "digits", device: str = "cpu") -> Converted:
    """Convert the teacher `source` (a `module:function` or TorchScript file, as `--teacher external`
    takes) for `dataset` into the folder `out` (new, or empty), and check that the converted teacher
    reproduces the source's denoised images on a probe batch to MATCH_TOLERANCE. Nothing is left at
    `out` when it refuses."""
    out = Path(out)
    geometry = dataset_geometry(dataset)
    _check_out(out)
    denoiser = load_external_teacher(source, device=device)  # not called yet: a TorchScript file is refused first
    assert isinstance(denoiser, ExternalDenoiser)
    if isinstance(denoiser.fn, torch.jit.ScriptModule):
        name = getattr(denoiser.fn, "original_name", "module")
        raise DseError(f"{source} is a TorchScript program (a {name}); {_REFUSAL_HINT}, or convert from the "
                       "`module:function` that builds it, where its Python code is")
    objs = _candidates(denoiser.fn)
    found_dse = _find_dse_teacher(objs, dataset, geometry)
    found_hf = None if found_dse else _find_diffusers(objs)
    if found_dse is None and found_hf is None:
        raise DseError(f"{source} returned a {type(denoiser.fn).__name__} holding no diffusers UNet2DModel / "
                       f"DiTTransformer2DModel and no dse EDM teacher; {_REFUSAL_HINT}")
    if found_hf is not None and found_hf[1] is None:
        raise DseError(f"{source} holds a {type(found_hf[0]).__name__} but no diffusers scheduler: dse needs the "
                       "scheduler it was trained with to map noise levels to its timesteps; keep it on the wrapper "
                       "(e.g. self.scheduler) or save both with save_pretrained")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=existing))  # on out's file system; moved there at the end
    try:
        if found_dse is not None:
            converted, kind, found = _write_dse(found_dse, geometry, tmp, device)
        else:
            converted, kind, found = _write_diffusers(*found_hf, geometry, tmp, device)
        diff = _probe_diff(converted, denoiser, geometry, device)
        if not diff <= MATCH_TOLERANCE:
            raise DseError(f"the converted {found} does not reproduce {source} (largest difference {diff:.3g} on a "
                           "probe batch): the wrapper does more than the network and its scheduler; "
                           "use --teacher external for it")
        note = {"source": source, "kind": kind, "found": found, "dataset": dataset, "max_abs_diff": diff,
                "use": f"dse teacher generate --teacher {kind} --source {out} --dataset {dataset}"}
        (tmp / CONVERT_NOTE).write_text(json.dumps(note, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Converted(out, kind, found, diff)


def _write_dse(found, geometry: Geometry, folder: Path, device: str):
    from dataclasses import replace

    from dse.teacher.train import load_trained_teacher, save_teacher_files

    denoiser, cfg = found
    save_teacher_files(denoiser, cfg, replace(geometry, patch_size=cfg.patch_size), folder)
    return load_trained_teacher(folder, device=device), "trained", f"dse EDM teacher ({cfg.arch.name})"


def _write_diffusers(model, scheduler, geometry: Geometry, folder: Path, device: str):
    from dse.teacher.hf import load_diffusers_teacher

    model.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    found = f"{type(model).__name__} + {type(scheduler).__name__}"
    return load_diffusers_teacher(folder, device=device, geometry=geometry), "diffusers", found
