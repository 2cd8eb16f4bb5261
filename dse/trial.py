"""Owns one trial, the one place where the stages meet: pairs -> student -> distillation ->
image quality, latency and size -> one store row. A plain function of a frozen spec (no Ray here).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import platform
import shutil
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import dse
import dse.evaluation as evaluation
from dse.config import EvalConfig, TrainConfig, eval_from_dict
from dse.convergence import curve_json, curve_trend
from dse.device import resolve_device
from dse.events import COMPLETE, FAILED, QUALITY, TRAIN
from dse.layout import ONNX_FILE, SAMPLES_FILE, STUDENT_FILE
from dse.sizing import arch_columns
from dse.types import Geometry, StudentArch


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs; the same spec gives the same row (up to timings)."""

    study: str
    dataset: str
    geometry: Geometry
    arch: StudentArch
    train: TrainConfig
    eval: EvalConfig
    pairs_dir: str
    budget: int
    proposed: bool = False
    device: str = "auto"
    threads: int = 0  # 0: leave torch's default
    artifacts_dir: str = ""  # where the trial keeps its checkpoint; "" keeps none
    variant: str = ""  # the name of its training setting in the study
    data_root: str = ""  # where the data set lives (for the FID reference); "" = the default
    defer_latency: bool = False  # True: the study measures latency (before training: `latency`), not the trial
    # the study's latency measurement of this architecture, as (column, value) pairs of the row (dse.study's
    # latency-first pass; empty when not measured); every row of the trial carries it, also failed and stopped ones
    latency: tuple[tuple[str, Any], ...] = ()

    @property
    def latency_row(self) -> dict[str, Any]:
        return dict(self.latency)

    @property
    def trial_id(self) -> str:
        """Readable and unique: architecture, setup, loss and a hash of everything that shapes the row."""
        return self._named_hash(leave_out=())

    @property
    def candidate_id(self) -> str:
        """The point this trial's row belongs to: like `trial_id`, but the hash leaves out `train.seed`,
        so every training seed of one candidate x training shares it."""
        return self._named_hash(leave_out=("seed",))

    def _named_hash(self, leave_out: tuple[str, ...]) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_ID}
        for section, added in _ADDED_LATER.items():  # keys newer than a stored study, at their old behaviour
            fields[section] = {k: v for k, v in fields[section].items() if added.get(k, _ABSENT) != v}
        fields["train"] = {k: v for k, v in fields["train"].items() if k not in leave_out}
        fields["eval"] = {k: v for k, v in fields["eval"].items() if k not in _LATENCY_ONLY_EVAL}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.arch.name}-{self.train.setup}-{self.train.loss}-{digest}"


# Fields that say where or how a trial runs, not what it computes: not part of its id.
_NOT_IN_ID = ("study", "device", "threads", "proposed", "budget", "artifacts_dir", "variant", "data_root", "defer_latency",
              "latency")
# [eval] keys that say only where and how latency is measured (issue 13, measured before training and
# cached per architecture): never part of a trial's id, so changing the runtime does not train anything again.
_LATENCY_ONLY_EVAL = ("latency_runtime", "latency_command", "latency_device_name", "latency_timeout", "latency_recheck")
# Keys added to [train] / [eval] after studies were stored, each with its default when it was added
# (written here, not read from the config: a later change of the default must not move old ids). At
# that value a key is left out of the ids, so a study stored before the key existed keeps its trial ids
# and resumes instead of running again; any other value changes them, as every setting does.
_ADDED_LATER: dict[str, dict[str, Any]] = {
    "train": {"compile": False},  # issue 14: torch.compile changes float rounding, not what is trained
    "eval": {"fid_bootstrap": 100},  # issue 12: fid_std / fid_ci_* beside the same fid
}
_ABSENT = object()


