import numpy as np
import torch
from PIL import Image

from dse.metrics.samples import sample_grid, save_sample_grid
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch


def _model(seed=0):
    torch.manual_seed(seed)
    model = DiT(StudentArch(1, 16, 2), Geometry(8, 1, 4))
    for p in model.parameters():  # DiT zeroes its output layer at init; give it an output that varies
        torch.nn.init.normal_(p, std=0.2) if p.requires_grad else None
    return model.eval()


def test_grid_has_one_row_per_class_and_shares_the_noise_of_each_column():
    model = _model()
    grid = sample_grid(model, 3, guidance=1.5, seed=7)
    assert grid.shape == (4 * 8, 3 * 8, 1) and grid.dtype == np.uint8
    cell = lambda k, j: grid[8 * k : 8 * k + 8, 8 * j : 8 * j + 8]  # noqa: E731
    # column j is the noise of seed 7 + j: a grid of seed 8 is this grid shifted left by one column
    shifted = sample_grid(model, 2, guidance=1.5, seed=8)
    assert np.array_equal(shifted, grid[:, 8:])
    # row k is class k: the same cell computed directly
    z = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(7 + 2))[None]
    direct = model.forward_with_cfg(z, torch.tensor([3]), 1.5)
    expected = np.clip(np.rint((direct[0, 0].detach().numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(cell(3, 2)[..., 0], expected)
    assert not np.array_equal(cell(0, 0), cell(1, 0))  # the label changes the image


def test_png_is_scaled_to_a_visible_cell_and_reads_back(tmp_path):
    grid = np.random.default_rng(0).integers(0, 256, (16, 24, 1), dtype=np.uint8)
    path = save_sample_grid(grid, tmp_path / "g.png", cell=8)
    image = np.asarray(Image.open(path))
    assert image.shape == (64, 96)  # 8-pixel cells scaled x4 to 32
    assert np.array_equal(image[::4, ::4], grid[..., 0])
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.asarray(Image.open(save_sample_grid(rgb, tmp_path / "c.png", cell=32))).shape == (32, 32, 3)
