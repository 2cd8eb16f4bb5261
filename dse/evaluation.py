"""Owns measuring a trained student as a whole: its self-describing checkpoint file, the PNG sample
grid, image quality (FID / KID / IS) and speed (PyTorch latency, ONNX export and onnxruntime
latency). Trials, the study's latency pass and `dse eval CHECKPOINT` all measure through here, so a
row means the same thing whichever way it was made (protocols: docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

from dse.config import EvalConfig, Geometry, StudentArch
from dse.errors import DseError

STUDENT_FORMAT = "dse-student-v1"
STUDENT_FILE = "student.pt"  # in a trial's artifacts folder, next to these two:
SAMPLES_FILE = "samples.png"
ONNX_FILE = "student.onnx"


def save_student(path: str | Path, model, *, dataset: str, data_root: str = "", trial_id: str = "") -> Path:
    """Write the (EMA) student with what is needed to rebuild and measure it, atomically.

    The file is a plain dict of strings, numbers and tensors (docs/formats.md), so it loads with
    `torch.load(..., weights_only=True)`.
    """
    import torch

    from dse.fileio import atomic_write

    state = {
        "format": STUDENT_FORMAT, "dataset": dataset, "data_root": data_root, "trial_id": trial_id,
        "arch": dataclasses.asdict(model.arch), "geometry": dataclasses.asdict(model.geometry),
        "label_dropout": float(model.y_embedder.dropout_prob),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    atomic_write(path, buffer.getvalue())
    return path


def load_student(path: str | Path):
    """(DiT in eval mode on CPU, the file's metadata) from a file written by `save_student`.

    Anything else (a missing file, a trainer checkpoint, a damaged or foreign file) is a DseError
    that says what was expected; nothing in the file is executed.
    """
    from dse.fileio import load_format_file
    from dse.models.dit import DiT

    p = Path(path)
    state = load_format_file(p, STUDENT_FORMAT, "dse student checkpoint",
                             f"a trial writes results/<study>/artifacts/<trial>/{STUDENT_FILE}")
    try:
        arch, geometry = StudentArch(**state["arch"]), Geometry(**state["geometry"])
        model = DiT(arch, geometry, label_dropout=float(state.get("label_dropout", 0.1)))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise DseError(f"{p}: damaged {STUDENT_FORMAT} checkpoint ({str(exc).splitlines()[0]})") from None
    meta = {k: state.get(k, "") for k in ("dataset", "data_root", "trial_id")}
    return model.eval(), meta


def write_samples(model, path: str | Path, cfg: EvalConfig, device) -> str | None:
    """The PNG grid of the report (one row per class, `cfg.samples_per_class` fixed seeds); its path."""
    from dse.metrics.samples import sample_grid, save_png

    if cfg.samples_per_class <= 0:
        return None
    grid = sample_grid(model, cfg.samples_per_class, guidance=cfg.guidance, seed=cfg.seed, device=device)
    return str(save_png(grid, path, cell=model.geometry.image_size))


def measure_quality(model, dataset: str, cfg: EvalConfig, *, data_root: str = "", device="cpu") -> dict[str, Any]:
    """FID / KID / IS of `cfg.num_samples` guided samples (random uniform labels) and how they were measured."""
    from dse.metrics.fid import image_quality
    from dse.metrics.samples import sample_images

    start = time.perf_counter()
    images, _ = sample_images(model, cfg.num_samples, guidance=cfg.guidance, seed=cfg.seed, device=device)
    quality = image_quality(
        images, dataset, data_root=data_root, reference=cfg.reference, reference_num=cfg.reference_num,
        extractor=cfg.extractor, inception_path=cfg.inception_weights, device=str(device),
    )
    return {**quality, "guidance": cfg.guidance, "quality_seconds": time.perf_counter() - start}


def measure_speed(model, cfg: EvalConfig, *, device="cpu", onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Latency on `device` by the protocol of metrics/latency.py, then (with `cfg.onnx` and a path)
    the ONNX export, its agreement with PyTorch and its onnxruntime CPU latency.

    The caller makes sure nothing else runs on the device meanwhile (a study measures in a pass of
    its own after training).
    """
    from dse.metrics.latency import measure_latency

    start = time.perf_counter()
    row = measure_latency(
        model, num_images=cfg.latency_num_images, batch_size=cfg.latency_batch, guidance=cfg.guidance,
        repeats=cfg.latency_repeats, device=device, compile=cfg.latency_compile,
    )
    if cfg.onnx and onnx_path is not None:
        from dse.metrics.export import measure_onnx

        row.update(measure_onnx(  # exports a CPU copy; `model` stays where it is
            model, onnx_path, guidance=cfg.guidance, batch_size=cfg.latency_batch,
            num_images=cfg.onnx_num_images or cfg.latency_num_images, repeats=cfg.latency_repeats,
        ))
    row["latency_seconds"] = time.perf_counter() - start
    return row


def evaluate_checkpoint(
    path: str | Path, cfg: EvalConfig, *, device: str = "auto", dataset: str = "", data_root: str = "",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything measured on one saved student, as a row of the store's columns (`dse eval`).

    The sample grid and the ONNX file go to `out_dir` (default: next to the checkpoint).
    """
    import torch

    from dse.trial import arch_columns, resolve_device

    model, meta = load_student(path)
    dataset = dataset or meta["dataset"]
    if not dataset:
        raise DseError(f"{path} does not name its data set; give it with --dataset")
    out = Path(out_dir) if out_dir else Path(path).parent
    dev = resolve_device(device)
    model = model.to(dev)
    row: dict[str, Any] = {
        "trial_id": meta["trial_id"] or Path(path).stem, "status": "complete", "error": None,
        "dataset": dataset, "checkpoint": str(Path(path).resolve()), **arch_columns(model.arch, model.geometry),
        "device": str(dev), "torch_version": torch.__version__,
    }
    row["samples_png"] = write_samples(model, out / SAMPLES_FILE, cfg, dev)
    row.update(measure_quality(model, dataset, cfg, data_root=data_root or meta["data_root"], device=dev))
    row.update(measure_speed(model, cfg, device=dev, onnx_path=out / ONNX_FILE))
    return row


def export_student(path: str | Path, out: str | Path, *, guidance: float = 1.5) -> dict[str, Any]:
    """`dse export`: the saved student as one ONNX graph (z, y) -> guided image, and its agreement
    with PyTorch (`onnx_max_abs_diff`, onnxruntime on CPU)."""
    from dse.metrics.export import check_onnx, export_onnx

    model, _ = load_student(path)
    info = export_onnx(model, out, guidance=guidance)
    g = model.geometry
    info["onnx_max_abs_diff"] = check_onnx(model, out, guidance)
    info["z_shape"] = f"(B, {g.channels}, {g.image_size}, {g.image_size})"
    return info
