import torch

from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

G = Geometry(8, 1, 10)


def test_forward_shapes_and_block_features():
    model = DiT(StudentArch(3, 32, 4), G)
    z, y = torch.randn(5, 1, 8, 8), torch.arange(5)
    image, trace = model(z, y, return_features=True)
    features = trace.blocks
    assert image.shape == (5, 1, 8, 8)
    assert len(features) == 3 and all(f.shape == (5, 16, 32) for f in features)
    assert torch.equal(model.decode(features[-1], trace.c), image)
    assert torch.equal(model(z, y), image)


def test_adaln_zero_initialisation_gives_zero_output_and_identity_blocks():
    model = DiT(StudentArch(2, 32, 4), G)
    z, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    image, trace = model(z, y, return_features=True)
    features = trace.blocks
    assert torch.count_nonzero(image) == 0  # final layer zeroed
    tokens = model.x_embedder(z) + model.pos_embed
    assert torch.allclose(features[0], tokens)  # gates are zero: blocks start as identity
    assert not model.pos_embed.requires_grad


def test_label_dropout_uses_the_null_class_only_in_training():
    model = DiT(StudentArch(1, 16, 2), G, label_dropout=0.5)
    y = torch.zeros(4000, dtype=torch.int64)
    dropped = model.y_embedder.token_drop(y, torch.Generator().manual_seed(0))
    assert 0.45 < (dropped == 10).float().mean() < 0.55
    emb = model.y_embedder(y[:3], train=False)
    assert torch.equal(emb, model.y_embedder.embedding_table.weight[[0, 0, 0]])


def test_guidance_formula_against_two_separate_passes():
    torch.manual_seed(0)
    model = DiT(StudentArch(2, 32, 4), G).eval()
    for p in model.parameters():  # leave the zero init so outputs depend on the label
        p.data.add_(0.05 * torch.randn_like(p))
    z, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    cond, uncond = model(z, y), model(z, torch.full_like(y, 10))
    assert not torch.allclose(cond, uncond)
    assert torch.allclose(model.forward_with_cfg(z, y, 1.5), uncond + 1.5 * (cond - uncond), atol=1e-5)
    assert torch.allclose(model.forward_with_cfg(z, y, 1.0), cond)


def test_sincos_position_embedding_is_distinct_per_patch():
    model = DiT(StudentArch(1, 32, 4), Geometry(16, 3, 10))
    pos = model.pos_embed[0]
    assert pos.shape == (64, 32)
    assert torch.cdist(pos, pos).add(torch.eye(64) * 1e3).min() > 0.1
