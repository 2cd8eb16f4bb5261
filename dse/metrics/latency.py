"""Owns the latency protocol: seconds for a student to generate N images at batch B, with guidance,
noise made on the device, after warm-up, synchronised, the median of R repeats; with the noise of the
repeats and whether other work on the machine contended with them.

The paper's protocol (App. C): 50k images at batch 128 with classifier-free guidance 1.5, so the
network sees batches of 2B (cond and uncond in one pass, `DiT.forward_with_cfg`). Every row says how
it was measured: device, dtype, threads, batch, N, repeats, guidance and whether torch.compile ran.

Noise (`repeat_stats`): besides the median, the 90th percentile, the fastest repeat, the relative
spread (max - min) / median, and `latency_s_std`, the SD one measurement is taken to have: the larger
of the repeats' sample SD and LATENCY_NOISE_FLOOR x the median, because two measurements made at
different times differ by more than one measurement's repeats show (caches, clocks, the scheduler).

Contention (`is_contended`): during the timed repeats a probe (`_load_probe`) reads how many CPUs were
busy with OTHER processes: the system's busy CPU seconds (psutil.cpu_times, over the CPUs this process
may run on) minus this process's own CPU seconds, over the wall time (`latency_other_load`). A
measurement is contended when that other work needs cores our threads use. A contended measurement is
made again (`with_attempts`: up to `attempts`, waiting ATTEMPT_WAITS_S between) and the first quiet one
kept; when every attempt is contended the least loaded one is returned, flagged `latency_contended`.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import psutil
import torch

from dse.errors import DseError

# The clocks, looked up at call time (tests replace them): wall-clock and this process's CPU time.
_wall_clock = time.perf_counter
_cpu_clock = time.process_time
_sleep = time.sleep  # the wait between attempts (tests replace it)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The relative SD one measurement is taken to have at least: run-to-run variation of quiet measurements
# that one measurement's repeats do not show. bench/latency_weights.py on this 2-core CPU (Table 6 students,
# 3 fresh processes x 2 measurements each): 6.5% between any two measurements, pooled, while the repeats
# inside one measurement spread by 2.9% (median of (max - min) / median).
LATENCY_NOISE_FLOOR = 0.065
LATENCY_ATTEMPTS = 3  # measurements made at most when they are contended (runtimes.measure)
ATTEMPT_WAITS_S = (2.0, 4.0)  # seconds waited before the 2nd, 3rd (and any later: the last) attempt
# Other work may use this many CPUs beyond those our threads leave free before a measurement is contended.
CONTENTION_SLACK = 0.25
# Resolution of the system's CPU times (psutil reads /proc/stat in 1/100 s): over a short window the
# other-load estimate is off by up to ~2 ticks x sqrt(CPUs) / window, which `is_contended` allows for.
PROBE_TICK_S = 0.01

# What `measure_latency` returns (the store declares them: dse.store.COLUMNS).
LATENCY_COLUMNS = (
    "latency_s", "latency_per_image_ms", "latency_p90_s", "latency_min_s", "latency_s_std", "latency_spread",
    "latency_cpu_s", "latency_device", "latency_batch", "latency_num_images", "latency_repeats",
    "latency_guidance", "latency_threads", "latency_compile", "dtype", "latency_other_load",
    "latency_contended", "latency_attempts",
)


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


def device_label(device: torch.device) -> str:
    """How rows name `device`: the GPU's name on CUDA, else the device type ("cpu")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type  # "cpu" (the CPU model is the host's; rows record the host separately)


def check_counts(num_images: int, batch_size: int, repeats: int, warmup: int = 0, what: str = "latency") -> None:
    """A DseError unless N, B and R are at least 1 and the warm-up rounds not negative."""
    for key, value in (("num_images", num_images), ("batch_size", batch_size), ("repeats", repeats)):
        if int(value) < 1:
            raise DseError(f"{what} {key} must be at least 1 (got {value})")
    if warmup < 0:
        raise DseError(f"{what} warmup must be >= 0 (got {warmup})")