@dataclass
class TrialResult:
    row: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.row["status"] == COMPLETE


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_sha() -> str | None:
    """The commit of the dse checkout in use, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def base_row(spec: TrialSpec) -> dict[str, Any]:
    t = spec.train
    return {
        "trial_id": spec.trial_id, "candidate_id": spec.candidate_id, "study": spec.study, "dataset": spec.dataset,
        **arch_columns(spec.arch, spec.geometry),
        "setup": t.setup, "loss": t.loss, "variant": spec.variant, "budget": spec.budget, "proposed": spec.proposed,
        "steps": t.steps, "batch_size": t.batch_size, "lr": t.lr, "weight_decay": t.weight_decay,
        "ema_decay": t.ema_decay, "label_dropout": t.label_dropout, "seed": t.seed, "pairs_dir": spec.pairs_dir,
        "config_json": json.dumps({k: v for k, v in dataclasses.asdict(spec).items() if k != "latency"}, sort_keys=True),
        "guidance": spec.eval.guidance, **spec.latency_row,
        "host": socket.gethostname(), "started_at": _now(), "dse_version": dse.__version__,
        "python_version": platform.python_version(), "git_sha": git_sha(),
    }


def run_trial(spec: TrialSpec, progress: Callable[[str, dict], None] | None = None, *,
              gpu_share: float = 1.0) -> TrialResult:
    """Train and measure one candidate. Never raises for a failing candidate: the row then has
    status FAILED and the error, so a study goes on with the other trials. `gpu_share`: the fraction of
    its GPU the trial was given (its pairs go onto the GPU only if they fit that share)."""
    row = base_row(spec)
    try:
        row.update(_train_and_measure(spec, progress, gpu_share))
        row["status"], row["error"] = COMPLETE, None
    except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, not propagated
        row["status"] = FAILED
        row["error"] = failure_text(exc, spec.artifacts_dir)
        if progress:
            progress(FAILED, {"error": row["error"], "traceback": traceback.format_exc()})
    row["finished_at"] = _now()
    return TrialResult(row)


def run_cohort(specs: list[TrialSpec], progress: Callable[[str, str, dict], None] | None = None, *,
               gpu_share: float = 1.0) -> list[TrialResult]:
    """Train the compatible `specs` (`dse.cohorts.compatible`) together as one cohort
    (`dse.distill.cohort.train_cohort`: one batched model, each member equal to its trial run alone up to
    float rounding), then measure each member: one row per spec, as `run_trial` gives it, with
    `cohort_id` (the first member's trial id) and `cohort_size`. `progress(trial_id, kind, data)`.
    A member whose loss diverges fails alone; a failure of the cohort's training fails every member.
    One spec is `run_trial`."""
    if len(specs) == 1:
        one = specs[0]
        return [run_trial(one, (lambda kind, data: progress(one.trial_id, kind, data)) if progress else None,
                          gpu_share=gpu_share)]
    from dse.cohorts import compatible

    rows = [base_row(s) for s in specs]
    cohort = (specs[0].trial_id, len(specs))

    def fail(i: int, exc: BaseException) -> None:
        rows[i].update(status=FAILED, error=failure_text(exc, specs[i].artifacts_dir), cohort_id=cohort[0],
                       cohort_size=cohort[1])
        if progress:
            progress(specs[i].trial_id, FAILED, {"error": rows[i]["error"], "traceback": traceback.format_exc()})

    try:
        if not compatible(specs):
            raise ValueError("these trials cannot train as one cohort (dse.cohorts.compatible)")
        from dse.distill.cohort import train_cohort

        device, pairs, first = _prepare(specs[0])  # compatible members share device, threads and pairs
        students = [first, *(_initial_student(s) for s in specs[1:])]
        ids = [s.trial_id for s in specs]

        def on_step(step: int, losses: list[float]) -> None:
            if progress:
                for tid, loss in zip(ids, losses):
                    if math.isfinite(loss):
                        progress(tid, TRAIN, {"step": step, "loss": loss})

        dirs = [Path(s.artifacts_dir) if s.artifacts_dir else None for s in specs]
        outcomes = train_cohort(students, pairs, [s.train for s in specs], device,
                                progress=on_step, checkpoint_dirs=dirs, memory_share=gpu_share)
    except Exception as exc:  # noqa: BLE001 - the cohort could not train: every member fails saying why
        for i in range(len(specs)):
            fail(i, exc)
            rows[i]["finished_at"] = _now()
        return [TrialResult(r) for r in rows]
    for i, (spec, trained) in enumerate(zip(specs, outcomes)):
        member = (lambda kind, data, tid=spec.trial_id: progress(tid, kind, data)) if progress else None
        try:
            if isinstance(trained, BaseException):
                raise trained
            rows[i].update(_measure(spec, trained, pairs, device, member, cohort))
            rows[i]["status"], rows[i]["error"] = COMPLETE, None
        except Exception as exc:  # noqa: BLE001 - recorded in the member's row, as run_trial does
            fail(i, exc)
        rows[i]["finished_at"] = _now()
    return [TrialResult(r) for r in rows]


# OS errors that say the machine, not the candidate, failed a trial: errno -> what the row says.
MACHINE_ERRORS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOTDIR: "not a folder",
    errno.EIO: "input/output error",
}
# How torch.save says that a write came up short (a full disk), without naming the file or the disk.
TORCH_WRITE_FAILED = ("inline_container.cc", "file write failed", "unexpected pos")
LOW_DISK_BYTES = 64 * 2**20  # less free space than this after a failed write: the disk is full


def failure_text(exc: BaseException, folder: str | Path = "") -> str:
    """A failed trial's error: the machine's reason with the path when `exc` (or its cause) is an OS
    failure from `MACHINE_ERRORS`, or torch's short-write error while the disk of `folder` (the trial's
    artifacts) is full ("no space left on device while writing <path>"); else "<type>: <message>"."""
    seen = exc
    for _ in range(8):  # the exception and the ones it was raised from
        if isinstance(seen, OSError) and seen.errno in MACHINE_ERRORS:
            return f"{MACHINE_ERRORS[seen.errno]} while writing {seen.filename or folder or 'a file'}"
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            break
    message = str(exc).strip()
    text = f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"  # torch's first line
    if isinstance(exc, RuntimeError) and folder and any(s in str(exc) for s in TORCH_WRITE_FAILED):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return f"writing {folder} failed ({text})"
        if free < LOW_DISK_BYTES:
            return f"no space left on device while writing {folder} ({free // 2**10} KiB free; {text})"
        return f"writing {folder} failed with {free // 2**20} MiB free ({text})"
    return f"{type(exc).__name__}: {exc}"


def _train_and_measure(spec: TrialSpec, progress: Callable[[str, dict], None] | None,
                       gpu_share: float = 1.0) -> dict[str, Any]:
    from dse.distill.train import train_student

    device, pairs, student = _prepare(spec)

    def on_step(step: int, loss: float) -> None:
        if progress:
            progress(TRAIN, {"step": step, "loss": loss})

    artifacts = Path(spec.artifacts_dir) if spec.artifacts_dir else None
    trained = train_student(student, pairs, spec.train, device, progress=on_step, checkpoint_dir=artifacts,
                            memory_share=gpu_share)
    return _measure(spec, trained, pairs, device, progress, cohort=(spec.trial_id, 1))


def _prepare(spec: TrialSpec):
    """(device, pairs, the student's initial weights seeded by its train.seed) of a trial."""
    import torch

    from dse.data.pairs import PairStore

    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    pairs = PairStore.open(spec.pairs_dir)
    return device, pairs, _initial_student(spec)


def _initial_student(spec: TrialSpec):
    """The trial's student DiT with its initial weights, seeded by its train.seed."""
    import torch

    from dse.models.dit import DiT

    torch.manual_seed(spec.train.seed)
    return DiT(spec.arch, spec.geometry, label_dropout=spec.train.label_dropout)


def _measure(spec: TrialSpec, trained, pairs, device, progress: Callable[[str, dict], None] | None,
             cohort: tuple[str, int]) -> dict[str, Any]:
    """The row's measurements of a trained student (`TrainOutcome`): size, training, image quality,
    speed, its checkpoint and samples; `cohort` = (cohort_id, cohort_size) it trained in."""
    import torch

    from dse.models.dit import count_module_params

    artifacts = Path(spec.artifacts_dir) if spec.artifacts_dir else None
    row: dict[str, Any] = {
        "params": count_module_params(trained.ema),
        "pairs_teacher": pairs.manifest["teacher"]["kind"], "pairs_num": len(pairs),
        "steps": trained.steps, "final_loss": trained.final_loss, "train_seconds": trained.seconds,
        "train_images_per_s": trained.images_per_second, "device": str(device), "torch_version": torch.__version__,
        "cohort_id": cohort[0], "cohort_size": cohort[1],
    }
    still_improving, trend = curve_trend(trained.curve)
    row.update(loss_curve=curve_json(trained.curve), still_improving=still_improving,
               loss_trend=trend if math.isfinite(trend) else None)
    eval_start = time.perf_counter()
    if artifacts is not None:
        row["checkpoint"] = str(evaluation.save_student(
            artifacts / STUDENT_FILE, trained.ema, dataset=spec.dataset, data_root=spec.data_root,
            trial_id=spec.trial_id,
        ))
        row["samples_png"] = evaluation.write_samples(trained.ema, artifacts / SAMPLES_FILE, spec.eval, device)
    row.update(evaluation.measure_quality(trained.ema, spec.dataset, spec.eval, data_root=spec.data_root, device=device))
    if progress:
        progress(QUALITY, {k: row.get(k) for k in ("fid", "kid", "is_mean")})
    if not spec.defer_latency:
        onnx_path = artifacts / ONNX_FILE if artifacts is not None else None
        row.update(evaluation.measure_speed(trained.ema, spec.eval, device=device, onnx_path=onnx_path))
    elif spec.eval.onnx and artifacts is not None:  # the deployable graph of the trained student, not timed here
        row.update(evaluation.export_checked(trained.ema, artifacts / ONNX_FILE, guidance=spec.eval.guidance))
    row["eval_seconds"] = time.perf_counter() - eval_start
    return row


def measure_trained_latency(row: dict[str, Any], device: str = "auto", artifacts_dir: str | Path | None = None,
                            ) -> dict[str, Any]:
    """The row of a complete trial with the latency of its TRAINED student (`latency_trained_s`,
    `latency_trained_s_std`), by the protocol and runtime of its own [eval] config, beside the latency the
    study measured before training on fresh weights (the two agree within the noise: the time does not
    depend on the weights). The student is read from `artifacts_dir` (the study's layout gives it),
    whatever path the (possibly edited) row names. A failure marks the row failed with the error."""
    from dse.metrics.runtimes import measure, protocol_of

    row = dict(row)
    try:
        cfg = eval_from_dict(json.loads(row["config_json"])["eval"], source=f"trial {row['trial_id']}")
        checkpoint = Path(artifacts_dir) / STUDENT_FILE if artifacts_dir is not None else Path(row["checkpoint"])
        model, _ = evaluation.load_student(checkpoint)
        dev = resolve_device(device)
        result = measure(model.to(dev), protocol_of(cfg), dev, work_dir=checkpoint.parent)
        row.update(latency_trained_s=result["latency_s"], latency_trained_s_std=result["latency_s_std"])
    except Exception as exc:  # noqa: BLE001 - recorded in the row like any failure of a trial
        row["status"], row["error"] = FAILED, f"latency: {type(exc).__name__}: {exc}"
    return row
