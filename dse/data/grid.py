"""Owns picture grids and PNG writing: uint8 NHWC image tiles arranged in rows with a gap of background
between them, and the one function that writes a uint8 picture as a PNG file (atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dse.fileio import atomic_writer

GAP = 2  # pixels of background between two cells of a sample grid (and around it), after scaling
BACKGROUND = 255  # the gap's grey level: white, which tells cells apart on dark digits and on photos alike


def image_grid(rows: list[np.ndarray], scale: int = 1, gap: int = 1, background: int = BACKGROUND) -> np.ndarray:
    """Rows of uint8 NHWC tiles (each row (n_r, H, W, C)) -> one uint8 HWC picture, each tile
    enlarged `scale` times (nearest neighbour), with `gap` pixels of `background` between tiles and
    around the picture (so cells never touch, however small the images are)."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    if scale < 1 or gap < 0:
        raise ValueError(f"image_grid needs scale >= 1 and gap >= 0, got scale {scale}, gap {gap}")
    _, h, w, c = rows[0].shape
    th, tw = h * scale + gap, w * scale + gap
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * th + gap, cols * tw + gap, c), background, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            out[gap + i * th : gap + i * th + h * scale, gap + j * tw : gap + j * tw + w * scale] = big
    return out


def spaced_grid(
    picture: np.ndarray, cell: int | tuple[int, int], *, scale: int = 1, gap: int = GAP, background: int = BACKGROUND
) -> np.ndarray:
    """A uint8 HWC picture of cells drawn edge to edge (cells of `cell` = side or (H, W) pixels) -> the
    same cells, each enlarged `scale` times, with `gap` pixels of `background` between them."""
    ch, cw = (cell, cell) if isinstance(cell, int) else cell
    if ch < 1 or cw < 1 or picture.ndim != 3 or picture.shape[0] % ch or picture.shape[1] % cw:
        raise ValueError(f"a picture of shape {picture.shape} is no grid of {ch}x{cw} cells")
    n_rows, n_cols, c = picture.shape[0] // ch, picture.shape[1] // cw, picture.shape[2]
    tiles = picture.reshape(n_rows, ch, n_cols, cw, c).transpose(0, 2, 1, 3, 4)  # (rows, cols, H, W, C)
    return image_grid(list(tiles), scale=scale, gap=gap, background=background)


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    """Write a uint8 HWC picture (C = 1 or 3) as a PNG, atomically; returns its path."""
    from PIL import Image

    pic = picture[..., 0] if picture.shape[-1] == 1 else picture
    with atomic_writer(path) as f:
        Image.fromarray(pic).save(f, format="PNG")
    return Path(path)
