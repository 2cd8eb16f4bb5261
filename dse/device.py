"""Owns device names: "auto" | "cpu" | "cuda" | "cuda:N" checked by format (no torch) and resolved to a
torch.device, or a DseError naming what is missing.

`check_device_name` is what a config validates (it needs no torch, so `dse --help` stays fast);
`resolve_device` is what code that runs on the device calls: it imports torch and refuses CUDA when
this machine has none, or an index it does not have.
"""

from __future__ import annotations

import re

from dse.errors import DseError

_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d{1,4}))?")


def check_device_name(name: object) -> str:
    """`name` if it is auto, cpu, cuda or cuda:N, else a DseError saying which names work."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise DseError(f"device {name!r}: use auto, cpu, cuda or cuda:N (e.g. --device cpu)")
    return name


def resolve_device(name: str):
    """The torch.device for `name`: "auto" is the first CUDA GPU when there is one, else the CPU; a
    CUDA device this machine does not have is a DseError that says what it has and what to use."""
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DseError(f"device {name!r}: this machine has no CUDA GPU (or torch was built without CUDA); "
                           "use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DseError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                           "use one of those, cuda or auto")
    return device
