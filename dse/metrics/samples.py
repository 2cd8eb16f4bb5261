"""Owns sampling a trained student: seeded noise and labels in, guided one-step images out (as arrays
for FID, or as the PNG grid of one row per class shown in the report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dse.data.datasets import to_uint8
from dse.data.grid import save_png


@torch.no_grad()
def sample_images(
    model: torch.nn.Module, num: int, *, guidance: float = 1.5, seed: int = 0, batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """`num` images with uniformly random labels, guidance `s` (x_uncond + s (x_cond - x_uncond)).

    Returns (uint8 NHWC images, int64 labels); the same seed gives the same images.
    """
    model.eval()
    g = model.geometry
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(g.num_classes, (num,), generator=gen)
    out = []
    for start in range(0, num, batch_size):
        y = labels[start : start + batch_size]
        z = torch.randn((len(y), g.channels, g.image_size, g.image_size), generator=gen)
        x = model.forward_with_cfg(z.to(device), y.to(device), guidance)  # (b, C, H, W)
        out.append(to_uint8(x.float().cpu().numpy()))
    return np.concatenate(out), labels.numpy()


@torch.no_grad()
def sample_grid(
    model: torch.nn.Module, per_class: int = 10, *, guidance: float = 1.5, seed: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """A uint8 (K*H, per_class*W, C) grid: row k holds class k, column j the noise of seed `seed + j`.

    Every row shares the same column noises, so the grid shows what the label alone changes; the same
    model and seed give the same grid.
    """
    model.eval()
    g = model.geometry
    shape = (g.channels, g.image_size, g.image_size)
    z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + j)) for j in range(per_class)])
    z = z.repeat(g.num_classes, 1, 1, 1)  # (K * per_class, C, H, W), column j = noise j
    y = torch.arange(g.num_classes).repeat_interleave(per_class)  # (K * per_class,)
    x = model.forward_with_cfg(z.to(device), y.to(device), guidance)
    images = to_uint8(x.float().cpu().numpy())  # (K * per_class, H, W, C)
    h, w, c = images.shape[1:]
    return images.reshape(g.num_classes, per_class, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        g.num_classes * h, per_class * w, c
    )


def save_sample_grid(grid: np.ndarray, path: str | Path, *, min_cell: int = 32, cell: int | None = None) -> Path:
    """Write a uint8 (H, W, C) grid as PNG (`dse.data.grid.save_png`), scaled up (nearest) so that a cell
    of side `cell` is at least `min_cell` pixels (tiny 8x8 samples stay visible in a report)."""
    scale = max(1, -(-min_cell // cell)) if cell else 1
    return save_png(path, np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1))
