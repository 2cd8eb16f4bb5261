"""Owns the latency protocol: seconds for a student to generate N images at batch B, with guidance,
noise made on the device, after warm-up, synchronised, the median of R repeats.

The paper's protocol (App. C): 50k images at batch 128 with classifier-free guidance 1.5, so the
network sees batches of 2B (cond and uncond in one pass, `DiT.forward_with_cfg`). Every row says how
it was measured: device, dtype, threads, batch, N, repeats, guidance and whether torch.compile ran.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch

from dse.errors import DseError

# The clocks, looked up at call time (tests replace them): wall-clock and this process's CPU time.
_wall_clock = time.perf_counter
_cpu_clock = time.process_time

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def batch_sizes(num_images: int, batch_size: int) -> list[int]:
    """The batches of one run: ceil(N / B) batches of B, the last one N mod B when B does not divide N."""
    full, rest = divmod(num_images, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise DseError(f"unsupported latency dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return name


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type  # "cpu" (the CPU model is the host's; rows record the host separately)


@torch.no_grad()
def measure_latency(
    model: torch.nn.Module, *, num_images: int = 50_000, batch_size: int = 128, guidance: float = 1.5,
    repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu", dtype: str | torch.dtype = "float32",
    compile: bool = False, seed: int = 0,
) -> dict:
    """Median wall-clock seconds for `model` to generate `num_images` images in batches of `batch_size`.

    Each batch makes its noise z (b, C, H, W) and labels y (b,) on `device` and runs
    `model.forward_with_cfg(z, y, guidance)`: with guidance != 1 the network sees 2b inputs (cond
    and uncond in one pass), as in the paper. `warmup` untimed rounds run one batch of each distinct
    batch size first (B, and N mod B when B does not divide N), so neither one-off set-up nor a
    recompile for the last, smaller batch is timed. Each of `repeats` runs is bracketed by device
    synchronisation; the figure is the lower median, a run that was actually measured.

    `dtype` float32 runs in float32; bfloat16 / float16 run under `torch.autocast` (weights stay
    float32, matmuls and attention in the lower precision; that is how the DiT's float32 time
    embedding keeps working). `compile=True` times `torch.compile` of the guided step; if compiling
    fails (no compiler, unsupported backend) it warns and times eager mode, and `latency_compile`
    says False. The caller's model is not changed: a copy is moved to the device.

    Returns `latency_s`, `latency_per_image_ms`, `latency_cpu_s` (process CPU seconds of the median
    run, on CPU only; None elsewhere), `latency_device`, `latency_batch`, `latency_num_images`,
    `latency_repeats`, `latency_guidance`, `latency_threads`, `latency_compile`, `dtype`.
    """
    for key, value in (("num_images", num_images), ("batch_size", batch_size), ("repeats", repeats)):
        if int(value) < 1:
            raise DseError(f"latency {key} must be at least 1 (got {value})")
    if warmup < 0:
        raise DseError(f"latency warmup must be >= 0 (got {warmup})")
    device = torch.device(device)
    dtype_name = _dtype_name(dtype)
    student = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    g = student.geometry
    shape = (g.channels, g.image_size, g.image_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    autocast = dtype_name != "float32"

    def guided(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=DTYPES[dtype_name], enabled=autocast):
            return student.forward_with_cfg(z, y, guidance)

    step = guided
    if compile:
        try:
            step = torch.compile(guided)
        except Exception as exc:  # noqa: BLE001 - any failure to compile falls back to eager
            warnings.warn(f"torch.compile unavailable ({type(exc).__name__}: {exc}); timing eager mode", stacklevel=2)
            compile = False

    def run(sizes: list[int]) -> None:
        for b in sizes:
            z = torch.randn((b, *shape), device=device, generator=gen)  # (b, C, H, W), made on the device
            y = torch.randint(g.num_classes, (b,), device=device, generator=gen)  # (b,)
            step(z, y)

    sizes = batch_sizes(num_images, batch_size)
    warm = sorted(set(sizes), reverse=True)  # one batch of each distinct size
    for _ in range(warmup):
        try:
            run(warm)
        except Exception as exc:
            if step is guided:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); timing eager mode", stacklevel=2)
            step, compile = guided, False
            run(warm)
    _sync(device)

    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        c0, t0 = _cpu_clock(), _wall_clock()
        run(sizes)
        _sync(device)
        walls.append(_wall_clock() - t0)
        cpus.append(_cpu_clock() - c0)
    i = sorted(range(repeats), key=walls.__getitem__)[(repeats - 1) // 2]  # lower median: a measured run
    median = walls[i]
    return {
        "latency_s": median,
        "latency_per_image_ms": 1000 * median / num_images,
        "latency_cpu_s": cpus[i] if device.type == "cpu" else None,
        "latency_device": _device_name(device),
        "latency_batch": int(batch_size),
        "latency_num_images": int(num_images),
        "latency_repeats": int(repeats),
        "latency_guidance": float(guidance),
        "latency_threads": torch.get_num_threads(),
        "latency_compile": bool(compile),
        "dtype": dtype_name,
    }
