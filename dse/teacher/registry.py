"""Owns the registry of teachers: each kind (`empirical`, `trained`, `external`) by name, and
`make_teacher`, which builds one as a denoiser D(x, sigma, labels).

Teachers: `empirical` (the exact denoiser of a data set, no weights), `trained` (a checkpoint of
`dse teacher train`) and `external` (a TorchScript file or a `module:function` of the user's).
"""

from __future__ import annotations

from typing import Callable

from dse.data.datasets import dataset_geometry, load_dataset
from dse.errors import DseError
from dse.teacher.edm import Denoiser
from dse.teacher.empirical import EmpiricalDenoiser
from dse.teacher.external import load_external_teacher
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


# Teachers by name: each builds a denoiser D(x, sigma, labels) from (dataset, device, source, data_root).
TEACHERS: dict[str, Callable[[str, str, str, str | None], Denoiser]] = {
    "empirical": _empirical,
    "trained": _trained,
    "external": _external,
}


def make_teacher(kind: str, dataset: str, device: str = "cpu", source: str = "", data_root: str | None = None) -> Denoiser:
    """The teacher `kind` for `dataset`; `source` is the checkpoint (trained) or TorchScript file /
    `module:function` (external)."""
    if kind not in TEACHERS:
        raise DseError(f"unknown teacher {kind!r}; known: {', '.join(TEACHERS)}")
    if kind != "empirical" and not source:
        raise DseError(f"the {kind} teacher needs --source (a checkpoint, or a TorchScript file / module:function)")
    return TEACHERS[kind](dataset, device, source, data_root or None)
