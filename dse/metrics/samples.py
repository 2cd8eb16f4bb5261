"""Owns sampling a trained student: seeded noise and labels in, guided one-step images out."""

from __future__ import annotations

import numpy as np
import torch

from dse.data.datasets import to_uint8


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
