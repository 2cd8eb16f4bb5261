"""Owns the estimate of how long a study takes on this machine, made before it runs and without
writing anything: a few timed training steps of real students, scaled to every trial by FLOPs.

How: each distinct architecture (up to `MAX_TIMED` of them, spread over the FLOPs) is built and
trained for `TIMED_STEPS` steps (after `WARMUP_STEPS`) on random data, with AdamW, the EMA and an
L2 loss, on the study's device and with the CPU threads a trial gets, at its batch size (on a CPU
at most `CPU_TIMED_BATCH`: the cost is linear in it there). That gives this machine's rate in FLOPs
per second for that shape (a deep, narrow student runs far below a wide one), with training counted
as `TRAIN_FLOPS_PER_FORWARD` forward passes (`dse.sizing.forward_flops`); an architecture not timed
takes the rate of the timed one nearest in FLOPs. Every other cost of a trial is FLOPs at its rate: each trial's training steps, its FID samples (guided: two forward
passes per image) plus the feature extractor on each of them, its sample grid, the latency pass
(`latency_repeats` timed runs, plus onnxruntime's), and the teacher pairs if the store does not
hold them yet (empirical teacher: the posterior mean over a class's training images, per sampler
step). Not counted: LPIPS losses, the extra networks of the DMD and TA setups, reference
statistics computed the first time, Ray's start. So it is an estimate, good to a small factor.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

from dse.config import StudyConfig
from dse.device import resolve_device
from dse.progress import format_duration
from dse.search import estimate_train_bytes, trial_resources
from dse.sizing import forward_flops
from dse.trial import TrialSpec

WARMUP_STEPS = 1
TIMED_STEPS = 3
MAX_TIMED = 6  # distinct architectures timed per estimate (the others take the nearest one's rate)
CPU_TIMED_BATCH = 64  # on a CPU, time at most this batch (the cost is linear in it): a few seconds at most
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (twice the forward's matmuls), the usual rule
INCEPTION_FLOPS = 11.5e9  # Inception-v3 on one 299x299 image (5.7 G multiply-adds)
DIGITS_CLASSIFIER_FLOPS = 2.6e6  # dse.metrics.extractors.DigitsClassifier on one 8x8 image
TRAIN_IMAGES = {"digits": 1797, "fashion-mnist": 60000, "cifar10": 50000}  # the empirical teacher's data
SCALAR_FLOPS_PER_IMAGE_ELEMENT = 4  # empirical teacher: distance and weighted sum, per training image


@dataclass(frozen=True)
class Machine:
    """What trials get here: CPUs, GPUs and the memory of one GPU."""

    cpus: int
    gpus: int
    gpu_bytes: int

    @classmethod
    def here(cls) -> "Machine":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpu_bytes = int(torch.cuda.get_device_properties(0).total_memory) if gpus else 0
        return cls(os.cpu_count() or 1, gpus, gpu_bytes)


@dataclass(frozen=True)
class TrialEstimate:
    trial_id: str
    params: int
    cpus: float
    gpus: float
    train_s: float
    eval_s: float  # FID samples, extractor, sample grid
    latency_s: float  # its share of the study's latency pass

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.latency_s


@dataclass(frozen=True)
class StudyEstimate:
    trials: list[TrialEstimate]
    parallel: int  # trials at once on this machine
    pairs_s: float | None  # None: pairs exist; nan: not estimated (teacher kind)
    flops_per_s: float
    timed: str  # what was timed, e.g. "d5-w64-h8 on cpu, 2 threads"
    device: str

    @property
    def study_s(self) -> float:
        """Pairs, then the trials' training and FID on `parallel` slots (longest first), then the latency pass."""
        slots = [0.0] * max(1, self.parallel)
        for t in sorted(self.trials, key=lambda t: -(t.train_s + t.eval_s)):
            slots[slots.index(min(slots))] += t.train_s + t.eval_s
        pairs = self.pairs_s if self.pairs_s is not None and math.isfinite(self.pairs_s) else 0.0
        return pairs + max(slots) + sum(t.latency_s for t in self.trials)

    def pairs_text(self) -> str:
        if self.pairs_s is None:
            return "the teacher pairs exist"
        if not math.isfinite(self.pairs_s):
            return "the teacher pairs: time not estimated for this teacher"
        return f"the teacher pairs ~{format_duration(self.pairs_s)} of it"

    def method(self) -> str:
        return (f"an estimate from {TIMED_STEPS} timed training steps of {self.timed} "
                f"(about {self.flops_per_s / 1e9:,.1f} GFLOP/s), scaled by each candidate's FLOPs; "
                "LPIPS and the DMD/TA networks are not counted")


