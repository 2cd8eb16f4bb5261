"""Owns picture grids and PNG writing: uint8 NHWC image tiles arranged in rows, and the one function that
writes a uint8 picture as a PNG file (atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dse.fileio import atomic_writer


def image_grid(rows: list[np.ndarray], scale: int = 1, pad: int = 1, background: int = 255) -> np.ndarray:
    """Rows of uint8 NHWC tiles (each row (n_r, H, W, C)) -> one uint8 HWC picture, each tile
    enlarged `scale` times (nearest neighbour) and separated by `pad` pixels."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    _, h, w, c = rows[0].shape
    th, tw = h * scale + pad, w * scale + pad
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * th + pad, cols * tw + pad, c), background, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            out[pad + i * th : pad + i * th + h * scale, pad + j * tw : pad + j * tw + w * scale] = big
    return out


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    """Write a uint8 HWC picture (C = 1 or 3) as a PNG, atomically; returns its path."""
    from PIL import Image

    pic = picture[..., 0] if picture.shape[-1] == 1 else picture
    with atomic_writer(path) as f:
        Image.fromarray(pic).save(f, format="PNG")
    return Path(path)
