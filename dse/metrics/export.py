"""Owns the ONNX deployment proxy: one graph per student that maps noise and labels to guided images
(guidance folded in), its export, its agreement with PyTorch, its onnxruntime session and CPU latency
(the `onnx` columns; `dse.metrics.runtimes` times the same graph as the `onnxruntime` latency runtime).

The paper times its students on an edge device (Jetson Orin); an ONNX graph run by onnxruntime is
the portable stand-in for such a deployment. The graph takes z (B, C, H, W) float32 and y (B,) int64
and returns `x_uncond + s * (x_cond - x_uncond)` with s baked in, computed by
`DiT.forward_with_cfg` itself (the formula lives there only), with a dynamic batch axis.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. With torch 2.14 the
torch.export-based exporter (`dynamo=True`) cannot keep the batch dynamic through
`forward_with_cfg`'s `chunk(2)` (its guard `(3B - 1) // B == 2` is unprovable, so the batch is
silently specialised to the example's) and takes ~6 s per export against ~0.3 s; both give graphs
that agree with PyTorch to ~1e-6 and run equally fast in onnxruntime.
"""

from __future__ import annotations

import copy
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dse.errors import DseError
from dse.fileio import atomic_write
from dse.layout import ONNX_FILE
from dse.metrics.latency import batch_sizes, check_counts

# Opset 17: the first with a fused LayerNormalization; read by every onnxruntime since 1.14.
DEFAULT_OPSET = 17
INPUT_NAMES = ("z", "y")
OUTPUT_NAME = "x"
_INSTALL = "pip install onnx onnxruntime"
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"


def onnx_module():
    try:
        import onnx
    except ImportError as exc:
        raise DseError(f"ONNX export needs the onnx package ({exc}); install it: {_INSTALL}") from None
    return onnx


def ort_module():
    try:
        import onnxruntime
    except ImportError as exc:
        raise DseError(f"ONNX timing needs the onnxruntime package ({exc}); install it: {_INSTALL}") from None
    return onnxruntime


