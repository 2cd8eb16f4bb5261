"""Owns the latency protocol: seconds for a student to generate N images at batch B, with guidance,
noise made on the device, after warm-up, synchronised, the median of R repeats."""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    model: torch.nn.Module, *, num_images: int = 2048, batch_size: int = 128, guidance: float = 1.5,
    repeats: int = 3, device: torch.device | str = "cpu",
) -> dict:
    """Median wall-clock seconds to generate `num_images` images in batches of `batch_size`.

    Returns the figure with how it was measured: device, batch, N, repeats, dtype, threads, and the
    process CPU time of the median run on CPU.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    g = model.geometry
    shape = (g.channels, g.image_size, g.image_size)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(n: int) -> None:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            z = torch.randn((b, *shape), device=device, generator=gen)
            y = torch.randint(g.num_classes, (b,), device=device, generator=gen)
            model.forward_with_cfg(z, y, guidance)

    run(min(batch_size, num_images))  # warm-up
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        run(num_images)
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    median = sorted(walls)[(len(walls) - 1) // 2]  # lower median: a measured run, even for even R
    return {
        "latency_s": median,
        "latency_per_image_ms": 1000 * median / num_images,
        "latency_cpu_s": cpus[walls.index(median)] if device.type == "cpu" else None,
        "latency_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "latency_batch": batch_size,
        "latency_num_images": num_images,
        "latency_repeats": repeats,
        "latency_guidance": guidance,
        "latency_threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
