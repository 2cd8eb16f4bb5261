"""Owns making teacher pairs: the seeded noise and label of each pair, and `generate_pairs`, which
runs the EDM Heun sampler over a teacher of the registry into a pair store, resumably.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dse.data.datasets import dataset_geometry
from dse.data.pairs import PairWriter
from dse.errors import DseError
from dse.teacher.edm import SamplerSettings, heun_sample
from dse.teacher.registry import make_teacher, teacher_entry
from dse.types import Geometry


def pair_noise(seed: int, index: int, shape: tuple[int, ...], num_classes: int) -> tuple[torch.Tensor, int]:
    """The noise z (shape) and label of pair `index`: a function of (seed, index) alone, so any pair
    can be reproduced by itself and a resumed run continues with the same seeds."""
    g = torch.Generator().manual_seed((seed * 1_000_000_007 + index) % (2**63))
    label = int(torch.randint(num_classes, (1,), generator=g))
    return torch.randn(shape, generator=g), label


def pair_batch(seed: int, indices: range, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (n, C, H, W) and labels (n,) of pairs `indices`."""
    shape = (geometry.channels, geometry.image_size, geometry.image_size)
    noise = [pair_noise(seed, i, shape, geometry.num_classes) for i in indices]
    return torch.stack([n[0] for n in noise]), torch.tensor([n[1] for n in noise], dtype=torch.int64)


def generate_pairs(
    out: str | Path, *, dataset: str = "digits", teacher: str = "empirical", source: str = "",
    data_root: str | None = None, num_pairs: int = 4096, seed: int = 0, settings: SamplerSettings = SamplerSettings(),
    shard_size: int = 65536, batch_size: int = 512, image_dtype: str = "float32", device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Sample `num_pairs` teacher pairs into the store at `out`, resuming after the pairs it holds.

    Pair i depends on (seed, i) only, and shards are committed one at a time, so a run that is
    killed and started again ends with the same store as one uninterrupted run.
    `progress(done, total, pairs_per_second)` is called after each batch.

    Every input (data set, teacher, source, image dtype, `out`) is checked before anything is
    written, and a run that fails before its first shard leaves no folder behind.
    """
    if min(num_pairs, shard_size, batch_size, settings.num_steps) < 1:
        raise DseError("the number of pairs, the shard size, the batch size and the sampler steps must be positive")
    geometry = dataset_geometry(dataset)
    meta = {
        "teacher": teacher_entry(teacher, dataset, source),  # a diffusers folder: checked here, before writing
        "sampler": {"name": "edm-heun", "num_steps": settings.num_steps, "sigma_min": settings.sigma_min,
                    "sigma_max": settings.sigma_max, "rho": settings.rho, "nfe": settings.nfe},
        "dataset": dataset,
        "num_classes": geometry.num_classes,
        "seed": seed,
        "image_dtype": image_dtype,
    }
    writer = PairWriter(out, meta)  # checks `out` and the settings of pairs already there; writes nothing yet
    if writer.num_pairs >= num_pairs:
        return Path(out)
    denoiser = make_teacher(teacher, dataset, device, source, data_root)  # the teacher, its source and its data load
    start_time, start_count = time.perf_counter(), writer.num_pairs
    while writer.num_pairs < num_pairs:
        first = writer.num_pairs
        end = first + min(shard_size, num_pairs - first)
        zs, ys, xs = [], [], []
        for b in range(first, end, batch_size):
            z, y = pair_batch(seed, range(b, min(b + batch_size, end)), geometry)
            x = heun_sample(denoiser, z.to(device), y.to(device), settings)
            zs.append(z.numpy()), ys.append(y.numpy()), xs.append(x.cpu().numpy())
            if progress:
                done = b + len(y)
                progress(done, num_pairs, (done - start_count) / max(time.perf_counter() - start_time, 1e-9))
        writer.append(np.concatenate(zs), np.concatenate(ys), np.concatenate(xs))
    return Path(out)
