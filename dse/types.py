"""Owns the value types every stage passes: `Geometry` (what a student generates) and `StudentArch`
(a DiT's depth, width and heads); plain frozen dataclasses with no dependencies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """What the student generates: square images of `channels` x `image_size`^2, `num_classes` labels."""

    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    patch_size: int = 2

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class StudentArch:
    """A DiT student: `depth` blocks of width `width` with `heads` attention heads."""

    depth: int
    width: int
    heads: int
    mlp_ratio: float = 4.0

    @property
    def name(self) -> str:
        return f"d{self.depth}-w{self.width}-h{self.heads}"