# ----------------------------------------------------------------------------------- statistics
def lower_median_index(walls: Sequence[float]) -> int:
    """The index of the lower median of `walls`: a run that was actually measured."""
    return sorted(range(len(walls)), key=walls.__getitem__)[(len(walls) - 1) // 2]


def repeat_stats(walls: Sequence[float], num_images: int) -> dict:
    """The statistics of one measurement's repeats (seconds for `num_images` images each):
    `latency_s` (lower median), `latency_per_image_ms`, `latency_p90_s` (linear interpolation),
    `latency_min_s`, `latency_s_std` = max(sample SD, LATENCY_NOISE_FLOOR x median) and
    `latency_spread` = (max - min) / median (0 with one repeat)."""
    if not walls:
        raise DseError("latency: no repeats to summarise")
    xs = np.asarray(walls, dtype=np.float64)
    median = float(xs[lower_median_index(list(walls))])
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return {
        "latency_s": median,
        "latency_per_image_ms": 1000 * median / num_images,
        "latency_p90_s": float(np.percentile(xs, 90)),
        "latency_min_s": float(xs.min()),
        "latency_s_std": max(sd, LATENCY_NOISE_FLOOR * median),
        "latency_spread": float((xs.max() - xs.min()) / median) if median > 0 else 0.0,
    }


# ----------------------------------------------------------------------------------- contention
def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity; every CPU where that is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(psutil.cpu_count() or 1))


def _busy_seconds(cpus: Sequence[int]) -> float:
    """CPU seconds spent busy so far on `cpus`, by every process (idle and iowait left out; guest time,
    which Linux counts inside user time too, counted once)."""
    per_cpu = psutil.cpu_times(percpu=True)
    chosen = [per_cpu[i] for i in cpus] if cpus and max(cpus) < len(per_cpu) else per_cpu
    total = 0.0
    for t in chosen:
        idle = t.idle + getattr(t, "iowait", 0.0)
        guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        total += sum(t) - idle - guest  # sum(t) counts guest time twice: inside user and as guest
    return total


def _load_probe() -> Callable[[], tuple[float | None, float]]:
    """Start watching the machine; the returned function stops and gives (other load, window seconds):
    the mean number of CPUs (of those this process may use) busy with OTHER processes meanwhile, i.e.
    (system busy CPU seconds - this process's CPU seconds) / wall seconds, at least 0; None when the
    system's CPU times cannot be read. Looked up at call time: tests replace it."""
    cpus = usable_cpus()
    try:
        busy0 = _busy_seconds(cpus)
    except (OSError, AttributeError, NotImplementedError):
        busy0 = None
    own0, t0 = time.process_time(), time.perf_counter()

    def stop() -> tuple[float | None, float]:
        window = time.perf_counter() - t0
        own = time.process_time() - own0
        if busy0 is None or window <= 0:
            return None, window
        try:
            other = _busy_seconds(cpus) - busy0 - own
        except (OSError, AttributeError, NotImplementedError):
            return None, window
        return max(0.0, other / window), window

    return stop


def is_contended(other_load: float | None, threads: int, cpus: int, window_s: float = math.inf) -> bool:
    """Whether other work contended with a measurement that kept `threads` threads busy on a machine
    whose `cpus` CPUs this process may use: True when the other load exceeds the CPUs our threads leave
    free, max(0, cpus - threads), by more than CONTENTION_SLACK, plus the probe's resolution over a
    window of `window_s` seconds (2 x PROBE_TICK_S x sqrt(cpus) / window_s). On a GPU `threads` is 1:
    one CPU thread launches the kernels, and it is slowed by other work like any other. An unknown
    load (None) is not contended."""
    if other_load is None or not math.isfinite(other_load):
        return False
    resolution = 2 * PROBE_TICK_S * math.sqrt(max(1, cpus)) / window_s if window_s > 0 else math.inf
    return other_load > max(0, cpus - threads) + CONTENTION_SLACK + resolution


def timed_repeats(run: Callable[[], None], repeats: int, sync: Callable[[], None] = lambda: None,
                  ) -> tuple[list[float], list[float], float | None, float]:
    """Run `run` `repeats` times, each bracketed by `sync()`: (wall seconds per repeat, process CPU
    seconds per repeat, the other load during them, the probe's window in seconds)."""
    walls, cpus = [], []
    sync()
    stop = _load_probe()
    for _ in range(repeats):
        sync()
        c0, t0 = _cpu_clock(), _wall_clock()
        run()
        sync()
        walls.append(_wall_clock() - t0)
        cpus.append(_cpu_clock() - c0)
    other_load, window = stop()
    return walls, cpus, other_load, window


