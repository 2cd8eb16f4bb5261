"""Tests for dse.metrics.samples: the sample grid, the FID samples' noise and labels, and the evaluation
seed domain (evaluation noise never coincides with the noise of the teacher pairs, not even shifted)."""

import numpy as np
import torch
from PIL import Image

from dse.data.datasets import to_uint8
from dse.data.grid import BACKGROUND, GAP
from dse.metrics.samples import eval_generator_seed, eval_noise, sample_grid, sample_images, save_sample_grid
from dse.models.dit import DiT
from dse.teacher.generate import pair_batch, pair_noise
from dse.types import Geometry, StudentArch

DIGITS = Geometry(8, 1, 10)


def _model(seed=0):
    torch.manual_seed(seed)
    model = DiT(StudentArch(1, 16, 2), Geometry(8, 1, 4))
    for p in model.parameters():  # DiT zeroes its output layer at init; give it an output that varies
        torch.nn.init.normal_(p, std=0.2) if p.requires_grad else None
    return model.eval()


class _NoiseOut(torch.nn.Module):
    """A stand-in student whose image is its noise (scaled into [-1, 1]): shows what noise it was given."""

    def __init__(self, geometry):
        super().__init__()
        self.geometry = geometry

    def forward_with_cfg(self, z, y, guidance):
        return (z / 4).clamp(-1, 1)


def test_grid_has_one_row_per_class_and_shares_the_noise_of_each_column():
    model = _model()
    grid = sample_grid(model, 3, guidance=1.5, seed=7)
    assert grid.shape == (4 * 8, 3 * 8, 1) and grid.dtype == np.uint8
    cell = lambda k, j: grid[8 * k : 8 * k + 8, 8 * j : 8 * j + 8]  # noqa: E731
    # column j's noise does not depend on how many columns there are
    assert np.array_equal(sample_grid(model, 2, guidance=1.5, seed=7), grid[:, :16])
    # row k is class k, column j the generator seeded with eval_generator_seed(7, j): the same cell computed directly
    z = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(eval_generator_seed(7, 2)))[None]
    direct = model.forward_with_cfg(z, torch.tensor([3]), 1.5)
    expected = np.clip(np.rint((direct[0, 0].detach().numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(cell(3, 2)[..., 0], expected)
    assert not np.array_equal(cell(0, 0), cell(1, 0))  # the label changes the image
    # the seeds are hashed, not seed + j: the grid of seed 8 is not this grid shifted by a column
    assert not np.array_equal(sample_grid(model, 2, guidance=1.5, seed=8), grid[:, 8:])


def test_png_is_scaled_to_a_visible_cell_and_reads_back(tmp_path):
    grid = np.random.default_rng(0).integers(0, 256, (16, 24, 1), dtype=np.uint8)
    path = save_sample_grid(grid, tmp_path / "g.png", cell=8)
    image = np.asarray(Image.open(path))
    # 2 x 3 cells of 8 pixels, each scaled x4 to 32, with a GAP-pixel white line between and around them
    assert image.shape == (2 * 32 + 3 * GAP, 3 * 32 + 4 * GAP)
    for i in range(2):
        for j in range(3):
            top, left = GAP + i * (32 + GAP), GAP + j * (32 + GAP)
            assert np.array_equal(image[top:top + 32:4, left:left + 32:4], grid[8 * i:8 * i + 8, 8 * j:8 * j + 8, 0])
    assert (image[:GAP] == BACKGROUND).all() and (image[:, 32 + GAP:32 + 2 * GAP] == BACKGROUND).all()
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.asarray(Image.open(save_sample_grid(rgb, tmp_path / "c.png", cell=32))).shape == (32 + 2 * GAP, 32 + 2 * GAP, 3)


def test_sample_images_feeds_the_student_eval_noise_and_returns_its_labels():
    images, labels = sample_images(_NoiseOut(DIGITS), 25, seed=3, batch_size=10)
    batches = list(eval_noise(DIGITS, 25, seed=3, batch_size=10))
    assert [len(y) for _, y in batches] == [10, 10, 5]
    z = torch.cat([z for z, _ in batches])
    assert np.array_equal(images, to_uint8((z / 4).clamp(-1, 1).numpy()))
    assert np.array_equal(labels, torch.cat([y for _, y in batches]).numpy())
    assert labels.dtype == np.int64 and set(labels) <= set(range(10)) and len(set(labels)) > 3
    again, _ = sample_images(_NoiseOut(DIGITS), 25, seed=3, batch_size=25)  # the batch size changes nothing
    assert np.array_equal(again, images)
    other, _ = sample_images(_NoiseOut(DIGITS), 25, seed=4)
    assert not np.array_equal(other, images)


def _pair_seed(teacher_seed, index):
    """The seed of pair `index`'s generator, as dse.teacher.generate.pair_noise computes it."""
    return (teacher_seed * 1_000_000_007 + index) % (2**63)


def test_the_pair_seed_formula_here_is_pair_noises():
    for teacher_seed, index in [(0, 0), (1, 5), (3, 99_999)]:
        gen = torch.Generator().manual_seed(_pair_seed(teacher_seed, index))
        label = int(torch.randint(10, (1,), generator=gen))
        z, y = pair_noise(teacher_seed, index, (1, 8, 8), 10)
        assert y == label and torch.equal(z, torch.randn((1, 8, 8), generator=gen))


def test_no_evaluation_generator_seed_is_a_pair_generator_seed():
    pairs = {_pair_seed(s, i) for s in range(4) for i in range(100_000)}
    evaluation = {eval_generator_seed(e, column) for e in range(10) for column in [None, *range(64)]}
    assert len(evaluation) == 10 * 65  # every stream its own seed
    assert not pairs & evaluation
    # what the test guards against: before, the grid's column j of eval.seed e used seed e + j, pair e + j's
    assert pairs & {e + j for e in range(10) for j in range(64)}


def _windows(values, width=4):
    """Every run of `width` consecutive values of each row of `values` (n, m), as tuples of float32 bits."""
    bits = np.ascontiguousarray(values, np.float32).view(np.int32)
    return {tuple(row[k : k + width]) for row in bits for k in range(bits.shape[1] - width + 1)}


def test_evaluation_noise_shares_no_run_of_values_with_the_pairs_noise():
    pair_z = torch.cat([pair_batch(s, range(500), DIGITS)[0] for s in range(2)]).flatten(1)  # (1000, 64)
    pair_runs = _windows(pair_z.numpy())
    for e in range(3):
        z, _ = next(eval_noise(DIGITS, 64, seed=e))  # the first eval noise tensor: (64, 1, 8, 8)
        gens = [torch.Generator().manual_seed(eval_generator_seed(e, j)) for j in range(10)]
        grid_z = torch.stack([torch.randn((1, 8, 8), generator=gen) for gen in gens])  # the grid's columns
        eval_z = torch.cat([z, grid_z]).flatten(1)  # every image's noise as a row of 64 values
        assert not _windows(eval_z.numpy()) & pair_runs
        assert not torch.equal(z[0, 0], pair_z[0].reshape(8, 8))
    # the check bites: the old grid noise of column 3 (torch's generator seeded with 3) is pair 3's noise
    # shifted by one value (the pair's label draw), so it shares runs with the pairs
    old = torch.randn((1, 64), generator=torch.Generator().manual_seed(3))
    assert _windows(old.numpy()) & pair_runs
