"""Owns the empirical teacher: the exact denoiser of a finite, labelled image set, so the PF-ODE
teacher needs no trained weights.

For data points x_i of class y, the minimum-MSE denoiser at noise level sigma is the posterior mean
D(x, sigma, y) = sum_i softmax_i(-||x - x_i||^2 / (2 sigma^2)) x_i over the images of class y.
"""

from __future__ import annotations

import numpy as np
import torch


class EmpiricalDenoiser:
    """Exact class-conditional denoiser of `images` (N, C, H, W) in [-1, 1] with `labels` (N,)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, device="cpu"):
        self.images = torch.as_tensor(np.asarray(images), dtype=torch.float64, device=device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)
        self.flat = self.images.flatten(1)  # (N, D)
        self.sq_norms = self.flat.square().sum(1)  # (N,)
        self.classes = {int(c): torch.nonzero(self.labels == c).squeeze(1) for c in torch.unique(self.labels)}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,), labels (B,) -> posterior mean (B, C, H, W), float64."""
        x = x.to(torch.float64)
        out = torch.empty_like(x)
        for c in torch.unique(labels).tolist():
            rows = torch.nonzero(labels == c).squeeze(1)
            members = self.classes[int(c)]
            data = self.flat[members]  # (N_c, D)
            xs = x[rows].flatten(1)  # (b, D)
            d2 = xs.square().sum(1, keepdim=True) - 2 * xs @ data.T + self.sq_norms[members]  # (b, N_c)
            logits = -d2 / (2 * sigma[rows].to(torch.float64)[:, None] ** 2)
            weights = torch.softmax(logits, dim=1)  # posterior over data points
            out[rows] = (weights @ data).view_as(x[rows])
        return out
