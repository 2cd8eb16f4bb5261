"""Owns sampling a trained student: seeded noise and labels in, guided one-step images out (as arrays
for FID, or as the PNG grid of one row per class shown in the report), and the seeds of evaluation's
random generators (`eval_generator_seed`).

Evaluation noise lives in its own seed domain: a generator's seed is 63 bits of
sha256("dse-eval:{eval.seed}:{stream}"), never a small integer like the teacher pairs' seeds
(`dse.teacher.generate.pair_noise`: seed * 1_000_000_007 + index), so the noise a student is measured
on is never the noise of a pair it was trained on, not even shifted by a few draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dse.data.datasets import to_uint8
from dse.data.grid import save_png, spaced_grid
from dse.types import Geometry

EVAL_SEED_DOMAIN = "dse-eval"  # the prefix of every evaluation generator's hashed seed


def eval_generator_seed(seed: int, column: int | None = None) -> int:
    """The seed of an evaluation generator for `eval.seed = seed`: the FID samples' one (`column` None)
    or the noise of sample-grid column `column`; 63 bits of sha256("dse-eval:{seed}:{stream}")."""
    stream = "images" if column is None else f"grid-column-{column}"
    digest = hashlib.sha256(f"{EVAL_SEED_DOMAIN}:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # < 2**63: what torch.Generator.manual_seed takes


def eval_noise(
    geometry: Geometry, num: int, *, seed: int = 0, batch_size: int = 500
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The noise and labels `sample_images` feeds the student, batch by batch: (z (b, C, H, W), y (b,) int64),
    labels uniform over the classes, all from one generator seeded with `eval_generator_seed(seed)`."""
    gen = torch.Generator().manual_seed(eval_generator_seed(seed))
    labels = torch.randint(geometry.num_classes, (num,), generator=gen)
    for start in range(0, num, batch_size):
        y = labels[start : start + batch_size]
        yield torch.randn((len(y), geometry.channels, geometry.image_size, geometry.image_size), generator=gen), y


@torch.no_grad()
def sample_images(
    model: torch.nn.Module, num: int, *, guidance: float = 1.5, seed: int = 0, batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """`num` images with uniformly random labels, guidance `s` (x_uncond + s (x_cond - x_uncond)).

    Returns (uint8 NHWC images, int64 labels: the class each image was generated for); the noise and
    labels are `eval_noise(model.geometry, num, seed=seed)`, so the same seed gives the same images.
    """
    model.eval()
    out, labels = [], []
    for z, y in eval_noise(model.geometry, num, seed=seed, batch_size=batch_size):
        x = model.forward_with_cfg(z.to(device), y.to(device), guidance)  # (b, C, H, W)
        out.append(to_uint8(x.float().cpu().numpy()))
        labels.append(y.numpy())
    return np.concatenate(out), np.concatenate(labels)


@torch.no_grad()
def sample_grid(
    model: torch.nn.Module, per_class: int = 10, *, guidance: float = 1.5, seed: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """A uint8 (K*H, per_class*W, C) grid: row k holds class k, column j the noise of the generator seeded
    with `eval_generator_seed(seed, j)`.

    Every row shares the same column noises, so the grid shows what the label alone changes; column j
    does not depend on `per_class`, and the same model and seed give the same grid.
    """
    model.eval()
    g = model.geometry
    shape = (g.channels, g.image_size, g.image_size)
    gens = [torch.Generator().manual_seed(eval_generator_seed(seed, j)) for j in range(per_class)]
    z = torch.stack([torch.randn(shape, generator=gen) for gen in gens])  # (per_class, C, H, W)
    z = z.repeat(g.num_classes, 1, 1, 1)  # (K * per_class, C, H, W), column j = noise j
    y = torch.arange(g.num_classes).repeat_interleave(per_class)  # (K * per_class,)
    x = model.forward_with_cfg(z.to(device), y.to(device), guidance)
    images = to_uint8(x.float().cpu().numpy())  # (K * per_class, H, W, C)
    h, w, c = images.shape[1:]
    return images.reshape(g.num_classes, per_class, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        g.num_classes * h, per_class * w, c
    )


def save_sample_grid(grid: np.ndarray, path: str | Path, *, min_cell: int = 32, cell: int | None = None) -> Path:
    """Write a uint8 (H, W, C) grid of `cell`-pixel images drawn edge to edge as PNG
    (`dse.data.grid.save_png`): each image scaled up (nearest) to at least `min_cell` pixels, so tiny
    8x8 samples stay visible in a report, with a gap of background between images
    (`dse.data.grid.spaced_grid`). Without `cell`, the grid is written as it is."""
    if not cell:
        return save_png(path, grid)
    return save_png(path, spaced_grid(grid, cell, scale=max(1, -(-min_cell // cell))))
