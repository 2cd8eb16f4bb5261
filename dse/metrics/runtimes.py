"""Owns where a latency is measured: the runtimes (`torch`, `onnxruntime`, `command`), the protocol
they share (`Protocol`), the fingerprint of the device they measure on, and the command contract.

- `torch`: `dse.metrics.latency.measure_latency` (eager; torch.compile with `compile`, falling back
  to eager where it cannot), on the study's device.
- `onnxruntime`: the student exported to ONNX with guidance folded in (`dse.metrics.export`), timed by
  the same protocol (noise per batch, warm-up, R repeats, lower median) on the CUDA execution provider
  when the device is a CUDA GPU and onnxruntime has that provider, else on the CPU with as many
  intra-op threads as torch uses (`latency_threads` means the same for both runtimes).
- `command`: the student exported to ONNX, then the user's command template run once with the fields
  of `command_fields()` filled in, each shell-quoted; e.g. on a Jetson over ssh with TensorRT's trtexec.
  Contract: the LAST non-empty line the command prints on stdout is either a number (seconds for
  {num_images} images) or a JSON object with one of `latency_s` / `seconds` (seconds for {num_images}
  images), `per_image_ms`, `per_batch_ms` (scaled by num_images / batch), and optionally `repeats`, a
  list of seconds for {num_images} images, one per repeat (the median, p90, SD and spread then come
  from it, and it wins over a figure given beside it; else the figure is one repeat). Anything else
  it prints (including a `device` key) is ignored. A non-zero exit, a timeout (the command runs in a
  process group of its own, killed whole), or no such line is a DseError with one line that says what
  failed, the exit code and the last line of stderr. The row names the device `device_name` (the
  user's); its load is the command's business (`latency_other_load` None, never contended).

Contention and the re-measure policy apply to `torch` and `onnxruntime` (dse.metrics.latency).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dse.config import COMMAND_FIELDS, LATENCY_RUNTIMES, EvalConfig, check_command_template
from dse.errors import DseError
from dse.layout import ONNX_FILE
from dse.metrics import export
from dse.metrics.latency import (
    DTYPES,
    LATENCY_ATTEMPTS,
    batch_sizes,
    check_counts,
    device_label,
    lower_median_index,
    load_columns,
    measure_latency,
    repeat_stats,
    timed_repeats,
    usable_cpus,
    with_attempts,
)

RUNTIMES = LATENCY_RUNTIMES  # named once, in the light config (which validates eval.latency_runtime)
# What a command template may name in braces: named once in config, which checks templates against it.
_COMMAND_FIELDS = COMMAND_FIELDS
# The JSON keys a command may report its figure in, and what turns each into seconds for num_images images.
_SECONDS_KEYS = ("latency_s", "seconds")
_MS_KEYS = ("per_image_ms", "per_batch_ms")
_KILL_WAIT_S = 5.0  # how long to wait for a killed command's output


def command_fields() -> tuple[str, ...]:
    """The fields a `command` template may name in braces, e.g. {onnx} and {batch} (docs/metrics.md)."""
    return _COMMAND_FIELDS


@dataclass(frozen=True)
class Protocol:
    """How a latency is measured: `num_images` images at batch `batch` with guidance `guidance`, `warmup`
    untimed rounds, `repeats` timed runs, in `dtype`, on `runtime` (RUNTIMES); for `command`, the
    template `command`, the device it measures on `device_name` and the seconds it may take `timeout`."""

    runtime: str
    num_images: int
    batch: int
    guidance: float
    repeats: int
    warmup: int = 1
    dtype: str = "float32"
    compile: bool = False
    command: str = ""
    device_name: str = ""
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise DseError(f"latency runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        check_counts(self.num_images, self.batch, self.repeats, self.warmup)
        if self.dtype not in DTYPES:
            raise DseError(f"unsupported latency dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise DseError(f"latency guidance must be a finite number >= 0 (got {self.guidance})")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise DseError(f"latency timeout must be positive seconds (got {self.timeout})")
        if self.runtime == "onnxruntime" and self.dtype != "float32":
            raise DseError(f"the onnxruntime latency runtime times the float32 ONNX graph, not {self.dtype}; "
                           "use dtype float32 or the torch runtime")
        if self.runtime == "command":
            check_command_template(self.command, "latency command")
            if not self.device_name.strip():
                raise DseError("the command latency runtime needs the name of the device the command measures on "
                               "(eval.latency_device_name, e.g. \"jetson-orin-nano\")")

    def to_dict(self) -> dict[str, Any]:
        """What the figure depends on, as plain JSON values (the latency cache keys on it): every field
        but `timeout`, which bounds how long dse waits, not what is measured."""
        d = dataclasses.asdict(self)
        del d["timeout"]
        return d


def protocol_of(cfg: EvalConfig) -> Protocol:
    """The protocol of a study's `eval` section: its latency images, batch, repeats, guidance and runtime
    (torch.compile for the torch runtime only; the command, its device name and timeout for `command` only)."""
    command = cfg.latency_runtime == "command"
    return Protocol(
        runtime=cfg.latency_runtime, num_images=cfg.latency_num_images, batch=cfg.latency_batch,
        guidance=float(cfg.guidance), repeats=cfg.latency_repeats,
        compile=bool(cfg.latency_compile) and cfg.latency_runtime == "torch",
        command=cfg.latency_command if command else "", device_name=cfg.latency_device_name if command else "",
        timeout=float(cfg.latency_timeout),
    )


# ----------------------------------------------------------------------------------- fingerprint
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name", else platform.processor(), else "cpu")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (/proc/driver/nvidia/version), None where it cannot be read."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]*)", text)
    return m.group(1) if m else None


def _onnx_providers(device: torch.device) -> list:
    """The execution providers to ask onnxruntime for on `device`: CUDA's first on a CUDA device when
    this onnxruntime has it (the CPU's after it), else the CPU's alone."""
    ort = export.ort_module()
    if device.type == "cuda" and export.CUDA_PROVIDER in ort.get_available_providers():
        return [(export.CUDA_PROVIDER, {"device_id": device.index or 0}), export.CPU_PROVIDER]
    return [export.CPU_PROVIDER]


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def fingerprint(protocol: Protocol, device: torch.device | str) -> dict[str, Any]:
    """What identifies the device a latency is measured on, for the latency cache (plain JSON values).

    `torch` and `onnxruntime`: the host (CPU model, machine, CPUs this process may use), torch's
    version and threads, and on CUDA the GPU's name, capability, torch's CUDA and cuDNN versions and the
    driver's (None where it cannot be read); onnxruntime adds its version and the execution provider it
    will use. `command`: the device name the user gives, a sha256 of the command template and the
    exporter's versions (torch, onnx): the graph it times; not this host's threads or CPU, which the
    remote device does not share.
    """
    device = torch.device(device)
    fp: dict[str, Any] = {"runtime": protocol.runtime, "torch": torch.__version__}
    if protocol.runtime == "command":
        fp.update(device_name=protocol.device_name,
                  command_sha256=hashlib.sha256(protocol.command.encode()).hexdigest(),
                  onnx=export.onnx_module().__version__)
        return fp
    fp.update(cpu=cpu_model(), machine=platform.machine(), cpus=len(usable_cpus()), threads=torch.get_num_threads(),
              device_type=device.type)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        fp.update(device=torch.cuda.get_device_name(index), capability=f"{major}.{minor}", cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version(), driver=_nvidia_driver())
    else:
        fp["device"] = cpu_model() if device.type == "cpu" else device.type
    if protocol.runtime == "onnxruntime":
        fp.update(onnxruntime=export.ort_module().__version__, provider=_provider_name(_onnx_providers(device)[0]))
    return fp


# ----------------------------------------------------------------------------------- measuring
def measure(model: torch.nn.Module, protocol: Protocol, device: torch.device | str, *,
            work_dir: str | Path | None = None, attempts: int = LATENCY_ATTEMPTS) -> dict[str, Any]:
    """The latency of `model` (a DiT student) by `protocol` on `device`: the columns of
    `dse.metrics.latency.LATENCY_COLUMNS` and `latency_runtime`. `onnxruntime` and `command` export the
    graph to `work_dir`/student.onnx (or a temporary folder, removed after). A contended measurement is
    made again, up to `attempts` in all (torch and onnxruntime). The caller's model is not changed."""
    device = torch.device(device)
    if protocol.runtime == "torch":
        row = measure_latency(
            model, num_images=protocol.num_images, batch_size=protocol.batch, guidance=protocol.guidance,
            repeats=protocol.repeats, warmup=protocol.warmup, device=device, dtype=protocol.dtype,
            compile=protocol.compile, attempts=attempts,
        )
        return {**row, "latency_runtime": "torch"}
    if work_dir is not None:
        return _measure_exported(model, protocol, device, Path(work_dir), attempts)
    with tempfile.TemporaryDirectory(prefix="dse-latency-") as tmp:
        return _measure_exported(model, protocol, device, Path(tmp), attempts)


def _measure_exported(model, protocol: Protocol, device: torch.device, work_dir: Path, attempts: int) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / ONNX_FILE
    export.export_onnx(model, path, guidance=protocol.guidance, batch_size=protocol.batch)
    if protocol.runtime == "onnxruntime":
        return _measure_onnxruntime(path, protocol, device, attempts)
    return _measure_command(path, protocol, model.geometry)


def _measure_onnxruntime(path: Path, protocol: Protocol, device: torch.device, attempts: int) -> dict:
    threads = torch.get_num_threads()
    providers = _onnx_providers(device)
    if device.type == "cuda" and _provider_name(providers[0]) != export.CUDA_PROVIDER:
        warnings.warn(f"onnxruntime {export.ort_module().__version__} has no {export.CUDA_PROVIDER}: timing the ONNX "
                      "graph on the CPU (install onnxruntime-gpu to time it on the GPU)", stacklevel=3)
    session = export.onnx_session(path, threads, providers)
    on_gpu = session.get_providers()[0] == export.CUDA_PROVIDER
    where = f"{device_label(device)} (onnxruntime CUDA)" if on_gpu else "cpu (onnxruntime)"
    run = export.onnx_runner(session, path)
    sizes = batch_sizes(protocol.num_images, protocol.batch)
    warm = sorted(set(sizes), reverse=True)

    def once() -> dict:
        for _ in range(protocol.warmup):
            run(warm)
        walls, cpus, other_load, window = timed_repeats(lambda: run(sizes), protocol.repeats)
        return {
            **repeat_stats(walls, protocol.num_images),
            "latency_cpu_s": None if on_gpu else cpus[lower_median_index(walls)],
            "latency_device": where, "latency_batch": protocol.batch, "latency_num_images": protocol.num_images,
            "latency_repeats": protocol.repeats, "latency_guidance": protocol.guidance, "latency_threads": threads,
            "latency_compile": False, "dtype": protocol.dtype,
            **load_columns(other_load, window, 1 if on_gpu else threads),
        }

    return {**with_attempts(once, attempts), "latency_runtime": "onnxruntime"}


def command_values(protocol: Protocol, geometry, onnx_path: str | Path) -> dict[str, str]:
    """The value of each field of `command_fields()` (unquoted): the graph's path, B, N, ceil(N / B)
    batches, R, warm-up rounds, guidance, the image geometry, z's shape BxCxHxW and y's shape B."""
    b, g = protocol.batch, geometry
    values = {
        "onnx": str(onnx_path), "batch": str(b), "num_images": str(protocol.num_images),
        "batches": str(len(batch_sizes(protocol.num_images, b))), "repeats": str(protocol.repeats),
        "warmup": str(protocol.warmup), "guidance": repr(float(protocol.guidance)), "channels": str(g.channels),
        "image_size": str(g.image_size), "num_classes": str(g.num_classes),
        "z_shape": f"{b}x{g.channels}x{g.image_size}x{g.image_size}", "y_shape": str(b),
        "device_name": protocol.device_name,
    }
    assert tuple(values) == _COMMAND_FIELDS
    return values


def format_command(protocol: Protocol, geometry, onnx_path: str | Path) -> str:
    """The command line to run: the template with each field's value shell-quoted (shlex.quote)."""
    quoted = {k: shlex.quote(v) for k, v in command_values(protocol, geometry, onnx_path).items()}
    try:
        return protocol.command.format(**quoted)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise DseError(f"latency command template {protocol.command!r} cannot be filled in "
                       f"({type(exc).__name__}: {exc}); name fields as {{onnx}}, {{batch}}, ...") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _short(text: str, most: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DseError(f"latency command reported {what} = {_short(json.dumps(value), 60)}: "
                       "it must be a positive, finite number")
    return float(value)


def parse_command_output(stdout: str, num_images: int, batch: int) -> list[float]:
    """Seconds for `num_images` images, one per repeat, from a command's stdout (the module's contract:
    its last non-empty line is a number of seconds or a JSON object); a DseError when it holds none."""
    line = _last_line(stdout)
    known = ", ".join((*_SECONDS_KEYS, *_MS_KEYS, "repeats"))
    if not line:
        raise DseError(f"latency command printed nothing on stdout: its last line must be the seconds for "
                       f"{num_images} images or a JSON object with {known}")
    try:
        value = json.loads(line)
    except ValueError:
        try:
            value = float(line)
        except ValueError:
            raise DseError(f"latency command's last line {_short(line, 80)!r} is neither a number of seconds "
                           f"nor a JSON object with {known}") from None
    if not isinstance(value, dict):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [_positive(value, "seconds")]
        raise DseError(f"latency command's last line {_short(line, 80)!r} is neither a number of seconds "
                       f"nor a JSON object with {known}")
    if "repeats" in value:
        repeats = value["repeats"]
        if not isinstance(repeats, list) or not repeats:
            raise DseError(f"latency command reported repeats = {_short(json.dumps(repeats), 60)}: it must be a "
                           f"non-empty list of seconds for {num_images} images")
        return [_positive(r, "a repeat") for r in repeats]
    for key in _SECONDS_KEYS:
        if key in value:
            return [_positive(value[key], key)]
    if "per_image_ms" in value:
        return [_positive(value["per_image_ms"], "per_image_ms") * num_images / 1000]
    if "per_batch_ms" in value:
        return [_positive(value["per_batch_ms"], "per_batch_ms") * num_images / batch / 1000]
    raise DseError(f"latency command's JSON {_short(line, 80)} has none of {known}")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the command and everything it started (it runs in a session, so a process group, of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_command(cmd: str, timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cmd` run by the shell, stdin closed, in a process group of its own,
    which is killed (the command and all it started) after `timeout` seconds: then a DseError."""
    proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            _, err = proc.communicate(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # something it started left the group and holds the pipes
            err = ""
        tail = _last_line(err)
        raise DseError(f"latency command timed out after {timeout:g} s and was killed"
                       + (f": {_short(tail)}" if tail else "") + " (raise eval.latency_timeout if it needs longer)"
                       ) from None
    return proc.returncode, out, err


def _measure_command(path: Path, protocol: Protocol, geometry) -> dict:
    cmd = format_command(protocol, geometry, path)
    code, out, err = run_command(cmd, protocol.timeout)
    if code != 0:
        tail = _last_line(err) or "nothing on stderr"
        raise DseError(f"latency command failed (exit {code}): {_short(tail)}")
    try:
        walls = parse_command_output(out, protocol.num_images, protocol.batch)
    except DseError as exc:
        tail = _last_line(err)
        raise DseError(f"{exc}" + (f" (stderr: {_short(tail, 120)})" if tail else "")) from None
    return {
        **repeat_stats(walls, protocol.num_images),
        "latency_cpu_s": None, "latency_device": protocol.device_name, "latency_batch": protocol.batch,
        "latency_num_images": protocol.num_images, "latency_repeats": len(walls),
        "latency_guidance": protocol.guidance, "latency_threads": None, "latency_compile": False,
        "dtype": protocol.dtype, "latency_other_load": None, "latency_contended": False, "latency_attempts": 1,
        "latency_runtime": "command",
    }

