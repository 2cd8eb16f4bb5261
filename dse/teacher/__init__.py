"""Owns making teacher pairs: a registry of teachers (denoisers D(x, sigma, labels)) and
`generate_pairs`, which runs the EDM Heun sampler from seeded noise into a pair store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dse.data.datasets import load_dataset
from dse.data.pairs import PairWriter
from dse.errors import DseError
from dse.teacher.edm import Denoiser, SamplerSettings, heun_sample
from dse.teacher.empirical import EmpiricalDenoiser


def _empirical(dataset: str, device: str) -> Denoiser:
    data = load_dataset(dataset)
    return EmpiricalDenoiser(data.as_float(), data.labels, device=device)


# Teachers by name: each builds a denoiser D(x, sigma, labels) for a data set.
TEACHERS: dict[str, Callable[[str, str], Denoiser]] = {"empirical": _empirical}


def make_teacher(kind: str, dataset: str, device: str = "cpu") -> Denoiser:
    if kind not in TEACHERS:
        raise DseError(f"unknown teacher {kind!r}; known: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[kind](dataset, device)


def pair_noise(seed: int, index: int, shape: tuple[int, ...], num_classes: int) -> tuple[torch.Tensor, int]:
    """The noise z (shape) and label of pair `index`: a function of (seed, index) alone, so any pair
    can be reproduced by itself and a resumed run continues with the same seeds."""
    g = torch.Generator().manual_seed((seed * 1_000_000_007 + index) % (2**63))
    label = int(torch.randint(num_classes, (1,), generator=g))
    return torch.randn(shape, generator=g), label


def generate_pairs(
    out: str | Path, *, dataset: str = "digits", teacher: str = "empirical", num_pairs: int = 4096, seed: int = 0,
    settings: SamplerSettings = SamplerSettings(), shard_size: int = 65536, batch_size: int = 512,
    device: str = "cpu", progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Sample `num_pairs` teacher pairs into the store at `out`, resuming after the pairs it holds.

    `progress(done, total, pairs_per_second)` is called after each batch.
    """
    data_geometry = load_dataset(dataset).geometry
    shape = (data_geometry.channels, data_geometry.image_size, data_geometry.image_size)
    meta = {
        "teacher": {"kind": teacher},
        "sampler": {"name": "edm-heun", "num_steps": settings.num_steps, "sigma_min": settings.sigma_min,
                    "sigma_max": settings.sigma_max, "rho": settings.rho, "nfe": settings.nfe},
        "dataset": dataset,
        "num_classes": data_geometry.num_classes,
        "seed": seed,
        "image_dtype": "float32",
    }
    writer = PairWriter(out, meta)
    if writer.num_pairs >= num_pairs:
        return Path(out)
    denoiser = make_teacher(teacher, dataset, device)
    start_time, start_count = time.perf_counter(), writer.num_pairs
    while writer.num_pairs < num_pairs:
        first = writer.num_pairs
        n_shard = min(shard_size, num_pairs - first)
        zs, ys, xs = [], [], []
        for b in range(first, first + n_shard, batch_size):
            idx = range(b, min(b + batch_size, first + n_shard))
            noise = [pair_noise(seed, i, shape, data_geometry.num_classes) for i in idx]
            z = torch.stack([n[0] for n in noise]).to(device)
            y = torch.tensor([n[1] for n in noise], dtype=torch.int64, device=device)
            x = heun_sample(denoiser, z, y, settings)
            zs.append(z.cpu().numpy()), ys.append(y.cpu().numpy()), xs.append(x.cpu().numpy())
            if progress:
                done = b + len(idx)
                progress(done, num_pairs, (done - start_count) / max(time.perf_counter() - start_time, 1e-9))
        writer.append(np.concatenate(zs), np.concatenate(ys), np.concatenate(xs))
    return Path(out)
