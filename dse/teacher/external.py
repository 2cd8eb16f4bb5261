"""Owns the `external` teacher: a denoiser D(x, sigma, labels) that the user brings, as a
TorchScript file or as a `package.module:function` that builds one, so EDM's published networks or
anything else can teach.

Security: an external teacher runs the user's code by design. A TorchScript file is a program and
`module:function` imports and calls Python code; both are models the user chose to run, like any
script they start. Everything dse itself reads back (teacher checkpoints, pair shards) is loaded
with `torch.load(..., weights_only=True)` and runs no code.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dse.errors import DseError, one_line
from dse.teacher.edm import SIGMA_MAX, Denoiser

# `package.module:function` (the function may be a dotted attribute path, e.g. `mod:Class.build`).
_ENTRY_POINT = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


class ExternalDenoiser:
    """A user's denoiser as a Denoiser: called without gradients, with x and sigma cast to the
    dtype of its floating-point parameters (if it has any) and the output cast back to x's dtype."""

    def __init__(self, fn: Callable[..., Any], source: str):
        self.fn, self.source = fn, source
        self.dtype = _parameter_dtype(fn)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma (B,), labels (B,) -> denoised (B, C, H, W)."""
        dtype = self.dtype or x.dtype
        out = self.fn(x.to(dtype), sigma.to(dtype), labels.to(torch.int64))
        if not isinstance(out, torch.Tensor):
            raise DseError(f"external teacher {self.source!r} returned {type(out).__name__}, not a tensor")
        return out.to(x.dtype)


def _parameter_dtype(fn: Callable[..., Any]) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter; None for anything else."""
    if isinstance(fn, nn.Module):
        for p in fn.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def load_external_teacher(
    source: str, device: str = "cpu", shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
) -> Denoiser:
    """The user's denoiser from `source`: a TorchScript file, called as module(x, sigma, labels), or
    `package.module:function`, imported and called with no arguments (or `device=device` if it
    takes one) to build a callable D(x, sigma, labels).

    If `shape` (C, H, W) is given, the denoiser is probed on a tiny batch of that shape (labels below
    `num_classes`, if given) and must return finite values of the same shape. Every problem a user
    can cause is a DseError. This runs the user's code (see the module docstring).
    """
    path = Path(source)
    if path.is_file():
        fn = _load_torchscript(path, device)
    elif match := _ENTRY_POINT.match(source):
        fn = _build_from_entry_point(match["module"], match["attr"], device)
    elif path.suffix or "/" in source or "\\" in source:
        raise DseError(f"external teacher file {source} not found")
    else:
        raise DseError(
            f"external teacher {source!r} is neither a TorchScript file nor `package.module:function`"
        )
    if isinstance(fn, nn.Module):
        fn.eval()
    denoiser = ExternalDenoiser(fn, source)
    if shape is not None:
        _probe(denoiser, source, shape, num_classes, device)
    return denoiser


def _load_torchscript(path: Path, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; it is the format asked for
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise DseError(
            f"{path} is not a TorchScript file ({one_line(e)}); "
            "save one with torch.jit.save(torch.jit.script(module), path)"
        ) from None


def _build_from_entry_point(module_name: str, attr: str, device: str) -> Callable[..., Any]:
    """Import `module_name`, look up `attr` (dotted), call it (with `device=` if it takes one) and
    return the denoiser it builds."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DseError(
            f"cannot import module {module_name!r} for the external teacher ({e}); is it on PYTHONPATH?"
        ) from e
    try:
        factory = reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise DseError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise DseError(f"{module_name}:{attr} is a {type(factory).__name__}, not a function that builds a denoiser")
    try:
        denoiser = factory(device=device) if _accepts_device(factory) else factory()
    except DseError:
        raise
    except Exception as e:  # the user's code may raise anything; say where it came from
        raise DseError(f"{module_name}:{attr}() failed while building the external teacher: {one_line(e)}") from None
    if not callable(denoiser):
        raise DseError(
            f"{module_name}:{attr}() returned a {type(denoiser).__name__}, not a callable D(x, sigma, labels)"
        )
    return denoiser


def _accepts_device(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "device" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _probe(
    denoiser: ExternalDenoiser, source: str, shape: tuple[int, int, int], num_classes: int | None, device: str
) -> None:
    """Call the denoiser on two float64 images (as the Heun sampler does) at a high and a low noise
    level; the output must be finite and shaped like the input."""
    x = torch.randn(2, *shape, dtype=torch.float64, device=device)  # (2, C, H, W)
    sigma = torch.tensor([SIGMA_MAX, 0.5], dtype=torch.float64, device=device)  # (2,): the first level, a low one
    labels = torch.tensor([0, (num_classes or 1) - 1], dtype=torch.int64, device=device)  # (2,)
    try:
        out = denoiser(x, sigma, labels)
    except DseError:
        raise
    except Exception as e:  # the user's code may raise anything; say where it came from
        raise DseError(f"external teacher {source!r} failed on a probe batch of shape {tuple(x.shape)}: {one_line(e)}") from None
    if out.shape != x.shape:
        raise DseError(
            f"external teacher {source!r} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
            "a denoiser must return an image of its input's shape"
        )
    if not torch.isfinite(out).all():
        raise DseError(f"external teacher {source!r} returned NaN or infinite values on a probe batch")
