"""Owns the image losses a setup can regress with: L(target, prediction) -> scalar, mean over the batch.

`l1` and `l2` are plain functions; `lpips` is a frozen network (`LPIPSLoss`) built on a device. All
three are registered in `LOSSES`, the one registry `make_loss` reads. Images are (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dse.assets.lpips import lpips_linear_state_dict, lpips_trunk_state_dict

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels; images (B, C, H, W)."""
    return (pred - target).abs().mean()


def l2(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels; images (B, C, H, W)."""
    return (pred - target).square().mean()


class LPIPSLoss(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018) with a frozen AlexNet or VGG16 trunk, as a training loss.

    Both images are resized bilinearly to `size` x `size` first (224 as GET does; None keeps their
    size) and grey images are repeated to RGB. Gradients flow to the inputs, never to the network.
    The weights come from `dse.assets.lpips` (`self.trunk_source` says from where).
    """

    def __init__(self, net: str = "alex", size: int | None = 224) -> None:
        super().__init__()
        import lpips

        trunk, self.trunk_source = lpips_trunk_state_dict(net)
        linear, _ = lpips_linear_state_dict(net)
        with warnings.catch_warnings():  # lpips asks torchvision for `pretrained=False`, now deprecated
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand: lpips must not download the trunk; pretrained=False: we load its linear layers
            self.lpips = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        # lpips splits torchvision's `features` into slices keeping the layer names: slice2.3 = features.3
        self.lpips.net.load_state_dict(
            {name: trunk[f"features.{name.split('.', 1)[1]}"] for name in self.lpips.net.state_dict()}
        )
        for i, lin in enumerate(self.lpips.lins):
            lin.load_state_dict({"model.1.weight": linear[f"lin{i}.model.1.weight"]})
        self.lpips.requires_grad_(False)
        self.net_name, self.size = net, size
        self.train(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        """The network stays in eval mode (no dropout) whatever the mode of the model around it."""
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance over the batch; images (B, C, H, W) in [-1, 1], C = 1 or 3."""
        return self.lpips(self._prepare(pred), self._prepare(target), normalize=False).mean()

    def per_image(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The LPIPS distance of each pair (B,), whose mean is `forward`: a cohort scores all its
        members' images in one call (`dse.distill.cohort`); images (B, C, H, W) in [-1, 1]."""
        return self.lpips(self._prepare(pred), self._prepare(target), normalize=False).flatten()  # (B,)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, size={self.size}, trunk={self.trunk_source}"


def _plain(loss: Loss) -> Callable[..., Loss]:
    """The builder of a loss that needs no construction: `loss` itself, whatever the device."""
    return lambda device="cpu", **_: loss


def _lpips(device: torch.device | str = "cpu", *, lpips_net: str = "alex", lpips_size: int | None = 224) -> Loss:
    return LPIPSLoss(lpips_net, lpips_size).to(device)


# Every loss, by the name a search space uses (`loss = "l2"`): a builder
# (device, *, lpips_net, lpips_size) -> Loss. dse.config.KNOWN_LOSSES names the same (a test checks).
LOSSES: dict[str, Callable[..., Loss]] = {"l1": _plain(l1), "l2": _plain(l2), "lpips": _lpips}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def make_loss(
    name: str, device: torch.device | str = "cpu", *, lpips_net: str = "alex", lpips_size: int | None = 224
) -> Loss:
    """The loss called `name`; for "lpips", a frozen `LPIPSLoss(lpips_net, lpips_size)` on `device`."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")
    return LOSSES[name](device, lpips_net=lpips_net, lpips_size=lpips_size)


def get_loss(name: str) -> Loss:
    """The plain-function loss called `name` (l1 or l2); build LPIPS with `make_loss`."""
    if name not in LOSSES or name == "lpips":
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)} (build 'lpips' with make_loss)")
    return make_loss(name)
