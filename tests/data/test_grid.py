"""Tests of dse.data.grid: tiles laid out with a visible gap of background, and PNG writing."""

import numpy as np
import pytest
from PIL import Image

from dse.data.grid import image_grid, save_png, spaced_grid


def _tiles(n: int, h: int = 3, w: int = 2, c: int = 1, start: int = 10) -> np.ndarray:
    """n tiles, tile k filled with the value start + k (never the white background)."""
    return np.stack([np.full((h, w, c), start + k, np.uint8) for k in range(n)])


def test_image_grid_separates_tiles_by_the_gap():
    pic = image_grid([_tiles(3), _tiles(3, start=20)], scale=2, gap=3)
    # 2 rows of 3x2 tiles at scale 2 (6x4) with 3 pixels before, between and after
    assert pic.shape == (3 + 2 * (6 + 3), 3 + 3 * (4 + 3), 1)
    assert (pic[:3] == 255).all() and (pic[:, :3] == 255).all()  # the border
    assert (pic[3:9, 3:7] == 10).all() and (pic[3:9, 10:14] == 11).all()  # tile (0,0), tile (0,1)
    assert (pic[3:9, 7:10] == 255).all()  # the gap between them
    assert (pic[9:12] == 255).all() and (pic[12:18, 3:7] == 20).all()  # between rows, then tile (1,0)


def test_gap_zero_is_edge_to_edge():
    pic = image_grid([_tiles(2)], gap=0)
    assert pic.shape == (3, 4, 1) and set(np.unique(pic)) == {10, 11}


def test_spaced_grid_puts_every_cell_of_an_edge_to_edge_picture_apart():
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 200, (2 * 8, 3 * 8, 1), dtype=np.uint8)  # 2 x 3 cells of 8x8, like a sample grid
    pic = spaced_grid(flat, 8, scale=4, gap=2)
    side = 8 * 4
    assert pic.shape == (2 + 2 * (side + 2), 2 + 3 * (side + 2), 1)
    for k in range(2):
        for j in range(3):
            top, left = 2 + k * (side + 2), 2 + j * (side + 2)
            cell = pic[top : top + side, left : left + side]
            expected = flat[8 * k : 8 * k + 8, 8 * j : 8 * j + 8].repeat(4, 0).repeat(4, 1)
            assert np.array_equal(cell, expected)
            assert (pic[top : top + side, left + side : left + side + 2] == 255).all()  # the gap to its right


def test_spaced_grid_rejects_a_picture_that_is_no_grid_of_cells():
    with pytest.raises(ValueError, match="no grid"):
        spaced_grid(np.zeros((10, 16, 1), np.uint8), 8)
    with pytest.raises(ValueError, match="gap"):
        image_grid([_tiles(1)], gap=-1)


def test_save_png_roundtrip(tmp_path):
    pic = image_grid([_tiles(2, c=3)], scale=2)
    path = save_png(tmp_path / "g.png", pic)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), pic)
    grey = image_grid([_tiles(2)])
    assert np.array_equal(np.asarray(Image.open(save_png(tmp_path / "k.png", grey)))[..., None], grey)
