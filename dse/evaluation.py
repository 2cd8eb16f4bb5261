"""Owns measuring a trained student as a whole: its self-describing checkpoint file, the PNG sample
grid, image quality (FID / KID / IS) and speed (PyTorch latency, ONNX export and onnxruntime
latency). Trials, the study's latency pass and `dse eval CHECKPOINT` all measure through here, so a
row means the same thing whichever way it was made (protocols: docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from dse.config import EvalConfig
from dse.device import resolve_device
from dse.errors import DseError, one_line
from dse.events import COMPLETE
from dse.fileio import check_folder
from dse.layout import ONNX_FILE, SAMPLES_FILE, STUDENT_FILE
from dse.sizing import arch_columns
from dse.types import Geometry, StudentArch

STUDENT_FORMAT = "dse-student-v1"


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
    except (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError, AssertionError, DseError) as exc:
        raise DseError(f"{p}: damaged {STUDENT_FORMAT} checkpoint ({one_line(exc)})") from None
    meta = {k: state.get(k, "") for k in ("dataset", "data_root", "trial_id")}
    return model.eval(), meta


def write_samples(model, path: str | Path, cfg: EvalConfig, device) -> str | None:
    """The PNG grid of the report (one row per class, `cfg.samples_per_class` fixed seeds); its path."""
    from dse.metrics.samples import sample_grid, save_sample_grid

    if cfg.samples_per_class <= 0:
        return None
    grid = sample_grid(model, cfg.samples_per_class, guidance=cfg.guidance, seed=cfg.seed, device=device)
    return str(save_sample_grid(grid, path, cell=model.geometry.image_size))


def measure_quality(model, dataset: str, cfg: EvalConfig, *, data_root: str = "", device="cpu") -> dict[str, Any]:
    """FID / KID / IS of `cfg.num_samples` guided samples (random uniform labels) and how they were measured:
    with `fid_std` / `fid_ci_low` / `fid_ci_high` from `cfg.fid_bootstrap` resamples (`fid_bootstrap`),
    `label_agreement` (do the samples follow the labels they were made for) and `eval_seed` (`cfg.seed`,
    from which every evaluation generator's seed is derived, `dse.metrics.samples.eval_generator_seed`)."""
    from dse.metrics.fid import image_quality
    from dse.metrics.samples import sample_images

    start = time.perf_counter()
    images, labels = sample_images(model, cfg.num_samples, guidance=cfg.guidance, seed=cfg.seed, device=device)
    quality = image_quality(
        images, dataset, labels=labels, bootstrap=cfg.fid_bootstrap, data_root=data_root, reference=cfg.reference,
        reference_num=cfg.reference_num, extractor=cfg.extractor, inception_path=cfg.inception_weights,
        device=str(device),
    )
    return {**quality, "guidance": cfg.guidance, "eval_seed": cfg.seed, "quality_seconds": time.perf_counter() - start}


def measure_speed(model, cfg: EvalConfig, *, device="cpu", onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Latency on `device` by the protocol and runtime of `cfg` (`dse.metrics.runtimes.measure`: re-measured
    when contended), then, with `cfg.onnx` and a path, the ONNX export, its agreement with PyTorch and (for
    the torch runtime) its onnxruntime CPU latency.

    The caller makes sure nothing else runs on the device meanwhile (a study measures before training,
    in a pass of its own).
    """
    from dse.metrics.runtimes import measure, protocol_of

    start = time.perf_counter()
    work_dir = Path(onnx_path).parent if onnx_path is not None else None
    row = measure(model, protocol_of(cfg), device, work_dir=work_dir)
    if cfg.onnx and onnx_path is not None:
        from dse.metrics.export import measure_onnx

        onnx = measure_onnx(  # exports a CPU copy; `model` stays where it is
            model, onnx_path, guidance=cfg.guidance, batch_size=cfg.latency_batch,
            num_images=cfg.onnx_num_images or cfg.latency_num_images, repeats=cfg.latency_repeats,
        )
        if cfg.latency_runtime != "torch":  # timed already as the runtime itself
            onnx = {k: v for k, v in onnx.items() if not k.startswith("latency_onnx")}
        row.update(onnx)
    row["latency_seconds"] = time.perf_counter() - start
    return row


def evaluate_checkpoint(
    path: str | Path, cfg: EvalConfig, *, device: str = "auto", dataset: str = "", data_root: str = "",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything measured on one saved student, as a row of the store's columns (`dse eval`).

    The sample grid and the ONNX file are written to `out_dir` and nowhere else: without it nothing
    is written (the ONNX graph is timed from a temporary folder that is removed; `samples_png` and
    `onnx_path` are None), so a study's artifacts change only when the study runs. Every input (the
    checkpoint, the data set and whether it can be read, the device, `out_dir`) is checked before
    anything is written.
    """
    import torch

    from dse.data.datasets import dataset_geometry

    model, meta = load_student(path)
    dataset = dataset or meta["dataset"]
    if not dataset:
        raise DseError(f"{path} does not name its data set; give it with --dataset")
    g, m = dataset_geometry(dataset), model.geometry
    if (g.image_size, g.channels, g.num_classes) != (m.image_size, m.channels, m.num_classes):
        raise DseError(
            f"{path} makes {m.image_size}x{m.image_size}x{m.channels} images of {m.num_classes} classes, {dataset} has "
            f"{g.image_size}x{g.image_size}x{g.channels} images of {g.num_classes}: give the data set it was trained on"
            + (f" ({meta['dataset']})" if meta["dataset"] else "")
        )
    if out_dir is not None:
        check_folder(out_dir, "--out folder")
    dev = resolve_device(device)
    model = model.to(dev)
    row: dict[str, Any] = {
        "trial_id": meta["trial_id"] or Path(path).stem, "status": COMPLETE, "error": None,
        "dataset": dataset, "checkpoint": str(Path(path).resolve()), **arch_columns(model.arch, model.geometry),
        "device": str(dev), "torch_version": torch.__version__, "samples_png": None,
    }
    # quality first: it reads the data set, so a missing one is refused before anything is written
    row.update(measure_quality(model, dataset, cfg, data_root=data_root or meta["data_root"], device=dev))
    if out_dir is not None:
        row["samples_png"] = write_samples(model, Path(out_dir) / SAMPLES_FILE, cfg, dev)
        row.update(measure_speed(model, cfg, device=dev, onnx_path=Path(out_dir) / ONNX_FILE))
        return row
    with tempfile.TemporaryDirectory(prefix="dse-eval-") as tmp:
        row.update(measure_speed(model, cfg, device=dev, onnx_path=Path(tmp) / ONNX_FILE))
    if "onnx_path" in row:
        row["onnx_path"] = None  # timed, not kept
    return row


def export_checked(model, path: str | Path, *, guidance: float = 1.5) -> dict[str, Any]:
    """The student's ONNX graph written to `path` (guidance folded in) and its agreement with PyTorch,
    not timed (a study times latency before training, the device to itself): `onnx_max_abs_diff`,
    `onnx_bytes`, `onnx_path`."""
    from dse.metrics.export import check_onnx, export_onnx

    info = export_onnx(model, path, guidance=guidance)
    return {"onnx_max_abs_diff": check_onnx(model, path, guidance), "onnx_bytes": info.get("onnx_bytes"),
            "onnx_path": info.get("onnx_path", str(path))}


def export_student(path: str | Path, out: str | Path, *, guidance: float = 1.5) -> dict[str, Any]:
    """`dse export`: the saved student as one ONNX graph (z, y) -> guided image, and its agreement
    with PyTorch (`onnx_max_abs_diff`, onnxruntime on CPU)."""
    from dse.config import eval_from_dict
    from dse.metrics.export import check_onnx, export_onnx

    eval_from_dict({"guidance": guidance}, source="--guidance")  # finite and >= 0, as in a study
    if Path(out).is_dir():
        raise DseError(f"--out {out} is a folder; give the ONNX file to write, e.g. {Path(out) / ONNX_FILE}")
    model, _ = load_student(path)
    info = export_onnx(model, out, guidance=guidance)
    g = model.geometry
    info["onnx_max_abs_diff"] = check_onnx(model, out, guidance)
    info["z_shape"] = f"(B, {g.channels}, {g.image_size}, {g.image_size})"
    return info