def time_training(spec: TrialSpec, device: str, threads: int = 0) -> float:
    """Seconds per trained image of `spec`'s student on `device`: `TIMED_STEPS` steps after
    `WARMUP_STEPS` at its batch size (on a CPU at most `CPU_TIMED_BATCH`), on random data; writes nothing."""
    import torch

    from dse.models.dit import DiT
    from dse.training import TrainState, autocast

    dev = resolve_device(device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g, b = spec.geometry, spec.train.batch_size if dev.type == "cuda" else min(spec.train.batch_size, CPU_TIMED_BATCH)
        gen = torch.Generator().manual_seed(0)
        student = DiT(spec.arch, g, label_dropout=spec.train.label_dropout).to(dev).train()
        state = TrainState(student, lr=spec.train.lr, weight_decay=spec.train.weight_decay,
                           ema_decay=spec.train.ema_decay)
        z = torch.randn(b, g.channels, g.image_size, g.image_size, generator=gen).to(dev)
        x = torch.randn(b, g.channels, g.image_size, g.image_size, generator=gen).to(dev)
        y = torch.randint(0, g.num_classes, (b,), generator=gen).to(dev)

        def step() -> None:
            with autocast(dev):
                loss = ((student(z, y) - x) ** 2).mean()
            state.step(loss)  # the trainer's own step: AdamW, then the EMA
            state.update_ema()
            loss.item()  # waits for the device

        for _ in range(WARMUP_STEPS):
            step()
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step()
        return (time.perf_counter() - start) / (TIMED_STEPS * b)
    finally:
        torch.set_num_threads(before)
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the trials get the GPU's memory back


def _extractor_flops(cfg: StudyConfig) -> float:
    from dse.metrics.extractors import AUTO_EXTRACTORS, DIGITS_EXTRACTOR

    name = AUTO_EXTRACTORS.get(cfg.dataset, "") if cfg.eval.extractor == "auto" else cfg.eval.extractor
    return DIGITS_CLASSIFIER_FLOPS if name == DIGITS_EXTRACTOR else INCEPTION_FLOPS


def _stored_pairs(cfg: StudyConfig) -> int:
    """How many pairs the study's store holds now (0: none or unreadable); reads the manifest only."""
    from dse.data.pairs import MANIFEST

    try:
        return int(json.loads((cfg.pairs_dir() / MANIFEST).read_text())["num_pairs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def pairs_flops(cfg: StudyConfig) -> float | None:
    """FLOPs of the teacher pairs still to make: None when the store holds them, nan when the teacher
    kind's cost is not modelled (trained, external)."""
    t = cfg.teacher
    missing = 0 if t.kind == "store" else t.num_pairs - _stored_pairs(cfg)
    if missing <= 0:
        return None
    if t.kind != "empirical" or cfg.dataset not in TRAIN_IMAGES:
        return math.nan
    from dse.data.datasets import dataset_geometry

    g = dataset_geometry(cfg.dataset)
    per_class = TRAIN_IMAGES[cfg.dataset] / g.num_classes
    evaluations = 2 * t.num_steps - 1  # Heun: NFE = 2 x steps - 1
    return missing * evaluations * SCALAR_FLOPS_PER_IMAGE_ELEMENT * per_class * g.image_size ** 2 * g.channels


def trial_steps(spec: TrialSpec, cfg: StudyConfig) -> int:
    """The training steps of a trial: `train.steps`, or its epochs over the pairs the study will have."""
    if spec.train.epochs <= 0:
        return spec.train.steps
    num_pairs = _stored_pairs(cfg) if cfg.teacher.kind == "store" else cfg.teacher.num_pairs
    size = max(1, min(spec.train.batch_size, num_pairs or spec.train.batch_size))
    return max(1, round(spec.train.epochs * max(1, num_pairs // size)))


def estimate_study(cfg: StudyConfig, specs: list[TrialSpec], machine: Machine | None = None,
                   image_seconds: float | None = None) -> StudyEstimate:
    """Each trial's time and the study's on this machine (see the module docstring); `image_seconds`
    (seconds per trained image of the median candidate) replaces the timing (tests). Writes nothing,
    starts no Ray."""
    from dse.sizing import count_params

    m = machine or Machine.here()
    r = cfg.run
    resources = {
        s.trial_id: trial_resources(
            estimate_train_bytes(s.arch, s.geometry, s.train) if r.gpus_per_trial < 0 else 0,
            cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial, node_cpus=m.cpus,
            node_gpus=m.gpus, gpu_bytes=m.gpu_bytes)
        for s in specs
    }
    if not specs:
        return StudyEstimate([], 1, None, math.nan, "nothing", r.device)
    flops = {s.trial_id: forward_flops(s.arch, s.geometry) for s in specs}
    device = str(resolve_device(r.device))
    threads = max(1, int(max(resources[s.trial_id][0] for s in specs)))
    rate_of, timed_ids = _rates(specs, flops, device, threads, image_seconds)  # trial_id -> FLOPs per second
    timed = sorted({s.arch.name for s in specs if s.trial_id in timed_ids})

    e, extractor = cfg.eval, _extractor_flops(cfg)
    per_arch: dict = {}
    for s in specs:  # latency is measured once per architecture (before training): each trial takes its share
        per_arch[s.arch] = per_arch.get(s.arch, 0) + 1
    trials = []
    for s in specs:
        f = flops[s.trial_id]
        train = trial_steps(s, cfg) * TRAIN_FLOPS_PER_FORWARD * f * s.train.batch_size
        guided = 2 * f  # classifier-free guidance: a conditional and an unconditional pass
        grid = e.samples_per_class * s.geometry.num_classes
        quality = e.num_samples * (guided + extractor) + grid * guided
        latency_images = e.latency_num_images * (e.latency_repeats + 1) + (
            (e.onnx_num_images or e.latency_num_images) if e.onnx and e.latency_runtime == "torch" else 0)
        cpus, gpus = resources[s.trial_id]
        rate = rate_of[s.trial_id]
        trials.append(TrialEstimate(s.trial_id, count_params(s.arch, s.geometry), cpus, gpus,
                                    train / rate, quality / rate, latency_images * guided / rate / per_arch[s.arch]))
    cpus, gpus = max(t.cpus for t in trials), max(t.gpus for t in trials)
    parallel = int(m.cpus // cpus) if cpus else 1
    if gpus > 0:
        parallel = min(parallel, int(m.gpus // gpus)) if m.gpus else 1
    pairs = pairs_flops(cfg)
    middle = sorted(rate_of.values())[len(rate_of) // 2]  # the pairs are no student's: a middle rate
    shown = ", ".join(timed[:3]) + (f" and {len(timed) - 3} more" if len(timed) > 3 else "")
    where = f"{shown} on {device}" + ("" if device.startswith("cuda") else f", {threads} threads")
    return StudyEstimate(trials, max(1, parallel), None if pairs is None else pairs / middle, middle, where, device)


def _rates(specs: list[TrialSpec], flops: dict[str, float], device: str, threads: int,
           image_seconds: float | None) -> tuple[dict[str, float], set[str]]:
    """(trial_id -> this machine's training rate in FLOPs per second, the ids whose architecture was
    timed). Small, deep students run far below the rate of wide ones (per-layer overhead), so up to
    `MAX_TIMED` distinct architectures, spread over the FLOPs, are timed (`time_training`), and every
    other spec takes the rate of the timed one nearest in log-FLOPs. `image_seconds` (seconds per
    trained image of the median spec) replaces the timing with one rate for all (tests)."""
    by_flops = sorted(specs, key=lambda s: flops[s.trial_id])
    if image_seconds is not None:
        median = by_flops[len(by_flops) // 2]
        rate = TRAIN_FLOPS_PER_FORWARD * flops[median.trial_id] / max(image_seconds, 1e-12)
        return {s.trial_id: rate for s in specs}, {median.trial_id}
    distinct = list({(s.arch, s.geometry): s for s in by_flops}.values())
    picks = distinct if len(distinct) <= MAX_TIMED else [
        distinct[round(i * (len(distinct) - 1) / (MAX_TIMED - 1))] for i in range(MAX_TIMED)]
    measured = {p.trial_id: TRAIN_FLOPS_PER_FORWARD * flops[p.trial_id] / max(time_training(p, device, threads), 1e-12)
                for p in picks}

    def nearest(s: TrialSpec) -> TrialSpec:  # the same architecture if it was timed
        return min(picks, key=lambda p: (abs(math.log(flops[p.trial_id] / flops[s.trial_id])),
                                         (p.arch, p.geometry) != (s.arch, s.geometry)))

    return {s.trial_id: measured[nearest(s).trial_id] for s in specs}, set(measured)
