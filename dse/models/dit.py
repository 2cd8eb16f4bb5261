"""Owns the student network: a one-step class-conditional DiT (Peebles & Xie 2023) that maps noise
and a label to an image. The teaching assistant of the TA setup is the same class, bigger.

Written after DiT's models.py: patch embedding, fixed 2-D sin-cos position embedding, timestep and
label embedders, adaLN-Zero blocks, and a final adaLN layer, with DiT's initialisation. The student
is one-step, so its timestep embedder is fed a constant; it is kept so that parameter counts match
DiT's structure (`dse.sizing.count_params` gives the same number by formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dse.sizing import FREQUENCY_EMBEDDING_SIZE
from dse.teacher.edm import SIGMA_MAX
from dse.types import Geometry, StudentArch

# The single diffusion time the one-step student is conditioned on (EDM's sigma_max, paper App. B.3).
STUDENT_TIME = SIGMA_MAX


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; x (B, T, w), shift and scale (B, w)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#               Embedding layers for timesteps, class labels, patches          #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal frequencies, then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """Sinusoidal embeddings (B,) -> (B, dim), as in GLIDE / DiT."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))  # (B, w)


class LabelEmbedder(nn.Module):
    """Embeds class labels; row `num_classes` is the null class used for classifier-free guidance.

    In training, labels are dropped to the null class with probability `dropout_prob`.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    @torch.compiler.disable  # a drawn generator does not go into a compiled graph (train.compile)
    def token_drop(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            labels = self.token_drop(labels, generator)
        return self.embedding_table(labels)  # (B, w)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, T, w) with T = (H / p)^2."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, w)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's Attention, as DiT uses)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, T, w / h)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    """Two linear layers with tanh-approximated GELU (DiT's choice)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (B, T, w)


class FinalLayer(nn.Module):
    """adaLN, then a linear map from tokens to patches of pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p * p * C)


@dataclass
class Trace:
    """What a forward pass went through: each block's output (B, T, w) and the conditioning c (B, w),
    so a setup can decode an inner block with `DiT.decode(blocks[i], c)` (MI1) or match it (TA)."""

    blocks: list[torch.Tensor]
    c: torch.Tensor


class DiT(nn.Module):
    """One-step student: `x_hat = DiT(z, y)` maps noise z (B, C, H, W) and labels y (B,) to an image."""

    def __init__(self, arch: StudentArch, geometry: Geometry, label_dropout: float = 0.1):
        super().__init__()
        if arch.width % arch.heads or arch.width % 4:
            raise ValueError(f"width ({arch.width}) must be a multiple of 4 and of heads ({arch.heads})")
        if geometry.image_size % geometry.patch_size:
            raise ValueError(f"patch size {geometry.patch_size} must divide image size {geometry.image_size}")
        self.arch, self.geometry = arch, geometry
        w, p, c = arch.width, geometry.patch_size, geometry.channels
        self.in_channels = self.out_channels = c
        self.patch_size = p
        self.num_classes = geometry.num_classes

        self.x_embedder = PatchEmbed(p, c, w)
        self.t_embedder = TimestepEmbedder(w)
        self.y_embedder = LabelEmbedder(geometry.num_classes, w, label_dropout)
        # Fixed sin-cos embedding (counted as a parameter, as in DiT, but never trained).
        self.pos_embed = nn.Parameter(torch.zeros(1, geometry.num_patches, w), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(w, arch.heads, arch.mlp_ratio) for _ in range(arch.depth)])
        self.final_layer = FinalLayer(w, p, c)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, sin-cos positions, zeroed adaLN and output layers."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid_size = self.geometry.image_size // self.patch_size
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))

        # Patch embedding like nn.Linear (instead of nn.Conv2d).
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # Zero-out adaLN modulation layers in DiT blocks and the output layers.
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p * p * C) -> (B, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def condition(
        self, y: torch.Tensor, train: bool = False, generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The conditioning vector c (B, w): time embedding plus label embedding. The one-step
        student leaves `t` out (a constant, STUDENT_TIME); a denoiser built on DiT passes its noise level."""
        if t is None:
            t = torch.full((y.shape[0],), STUDENT_TIME, device=y.device)
        return self.t_embedder(t) + self.y_embedder(y, train, generator)

    def decode(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, w) -> image (B, C, H, W) through the final layer (MI1 decodes inner blocks too)."""
        return self.unpatchify(self.final_layer(tokens, c))

    def forward(
        self, z: torch.Tensor, y: torch.Tensor, *, return_features: bool = False,
        generator: torch.Generator | None = None, t: torch.Tensor | None = None,
    ):
        """z (B, C, H, W) noise, y (B,) labels -> image (B, C, H, W) [, Trace of the blocks' outputs].

        Labels are dropped to the null class with probability `label_dropout` in training mode.
        `t` (B,) is the time fed to the timestep embedder; None for the one-step student.
        """
        x = self.x_embedder(z) + self.pos_embed  # (B, T, w)
        c = self.condition(y, self.training, generator, t)  # (B, w)
        features = []
        for block in self.blocks:
            x = block(x, c)
            if return_features:
                features.append(x)
        image = self.decode(x, c)
        return (image, Trace(features, c)) if return_features else image

    @torch.no_grad()
    def forward_with_cfg(self, z: torch.Tensor, y: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance: x = x_uncond + s * (x_cond - x_uncond), in one batched pass."""
        if guidance == 1.0:
            return self(z, y)
        null = torch.full_like(y, self.num_classes)
        out = self(torch.cat([z, z]), torch.cat([y, null]))
        x_cond, x_uncond = out.chunk(2)
        return x_uncond + guidance * (x_cond - x_uncond)


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################
# https://github.com/facebookresearch/mae/blob/main/util/pos_embed.py (as used by DiT)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid_size * grid_size, embed_dim) fixed 2-D sin-cos embedding."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim)."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def count_module_params(model: nn.Module) -> int:
    """The parameter-count convention of ARCHITECTURE.md: every parameter, frozen ones included."""
    return sum(p.numel() for p in model.parameters())