class GuidedStudent(nn.Module):
    """A student with classifier-free guidance folded in: (z (B, C, H, W), y (B,)) -> guided image
    (B, C, H, W), one graph with the guidance scale s as a constant."""

    def __init__(self, student: nn.Module, guidance: float = 1.5):
        super().__init__()
        self.student = student
        self.guidance = float(guidance)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.student.forward_with_cfg(z, y, self.guidance)  # cond and uncond as one batch of 2B


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The student in float32 on the CPU, in eval mode (no label dropout), the caller's left as it is."""
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _example(geometry, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((batch_size, geometry.channels, geometry.image_size, geometry.image_size), generator=gen)
    y = torch.randint(geometry.num_classes, (batch_size,), generator=gen)
    return z, y


def export_onnx(
    model: nn.Module, path: str | Path, *, guidance: float = 1.5, batch_size: int = 128, opset: int = DEFAULT_OPSET,
) -> dict:
    """Export `model` (a DiT student) with guidance `guidance` folded in to an ONNX file at `path`,
    written atomically, with a dynamic batch axis (`batch_size` only shapes the example input).

    The file's metadata records the guidance, the geometry and the architecture. Returns
    `onnx_path`, `onnx_bytes`, `onnx_opset`, `onnx_exporter`, `onnx_guidance`, `onnx_export_s`.
    """
    onnx = onnx_module()
    path = Path(path)
    if path.is_dir():
        raise DseError(f"cannot write the ONNX file {path}: it is a folder; give a file name such as {path / ONNX_FILE}")
    start = time.perf_counter()
    student = _cpu_copy(model)
    graph = GuidedStudent(student, guidance).eval()
    example = _example(student.geometry, max(int(batch_size), 2), seed=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated (see the module docstring for why it is the one used),
        # and its tracer flags unpatchify's int(T ** 0.5), a constant of the geometry.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph, example, buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes={"z": {0: "batch"}, "y": {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    g, a = student.geometry, getattr(student, "arch", None)
    meta = {
        "dse_guidance": repr(float(guidance)), "dse_num_classes": str(g.num_classes),
        "dse_image_size": str(g.image_size), "dse_channels": str(g.channels), "dse_patch_size": str(g.patch_size),
    }
    if a is not None:
        meta.update(dse_depth=str(a.depth), dse_width=str(a.width), dse_heads=str(a.heads), dse_mlp_ratio=repr(a.mlp_ratio))
    onnx.helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise DseError(f"cannot write the ONNX file {path}: {exc.strerror or exc}; choose a writable path") from None
    return {
        "onnx_path": str(path), "onnx_bytes": len(data), "onnx_opset": int(opset), "onnx_exporter": "torchscript",
        "onnx_guidance": float(guidance), "onnx_export_s": time.perf_counter() - start,
    }


def onnx_session(path: str | Path, threads: int, providers: Sequence[str] = (CPU_PROVIDER,)):
    """An onnxruntime session of the ONNX file at `path` with `threads` intra-op threads (one inter-op,
    sequential execution, every graph optimisation) on the first of `providers` that works."""
    ort = ort_module()
    path = Path(path)
    if not path.is_file():
        raise DseError(f"no ONNX file at {path}: export the student first (dse.metrics.export.export_onnx)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
        raise DseError(f"cannot load the ONNX file {path} ({type(exc).__name__}: {exc}); export it again") from None


def onnx_runner(session, path: str | Path, seed: int = 0) -> Callable[[list[int]], None]:
    """A function that generates one guided image per entry of batches `sizes` with `session`: noise z
    (b, C, H, W) float32 and labels y (b,) int64 made per batch with numpy (the protocol of
    `dse.metrics.latency.measure_latency`); the outputs come back to the host, so a call is finished
    when it returns."""
    z_shape = session.get_inputs()[0].shape[1:]  # (C, H, W): static dims; the batch is symbolic
    if not all(isinstance(d, int) for d in z_shape):
        raise DseError(f"the ONNX file {path} has no fixed image shape ({z_shape}): export it with dse")
    num_classes = int(session.get_modelmeta().custom_metadata_map.get("dse_num_classes", "1"))
    rng = np.random.default_rng(seed)

    def run(sizes: list[int]) -> None:
        for b in sizes:
            z = rng.standard_normal((b, *z_shape), dtype=np.float32)  # (b, C, H, W)
            y = rng.integers(0, num_classes, b, dtype=np.int64)  # (b,)
            session.run([OUTPUT_NAME], {"z": z, "y": y})

    return run


def _threads(threads: int) -> int:
    """0 means one intra-op thread per CPU this process may use, set explicitly so the row is exact."""
    if threads > 0:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, guidance: float = 1.5, *, batch_size: int = 4, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| over the guided images of `batch_size` seeded inputs (CPU, float32).

    `batch_size` differs from the export's example batch by default, which also checks the batch axis.
    """
    student = _cpu_copy(model)
    z, y = _example(student.geometry, batch_size, seed)
    expected = student.forward_with_cfg(z, y, guidance).numpy()
    session = onnx_session(path, 1)
    got = session.run([OUTPUT_NAME], {"z": z.numpy(), "y": y.numpy()})[0]
    if got.shape != expected.shape:
        raise DseError(f"the ONNX file {path} returns shape {got.shape}, PyTorch {expected.shape}: export it again")
    return float(np.max(np.abs(got - expected)))


def onnx_latency(
    path: str | Path, *, num_images: int = 50_000, batch_size: int = 128, repeats: int = 3, warmup: int = 1,
    threads: int = 0, seed: int = 0,
) -> dict:
    """Median seconds for onnxruntime (CPUExecutionProvider) to generate `num_images` guided images
    from the ONNX file at `path`, in batches of `batch_size`; the protocol of
    `dse.metrics.latency.measure_latency`: noise and labels made per batch (numpy, inside the timed
    run), `warmup` untimed rounds of each distinct batch size, the lower median of `repeats` runs.

    `threads` is onnxruntime's intra-op thread count (0: one per CPU this process may use).
    Returns `latency_onnx_cpu_s`, `latency_onnx_per_image_ms`, `latency_onnx_threads`,
    `latency_onnx_num_images`, `latency_onnx_batch`, `latency_onnx_repeats`.
    """
    check_counts(num_images, batch_size, repeats, warmup, what="ONNX latency")
    threads = _threads(threads)
    run = onnx_runner(onnx_session(path, threads), path, seed)
    sizes = batch_sizes(num_images, batch_size)
    for _ in range(warmup):
        run(sorted(set(sizes), reverse=True))
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(sizes)
        walls.append(time.perf_counter() - t0)
    median = statistics.median_low(walls)
    return {
        "latency_onnx_cpu_s": median,
        "latency_onnx_per_image_ms": 1000 * median / num_images,
        "latency_onnx_threads": threads,
        "latency_onnx_num_images": int(num_images),
        "latency_onnx_batch": int(batch_size),
        "latency_onnx_repeats": int(repeats),
    }


# The store's columns for the deployment proxy (dse.store.COLUMNS): what `measure_onnx` returns.
ONNX_COLUMNS = (
    "latency_onnx_cpu_s", "latency_onnx_threads", "latency_onnx_num_images", "latency_onnx_batch",
    "onnx_max_abs_diff", "onnx_bytes", "onnx_path",
)


def measure_onnx(
    model: nn.Module, path: str | Path, *, guidance: float = 1.5, num_images: int = 50_000, batch_size: int = 128,
    repeats: int = 3, warmup: int = 1, threads: int = 0, opset: int = DEFAULT_OPSET,
) -> dict:
    """Export `model` to `path` (guidance folded in), check it against PyTorch and time it with
    onnxruntime on CPU. Returns exactly the store's columns `ONNX_COLUMNS`: `latency_onnx_cpu_s`
    (median wall-clock seconds for `num_images`), `latency_onnx_threads`, `latency_onnx_num_images`,
    `latency_onnx_batch`, `onnx_max_abs_diff`, `onnx_bytes`, `onnx_path`; call `export_onnx`,
    `check_onnx` and `onnx_latency` for the rest (opset, exporter, export time, per-image ms)."""
    exported = export_onnx(model, path, guidance=guidance, batch_size=batch_size, opset=opset)
    diff = check_onnx(model, path, guidance)
    timing = onnx_latency(path, num_images=num_images, batch_size=batch_size, repeats=repeats, warmup=warmup,
                          threads=threads)
    row = {**exported, "onnx_max_abs_diff": diff, **timing}
    return {key: row[key] for key in ONNX_COLUMNS}
