"""Owns the registry of teachers: each kind (`empirical`, `trained`, `external`, `diffusers`) by
name, `make_teacher`, which builds one as a denoiser D(x, sigma, labels), and `teacher_entry`, what a
pair store's manifest says about it.

Teachers: `empirical` (the exact denoiser of a data set, no weights), `trained` (a checkpoint of
`dse teacher train`), `external` (a TorchScript file or a `module:function` of the user's) and
`diffusers` (a local diffusers `save_pretrained` folder: model + scheduler, safetensors only).
"""

from __future__ import annotations

from typing import Callable

from dse.data.datasets import dataset_geometry, load_dataset
from dse.errors import DseError
from dse.teacher.edm import Denoiser
from dse.teacher.empirical import EmpiricalDenoiser
from dse.teacher.external import load_external_teacher
from dse.teacher.hf import check_folder, load_diffusers_teacher, locate
from dse.teacher.train import load_trained_teacher


def _empirical(dataset: str, device: str, source: str, data_root: str | None) -> Denoiser:
    data = load_dataset(dataset, data_root)
    return EmpiricalDenoiser(data.as_float(), data.labels, device=device)


def _trained(dataset: str, device: str, source: str, data_root: str | None) -> Denoiser:
    return load_trained_teacher(source, device=device, dataset=dataset)


def _external(dataset: str, device: str, source: str, data_root: str | None) -> Denoiser:
    g = dataset_geometry(dataset)
    return load_external_teacher(
        source, device=device, shape=(g.channels, g.image_size, g.image_size), num_classes=g.num_classes
    )


def _diffusers(dataset: str, device: str, source: str, data_root: str | None) -> Denoiser:
    return load_diffusers_teacher(source, device=device, geometry=dataset_geometry(dataset))


# Teachers by name: each builds a denoiser D(x, sigma, labels) from (dataset, device, source, data_root).
TEACHERS: dict[str, Callable[[str, str, str, str | None], Denoiser]] = {
    "empirical": _empirical,
    "trained": _trained,
    "external": _external,
    "diffusers": _diffusers,
}

# What --source / teacher.source is for each kind that needs one.
SOURCES = {"trained": "a checkpoint of `dse teacher train`", "external": "a TorchScript file or module:function",
           "diffusers": "a diffusers folder saved with save_pretrained"}


def make_teacher(kind: str, dataset: str, device: str = "cpu", source: str = "", data_root: str | None = None) -> Denoiser:
    """The teacher `kind` for `dataset`; `source` is the checkpoint (trained), TorchScript file /
    `module:function` (external) or folder (diffusers)."""
    if kind not in TEACHERS:
        raise DseError(f"unknown teacher {kind!r}; known: {', '.join(TEACHERS)}")
    if kind != "empirical" and not source:
        raise DseError(f"the {kind} teacher needs --source ({SOURCES[kind]})")
    return TEACHERS[kind](dataset, device, source, data_root or None)


def teacher_entry(kind: str, dataset: str, source: str = "") -> dict:
    """The `teacher` entry of a pair store's manifest: kind and source, and for a diffusers folder
    (read from its JSON, checked against the data set's geometry) whether it is class-conditional
    (an unconditional teacher ignores the labels), its model, scheduler and prediction type."""
    entry = {"kind": kind, "source": source}
    if kind == "diffusers" and source:
        folder = locate(source)
        check_folder(folder, dataset_geometry(dataset))
        entry.update(folder.manifest_entry())
    return entry
