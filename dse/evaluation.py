"""Owns measuring a trained student as a whole: its self-describing checkpoint file, the PNG sample
grid, image quality (FID / KID / IS) and speed (PyTorch latency, ONNX export and onnxruntime
latency). Trials, the study's latency pass and `dse eval CHECKPOINT` all measure through here, so a
row means the same thing whichever way it was made (protocols: docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from dse.config import EvalConfig
from dse.device import resolve_device
from dse.errors import DseError, one_line
from dse.events import COMPLETE
from dse.fileio import check_folder
from dse.layout import ONNX_FILE, SAMPLES_FILE, STUDENT_CONFIG_FILE, STUDENT_FILE, STUDENT_WEIGHTS_FILE
from dse.sizing import arch_columns
from dse.types import Geometry, StudentArch

STUDENT_FORMAT = "dse-student-v1"


def student_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config): the safetensors form of the student saved at `path`, beside it with the same
    stem (`student.pt` -> `student.safetensors` + `student.json`)."""
    p = Path(path)
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_student(path: str | Path, model, *, dataset: str, data_root: str = "", trial_id: str = "") -> Path:
    """Write the (EMA) student with what is needed to rebuild and measure it, atomically, in two forms
    (docs/formats.md): `path` itself, a `torch.save` of a plain dict of strings, numbers and tensors that
    loads with `torch.load(..., weights_only=True)`; and beside it (`student_files`) the same weights as
    safetensors plus a JSON configuration holding their sha256. A `path` ending in `.safetensors` writes
    the safetensors pair only. Returns `path`.
    """
    import torch
    from safetensors.torch import save as safetensors_bytes

    from dse.fileio import atomic_write

    config = {
        "format": STUDENT_FORMAT, "dataset": dataset, "data_root": data_root, "trial_id": trial_id,
        "arch": dataclasses.asdict(model.arch), "geometry": dataclasses.asdict(model.geometry),
        "label_dropout": float(model.y_embedder.dropout_prob),
    }
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    weights_path, config_path = student_files(path)
    data = safetensors_bytes(weights, metadata={"format": STUDENT_FORMAT})
    atomic_write(weights_path, data)  # the weights first, then the JSON that vouches for them
    record = {**config, "student_time": _student_time(), "weights_bytes": len(data),
              "weights_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(config_path, json.dumps(record, indent=2) + "\n")
    if path.suffix == ".safetensors":
        return path
    buffer = io.BytesIO()
    torch.save({**config, "model": weights}, buffer)
    atomic_write(path, buffer.getvalue())
    return path


def _student_time() -> float:
    from dse.models.dit import STUDENT_TIME

    return float(STUDENT_TIME)


def load_student(path: str | Path):
    """(DiT in eval mode on CPU, the file's metadata) from what `save_student` wrote: the `.pt` file,
    the `.safetensors` file (or its `.json`), or a folder holding `student.safetensors` (else
    `student.pt`), such as a trial's artifacts folder.

    Anything else (a missing file, a trainer checkpoint, a damaged, changed or foreign file) is a DseError
    that says what was expected; nothing in the file is executed (weights-only loading, no pickle).
    """
    from dse.fileio import load_format_file

    p = Path(path)
    if p.is_dir():
        if (p / STUDENT_WEIGHTS_FILE).is_file():
            return _load_safetensors_student(p / STUDENT_WEIGHTS_FILE)
        if not (p / STUDENT_FILE).is_file():
            raise DseError(f"folder {p} holds no dse student ({STUDENT_WEIGHTS_FILE} or {STUDENT_FILE}); give a trial's "
                           "artifacts folder results/<study>/artifacts/<trial> or one of those files")
        p = p / STUDENT_FILE
    if p.suffix in (".safetensors", ".json"):
        return _load_safetensors_student(student_files(p)[0])
    state = load_format_file(p, STUDENT_FORMAT, "dse student checkpoint",
                             f"a trial writes results/<study>/artifacts/<trial>/{STUDENT_FILE}")
    return _build_student(p, state, state.get("model"))


def _load_safetensors_student(weights_path: Path):
    """The student of a safetensors file and the JSON beside it (`student_files`); both are checked:
    the JSON's format and the weights' size and sha256, then the shapes (weights only, no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    weights_path, config_path = student_files(weights_path)
    hint = f"a trial writes results/<study>/artifacts/<trial>/{STUDENT_WEIGHTS_FILE} and {STUDENT_CONFIG_FILE}"
    for p, what in ((weights_path, "weights"), (config_path, "configuration")):
        if not p.is_file():
            raise DseError(f"dse student {what} {p} not found; {hint}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise DseError(f"{config_path} is corrupt, not a {STUDENT_FORMAT} configuration ({one_line(exc)})") from None
    if not isinstance(config, dict) or config.get("format") != STUDENT_FORMAT:
        raise DseError(f"{config_path} is not a dse student configuration ({STUDENT_FORMAT})")
    data = weights_path.read_bytes()
    if (len(data), hashlib.sha256(data).hexdigest()) != (config.get("weights_bytes"), config.get("weights_sha256")):
        raise DseError(f"{weights_path} ({len(data):,} bytes) is not the file {config_path.name} describes "
                       f"({config.get('weights_bytes')} bytes, sha256 {str(config.get('weights_sha256'))[:12]}...): "
                       "it was changed, truncated or replaced; save the student again")
    try:
        weights = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise DseError(f"{weights_path} is corrupt, not safetensors ({one_line(exc)})") from None
    return _build_student(weights_path, config, weights)


def _build_student(p: Path, state: dict, weights):
    from dse.models.dit import DiT

    try:
        arch, geometry = StudentArch(**state["arch"]), Geometry(**state["geometry"])
        model = DiT(arch, geometry, label_dropout=float(state.get("label_dropout", 0.1)))
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError, AssertionError, DseError) as exc:
        raise DseError(f"{p}: damaged {STUDENT_FORMAT} checkpoint ({one_line(exc)})") from None
    meta = {k: str(state.get(k, "") or "") for k in ("dataset", "data_root", "trial_id")}
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