def load_columns(other_load: float | None, window: float, threads: int) -> dict:
    """`latency_other_load` and `latency_contended` of one measurement that kept `threads` threads busy."""
    return {"latency_other_load": other_load,
            "latency_contended": is_contended(other_load, threads, len(usable_cpus()), window)}


def with_attempts(measure_once: Callable[[], dict], attempts: int) -> dict:
    """Measure until a measurement is quiet, at most `attempts` times, waiting ATTEMPT_WAITS_S between:
    the first quiet one, or (every one contended) the least loaded, `latency_contended` True. Each
    measurement is a row with `latency_other_load` and `latency_contended`; the result adds
    `latency_attempts`, the measurements made."""
    if int(attempts) < 1:
        raise DseError(f"latency attempts must be at least 1 (got {attempts})")
    best: dict | None = None
    for k in range(int(attempts)):
        if k:
            _sleep(ATTEMPT_WAITS_S[min(k, len(ATTEMPT_WAITS_S)) - 1])
        row = measure_once()
        if not row["latency_contended"]:
            return {**row, "latency_attempts": k + 1}
        load = row["latency_other_load"] if row["latency_other_load"] is not None else math.inf
        if best is None or load < (best["latency_other_load"] if best["latency_other_load"] is not None else math.inf):
            best = row
    return {**best, "latency_contended": True, "latency_attempts": int(attempts)}


# ----------------------------------------------------------------------------------- torch
@torch.no_grad()
def measure_latency(
    model: torch.nn.Module, *, num_images: int = 50_000, batch_size: int = 128, guidance: float = 1.5,
    repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu", dtype: str | torch.dtype = "float32",
    compile: bool = False, seed: int = 0, attempts: int = 1,
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

    A contended measurement (module docstring) is made again, warm-up and repeats, up to `attempts`
    measurements in all (1: none again; `dse.metrics.runtimes.measure` passes LATENCY_ATTEMPTS).

    Returns LATENCY_COLUMNS: `latency_s`, `latency_per_image_ms`, `latency_p90_s`, `latency_min_s`,
    `latency_s_std`, `latency_spread` (`repeat_stats`), `latency_cpu_s` (process CPU seconds of the
    median run, on CPU only; None elsewhere), `latency_device`, `latency_batch`, `latency_num_images`,
    `latency_repeats`, `latency_guidance`, `latency_threads`, `latency_compile`, `dtype`,
    `latency_other_load`, `latency_contended`, `latency_attempts`.
    """
    check_counts(num_images, batch_size, repeats, warmup)
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

    state = {"step": guided, "compile": bool(compile)}
    if compile:
        try:
            state["step"] = torch.compile(guided)
        except Exception as exc:  # noqa: BLE001 - any failure to compile falls back to eager
            warnings.warn(f"torch.compile unavailable ({type(exc).__name__}: {exc}); timing eager mode", stacklevel=2)
            state["compile"] = False

    def run(sizes: list[int]) -> None:
        for b in sizes:
            z = torch.randn((b, *shape), device=device, generator=gen)  # (b, C, H, W), made on the device
            y = torch.randint(g.num_classes, (b,), device=device, generator=gen)  # (b,)
            state["step"](z, y)

    sizes = batch_sizes(num_images, batch_size)
    warm = sorted(set(sizes), reverse=True)  # one batch of each distinct size
    threads = torch.get_num_threads()
    busy_threads = threads if device.type == "cpu" else 1  # on a GPU, one CPU thread launches the kernels

    def once() -> dict:
        for _ in range(warmup):
            try:
                run(warm)
            except Exception as exc:
                if state["step"] is guided:
                    raise
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); timing eager mode", stacklevel=3)
                state.update(step=guided, compile=False)
                run(warm)
        walls, cpus, other_load, window = timed_repeats(lambda: run(sizes), repeats, lambda: _sync(device))
        i = lower_median_index(walls)
        return {
            **repeat_stats(walls, num_images),
            "latency_cpu_s": cpus[i] if device.type == "cpu" else None,
            "latency_device": device_label(device),
            "latency_batch": int(batch_size),
            "latency_num_images": int(num_images),
            "latency_repeats": int(repeats),
            "latency_guidance": float(guidance),
            "latency_threads": threads,
            "latency_compile": bool(state["compile"]),
            "dtype": dtype_name,
            **load_columns(other_load, window, busy_threads),
        }

    return with_attempts(once, attempts)
