"""Benchmark dse on one GPU (issue 14): training images/s of the paper's students eager and compiled, alone
and in cohorts, beside the FLOP floor; packed trial processes with and without CUDA MPS; the latency of 50k
guided images for the paper's Table 6 students; the wall time of an FID-50k; what LPIPS costs per image.

    .venv/bin/python bench/gpu.py                        # on a GPU, one call: under 8 minutes on an H100/H200
    .venv/bin/python bench/gpu.py --device cpu --quick   # every code path in CI time (tests/test_bench_gpu.py)
    .venv/bin/python bench/gpu.py --sections train,latency --budget 200   # a part of it

Prints a table per section and writes bench/results/gpu-<device>.json ("h100", "h200", "a100", another GPU's
name slugified, "cpu"; "-quick" appended with --quick; `--out PATH` writes elsewhere), after every section,
so a run cut short keeps what it measured. Each figure with a target (issue 14) stores the target, its ratio
to it ("x of target") and whether it meets it.

Sections (each gets a share of `--budget` seconds, what an earlier one leaves unused passing on to the later
ones; a section whose time is spent records what it skipped):
1. train: images/s of a whole GET training step (batch from the pairs resident on the GPU, forward under
   bf16 autocast, loss, backward, fused AdamW, EMA) for (5,64,8) and (7,192,12) on CIFAR-10-sized pairs
   (32x32x3, 10 classes), loss l2 and lpips (alex at 224, as GET), eager and compiled (`train.compile`:
   torch.compile, CUDA graphs on a GPU), cohort 1 (`train_student`) and 4 / 8 (`train_cohort`, images/s
   of all members together). The clock starts after the warm-up steps, when the trainer has read the
   losses (the device is idle) and stops when it has read them at the last step; `first_steps_s` is the
   wall time up to the end of warm-up (set-up, compilation, warm-up steps) and `compile_s` the compiled
   row's first_steps_s less the eager one's (about 0 for lpips, which reuses the l2 row's compiled
   student). Dynamo's caches are reset before each compiled (arch, cohort), so each compiles its static
   shapes as a trial would. (7,192,12), the targets' student, is measured first. The floor is peak / (3 x
   `dse.sizing.forward_flops`) images/s (forward + backward of the student's matmuls at the device's
   dense bf16 peak; LPIPS's own network is left out). A cohort that `dse.search.estimate_train_bytes`
   says does not fit in 90% of the free memory is skipped.
2. packed: N = 1/2/4/8 processes (`bench/gpu.py --worker ...`) at once, each training the same
   (5,64,8) l2 student; they start their timed steps together (a file barrier after warm-up); total
   images/s = all images / (last end - first start). Then again under CUDA MPS (its daemon started with
   `nvidia-cuda-mps-control -d`, CUDA_MPS_PIPE_DIRECTORY and CUDA_MPS_LOG_DIRECTORY in a temporary folder,
   stopped with `echo quit | nvidia-cuda-mps-control`); where MPS cannot run the JSON says why.
3. latency: `dse.metrics.latency.measure_latency` (the torch runtime: noise on the device, guidance as one
   batch of 2B, warm-up, lower median of the repeats) of 50k images at batch 128 with guidance 1.5 for
   bench/latency.py's PAPER_TABLE6 students (random weights): (7,192,12) first in float32, bfloat16 and
   bfloat16 compiled, then the others in bfloat16, then in float32 (on the CPU: float32 only); TF32 on,
   as in a trial, which measures after training (`prepare_device`); beside the paper's Jetson Orin
   figure (Table 6) and, for DiT-Nano 5M, its A100 figure (Table 5: 3.66 s; GET, not a DiT and not
   measured here: 6.46 s). --quick times a few images and scales to 50k (`images_timed`, `scaled`).
4. fid: the wall time of an FID-50k as dse measures it (`dse.metrics.samples.sample_images` of (7,192,12)
   with guidance, then the feature extractor over the images in torch-fidelity's batches of dse's size),
   the extractor the one `dse.assets.inception.inception_weights` finds (never downloaded: DSE_OFFLINE is
   set); with no weights, generation only and the reason. The reference statistics are cached by dse
   after a study's first FID and left out. Features are extracted in chunks until done or the section's
   time is spent, then scaled to 50k (`scaled`).
5. lpips: forward + backward through `LPIPSLoss` (alex) on the prediction, as in training (bf16 autocast
   on a GPU), per image at sizes 64 / 128 / 224; and whether caching the teacher image's LPIPS features
   pays: a step with the target's features computed vs precomputed (the same distance, checked), and the
   bytes a cached image takes (float16) at each size, hence pairs per GB.

On the CPU (--device cpu) batches are tiny and timings CPU-sized; --quick also trims steps and images, uses
LPIPS at 64 px in the training rows, compiles only the small student, alone (inductor's compile on a CPU
takes 30-45 s a graph) and runs one torch thread; the JSON says so in `notes` and each skipped row's
`skipped`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dse.assets import OFFLINE_ENV  # noqa: E402
from dse.config import TrainConfig  # noqa: E402
from dse.distill.losses import LPIPSLoss  # noqa: E402
from dse.distill.train import prepare_device, train_student  # noqa: E402
from dse.errors import DseError, one_line  # noqa: E402
from dse.metrics.latency import measure_latency  # noqa: E402
from dse.models.dit import DiT  # noqa: E402
from dse.search import estimate_train_bytes  # noqa: E402
from dse.sizing import count_params, forward_flops  # noqa: E402
from dse.training import TrainingDiverged, autocast  # noqa: E402
from dse.types import StudentArch  # noqa: E402

try:
    from dse.distill.cohort import train_cohort  # noqa: E402
    COHORT_MISSING = None
except ImportError as _exc:  # the rows of cohorts 4 / 8 then say why
    train_cohort, COHORT_MISSING = None, f"dse.distill.cohort.train_cohort not importable: {one_line(_exc)}"


def _bench_module(name: str):
    """bench/<name>.py as a module (bench/ is no package); its main() does not run."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


_latency, _train = _bench_module("latency"), _bench_module("train")
PAPER_TABLE6 = _latency.PAPER_TABLE6  # (group, depth, width, heads, Jetson Orin seconds for 50k images)
GPU_PEAK_FLOPS = _latency.GPU_PEAK_FLOPS  # dense bf16 tensor-core peaks by GPU name
CIFAR = _latency.CIFAR  # 32x32x3, 10 classes, patch 2
PAPER_IMAGES, PAPER_BATCH, GUIDANCE = _latency.PAPER_IMAGES, _latency.PAPER_BATCH, _latency.GUIDANCE
random_student = _latency.student  # a Table 6 student with random weights everywhere
make_store = _train.make_store  # a pair store of n random CIFAR-sized pairs

ARCHS = (StudentArch(5, 64, 8), StudentArch(7, 192, 12))
KEY_ARCH = StudentArch(7, 192, 12)  # DiT-Nano 5M: the student the targets are about
PACKED_ARCH = StudentArch(5, 64, 8)
LOSSES = ("l2", "lpips")
COHORTS = (1, 4, 8)
LPIPS_SIZES = (64, 128, 224)
# issue 14's targets: (7,192,12) trained with l2 on one H100/H200; 50k images with guidance
TARGET_TRAIN_IMAGES_PER_S = 20_000
TARGET_LATENCY_S = 0.6
# paper Table 5: seconds for 50k images on an A100. GET (Geng et al. 2024) is an equilibrium transformer,
# not a DiT: its figure is shown, not measured.
PAPER_A100_S = {KEY_ARCH.name: 3.66}
PAPER_A100_OTHERS = {"GET 8.6M (Geng et al. 2024)": 6.46, "GET (paper's principles) 5.3M": 7.01}
SECTIONS = ("train", "packed", "latency", "fid", "lpips")
SHARES = {"train": 0.48, "packed": 0.17, "latency": 0.15, "fid": 0.12, "lpips": 0.08}  # of --budget
MEMORY_FRACTION = 0.9  # a training row runs when its estimated bytes fit in this share of the free memory


@dataclass(frozen=True)
class Plan:
    """How much each section does on this device."""

    batch: int  # per member
    warmup: int  # training steps before the clock starts (also the progress interval: losses read then)
    timed: dict[int, int]  # cohort size -> timed steps (a multiple of warmup)
    lpips_size: int  # of the lpips training rows
    compile_archs: tuple[str, ...]
    compile_cohorts: tuple[int, ...]
    packed: tuple[int, ...]
    packed_warmup: int
    packed_timed: int
    latency_images: int
    latency_repeats: int
    latency_dtypes: tuple[str, ...]  # every Table 6 student, in this order ((7,192,12) in float32 and bfloat16 first)
    latency_compile: bool  # (7,192,12) also compiled, in bfloat16
    fid_images: int
    fid_chunk: int
    lpips_batch: int
    lpips_steps: int
    budget_s: float
    threads: int = 0  # torch's CPU threads (0: torch's default)
    notes: tuple[str, ...] = ()


def plan_for(gpu: bool, quick: bool) -> Plan:
    if gpu:  # --quick on a GPU: a smoke run of every path, in about 3 minutes
        return Plan(batch=256, warmup=10 if not quick else 3,
                    timed={1: 40, 4: 20, 8: 10} if not quick else {1: 6, 4: 3, 8: 3}, lpips_size=224,
                    compile_archs=tuple(a.name for a in ARCHS), compile_cohorts=COHORTS,
                    packed=(1, 2, 4, 8), packed_warmup=10, packed_timed=60 if not quick else 10,
                    latency_images=PAPER_IMAGES if not quick else 4 * PAPER_BATCH,
                    latency_repeats=3 if not quick else 1, latency_dtypes=("bfloat16", "float32"),
                    latency_compile=not quick, fid_images=PAPER_IMAGES if not quick else 2000,
                    fid_chunk=5000 if not quick else 1000, lpips_batch=256, lpips_steps=10 if not quick else 3,
                    budget_s=400.0 if not quick else 150.0)
    quick_notes = (
        "CPU --quick: batch 2 per member, 1 warm-up and 1-2 timed steps; LPIPS at 64 px in the training rows",
        "CPU --quick: only d5-w64-h8 is compiled, alone (cohort 1; inductor's compile on a CPU takes 30-45 s a "
        "graph; a compiled cohort is what tests/distill/test_cohort.py compiles, with the same train.compile flag)",
        "CPU --quick: packed 1 and 2 processes; latency and FID timed on a few images and scaled to 50k",
        "CPU --quick: one torch thread (on a shared CI machine OpenMP's threads spin while another process holds a "
        "core: two threads ran a tiny step 20x slower than one)",
    )
    if quick:
        return Plan(batch=2, warmup=1, timed={1: 2, 4: 2, 8: 1}, lpips_size=64,
                    compile_archs=(ARCHS[0].name,), compile_cohorts=(1,),
                    packed=(1, 2), packed_warmup=1, packed_timed=2, latency_images=4, latency_repeats=1,
                    latency_dtypes=("float32",), latency_compile=False, fid_images=4, fid_chunk=4,
                    lpips_batch=2, lpips_steps=1, budget_s=600.0, threads=1, notes=quick_notes)
    return Plan(batch=32, warmup=2, timed={1: 4, 4: 2, 8: 2}, lpips_size=224,
                compile_archs=(ARCHS[0].name,), compile_cohorts=(1,), packed=(1, 2), packed_warmup=2, packed_timed=4,
                latency_images=PAPER_BATCH, latency_repeats=2, latency_dtypes=("float32",), latency_compile=False,
                fid_images=64, fid_chunk=64, lpips_batch=8, lpips_steps=2, budget_s=1800.0,
                notes=("CPU: batch 32, a few steps; only d5-w64-h8 compiled, at cohort 1",))


# ----------------------------------------------------------------------------------------------- helpers
class Budget:
    """The seconds a section may take; `spent()` says whether they are gone."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() >= self.seconds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from dse.metrics.runtimes import cpu_model

    return cpu_model()


def device_slug(device: torch.device, name: str) -> str:
    """"h100", "h200", "a100", another GPU's name slugified ("nvidia" left out), "cpu"."""
    if device.type != "cuda":
        return "cpu"
    low = name.lower()
    for key in ("h200", "h100", "a100"):
        if key in low:
            return key
    return re.sub(r"[^a-z0-9]+", "-", low.replace("nvidia", "")).strip("-") or "gpu"


def peak_flops(device: torch.device, name: str) -> float | None:
    if device.type != "cuda":
        return None
    return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def target_columns(value: float | None, target: float, higher_is_better: bool) -> dict[str, Any]:
    """The figure's target, its ratio to it (value / target) and whether it meets it."""
    if value is None or not math.isfinite(value):
        return {"target": target, "x_of_target": None, "meets_target": None}
    meets = value >= target if higher_is_better else value <= target
    return {"target": target, "x_of_target": value / target, "meets_target": bool(meets)}


def fmt(value: float | None, spec: str = ",.0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"[:400]


# ----------------------------------------------------------------------------------------- 1. training
def seeded_student(arch: StudentArch, seed: int) -> DiT:
    torch.manual_seed(seed)
    return DiT(arch, CIFAR)


def train_rate(arch: StudentArch, loss: str, cohort: int, compile_model: bool, plan: Plan, pairs,
               device: torch.device) -> dict[str, Any]:
    """Images/s of `cohort` students of `arch` trained together (cohort 1: `train_student` alone), over the
    steps after the warm-up; and the wall time up to the end of the warm-up."""
    timed = plan.timed[cohort]
    steps = plan.warmup + timed
    cfgs = [TrainConfig(loss=loss, batch_size=plan.batch, steps=steps, lr=1e-4, seed=k, lpips_size=plan.lpips_size,
                        compile=compile_model) for k in range(cohort)]
    students = [seeded_student(arch, k) for k in range(cohort)]
    marks: dict[int, float] = {}

    def progress(step: int, _losses) -> None:  # called just after the trainer read the losses: device idle
        marks[step] = time.perf_counter()

    resident = True if device.type == "cuda" else None
    start = time.perf_counter()
    if cohort == 1:
        outcomes = [train_student(students[0], pairs, cfgs[0], device, progress=progress,
                                  progress_every=plan.warmup, resident=resident)]
    else:
        if train_cohort is None:
            raise RuntimeError(COHORT_MISSING)
        outcomes = train_cohort(students, pairs, cfgs, device, progress=progress, progress_every=plan.warmup,
                                resident=resident)
    diverged = [str(o) for o in outcomes if isinstance(o, TrainingDiverged)]
    seconds = marks[steps] - marks[plan.warmup]
    images = cohort * plan.batch * timed
    return {"images_per_s": images / seconds, "timed_steps": timed, "timed_images": images, "timed_s": seconds,
            "first_steps_s": marks[plan.warmup] - start, "diverged": diverged or None}


def train_section(ctx: dict, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    device, peak = ctx["device"], ctx["peak"]
    rows, skipped = [], []
    pairs = make_store(str(tmp / "pairs"), max(COHORTS) * plan.batch * 2)
    for arch in sorted(ARCHS, key=lambda a: a != KEY_ARCH):  # the targets' student first, in case time runs out
        flops = 3 * forward_flops(arch, CIFAR)  # forward + backward of the student's matmuls
        floor = peak / flops if peak else None
        for cohort in COHORTS:
            eager_first: dict[str, float] = {}
            for compile_model in (False, True):
                if compile_model:
                    torch._dynamo.reset()  # this (arch, cohort) compiles its own static shapes, as a trial would
                for loss in LOSSES:
                    row = {"arch": arch.name, "params": count_params(arch, CIFAR), "loss": loss,
                           "lpips_size": plan.lpips_size if loss == "lpips" else None,
                           "mode": "compiled" if compile_model else "eager", "cohort": cohort, "batch": plan.batch,
                           "student_gflops_per_image": flops / 1e9, "flop_floor_images_per_s": floor,
                           "images_per_s": None, "floor_ratio": None, "compile_s": None}
                    label = f"{arch.name} {loss} {row['mode']} cohort {cohort}"
                    cfg = TrainConfig(loss=loss, batch_size=plan.batch, lpips_size=plan.lpips_size)
                    need = cohort * estimate_train_bytes(arch, CIFAR, cfg)
                    free = free_bytes(device)
                    if compile_model and (arch.name not in plan.compile_archs or cohort not in plan.compile_cohorts):
                        row["skipped"] = "not compiled in this plan (see notes)"
                    elif cohort > 1 and train_cohort is None:
                        row["skipped"] = COHORT_MISSING
                    elif budget.spent():
                        row["skipped"] = "section budget spent"
                    elif free is not None and need > MEMORY_FRACTION * free:
                        row["skipped"] = (f"estimated {need / 2**30:.1f} GiB > {MEMORY_FRACTION:.0%} of the "
                                          f"{free / 2**30:.1f} GiB free")
                    else:
                        try:
                            row.update(train_rate(arch, loss, cohort, compile_model, plan, pairs, device))
                        except Exception as exc:  # noqa: BLE001 - one failed row must not lose the run
                            row["error"] = error_text(exc)
                        release(device)
                    if row["images_per_s"] is not None:
                        if floor:
                            row["floor_ratio"] = row["images_per_s"] / floor
                        if compile_model and loss in eager_first:
                            row["compile_s"] = row["first_steps_s"] - eager_first[loss]
                        elif not compile_model:
                            eager_first[loss] = row["first_steps_s"]
                    if arch == KEY_ARCH and loss == "l2":
                        row.update(target_columns(row["images_per_s"], TARGET_TRAIN_IMAGES_PER_S, True))
                    if "skipped" in row:
                        skipped.append(f"{label}: {row['skipped']}")
                    rows.append(row)
                    print(f"  {label:<40} " + (f"{row['images_per_s']:>12,.1f} img/s" if row["images_per_s"]
                                               else row.get("error") or f"skipped ({row['skipped']})"), flush=True)
    names = [a.name for a in ARCHS]
    rows.sort(key=lambda r: (names.index(r["arch"]), r["cohort"]))  # stable: mode and loss stay in order
    return {"rows": rows, "skipped": skipped, "floor": "peak / (3 x dse.sizing.forward_flops) images/s",
            "pairs": len(pairs), "pairs_resident": device.type == "cuda", "warmup_steps": plan.warmup}


def print_train(section: dict, ctx: dict) -> None:
    print(f"\nTraining images/s on {ctx['name']}, GET step, CIFAR-10 32x32x3, batch {section['rows'][0]['batch']} per "
          f"member, {section['warmup_steps']} warm-up steps excluded; floor = {section['floor']}")
    print(f"{'student':<12} {'loss':<6} {'mode':<9} {'cohort':>6} {'img/s':>11} {'floor':>10} {'x floor':>8} "
          f"{'compile s':>9} {'target':>8} {'x target':>8}")
    for r in section["rows"]:
        ips = r["images_per_s"]
        if ips is None:
            tail = r.get("error") or f"skipped: {r.get('skipped')}"
            print(f"{r['arch']:<12} {r['loss']:<6} {r['mode']:<9} {r['cohort']:>6} {tail}")
            continue
        print(f"{r['arch']:<12} {r['loss']:<6} {r['mode']:<9} {r['cohort']:>6} {ips:>11,.1f} "
              f"{fmt(r['flop_floor_images_per_s']):>10} {fmt(r['floor_ratio'], '.3f'):>8} "
              f"{fmt(r['compile_s'], '.1f'):>9} {fmt(r.get('target')):>8} {fmt(r.get('x_of_target'), '.3g'):>8}")


# ------------------------------------------------------------------------------------------- 2. packed
def worker(spec: dict) -> None:
    """One packed trial process: train the packed student, wait at the barrier after warm-up, time the
    rest; print one JSON line (its start and end on the shared wall clock, images, images/s)."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    barrier = Path(spec["barrier"])
    arch = StudentArch(*spec["arch"])
    warmup, timed = spec["warmup"], spec["timed"]
    marks: dict[str, float] = {}

    def progress(step: int, _loss: float) -> None:
        if step == warmup:
            (barrier / f"ready-{spec['id']}").touch()
            deadline = time.time() + spec["wait_s"]
            while not (barrier / "go").exists():
                if time.time() > deadline:
                    raise TimeoutError("no go signal from bench/gpu.py")
                time.sleep(0.001)
            marks["start"] = time.time()
        if step == warmup + timed:
            marks["end"] = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_store(tmp, spec["batch"] * 4)
        cfg = TrainConfig(loss="l2", batch_size=spec["batch"], steps=warmup + timed, lr=1e-4, seed=spec["id"])
        train_student(seeded_student(arch, spec["id"]), pairs, cfg, device, progress=progress, progress_every=warmup,
                      resident=True if device.type == "cuda" else None)
    images = timed * spec["batch"]
    print(json.dumps({"id": spec["id"], "start": marks["start"], "end": marks["end"], "images": images,
                      "images_per_s": images / (marks["end"] - marks["start"])}), flush=True)


def run_packed(n: int, plan: Plan, device: torch.device, env: dict, root: Path, wait_s: float) -> dict[str, Any]:
    """N worker processes at once; their total images/s over the span from the first start to the last end."""
    barrier = Path(tempfile.mkdtemp(prefix=f"packed{n}-", dir=root))
    threads = plan.threads or max(1, (os.cpu_count() or 1) // n)  # the CPUs shared out among the processes
    procs = []
    for i in range(n):
        spec = {"id": i, "device": str(device), "threads": threads, "barrier": str(barrier),
                "arch": [PACKED_ARCH.depth, PACKED_ARCH.width, PACKED_ARCH.heads], "batch": plan.batch,
                "warmup": plan.packed_warmup, "timed": plan.packed_timed, "wait_s": wait_s}
        out, err = open(barrier / f"out-{i}", "w"), open(barrier / f"err-{i}", "w")
        procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                       stdout=out, stderr=err, env=env, cwd=ROOT), out, err))

    def failure(i: int, what: str) -> str:
        tail = (barrier / f"err-{i}").read_text().strip().splitlines()
        return f"worker {i} {what}" + (f": {tail[-1][:300]}" if tail else "")

    try:
        deadline = time.time() + wait_s
        while sum((barrier / f"ready-{i}").exists() for i in range(n)) < n:
            for i, (p, _, _) in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(failure(i, f"exited {p.returncode} before its warm-up ended"))
            if time.time() > deadline:
                raise RuntimeError(f"the workers were not all ready within {wait_s:.0f} s")
            time.sleep(0.01)
        (barrier / "go").touch()
        results = []
        for i, (p, _, _) in enumerate(procs):
            p.wait(timeout=max(1.0, deadline + wait_s - time.time()))
            if p.returncode:
                raise RuntimeError(failure(i, f"exited {p.returncode}"))
            results.append(json.loads((barrier / f"out-{i}").read_text().strip().splitlines()[-1]))
    finally:
        for p, out, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
            err.close()
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["images"] for r in results)
    return {"images_per_s": total / span, "per_process_images_per_s": [r["images_per_s"] for r in results],
            "span_s": span, "images": total, "threads_per_process": threads}


def start_mps(root: Path, device: torch.device) -> tuple[dict | None, str | None]:
    """The environment of MPS clients with the daemon started, or (None, why it cannot run)."""
    if device.type != "cuda":
        return None, "cpu"
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        return None, "no nvidia-cuda-mps-control"
    pipe, log = root / "mps-pipe", root / "mps-log"
    pipe.mkdir()
    log.mkdir()
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}
    try:
        done = subprocess.run([exe, "-d"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-cuda-mps-control -d failed: {error_text(exc)}"
    if done.returncode:
        said = (done.stderr or done.stdout).strip()[:300]
        return None, f"nvidia-cuda-mps-control -d exited {done.returncode}: {said}"
    return env, None


def stop_mps(env: dict) -> str | None:
    """Stop the MPS daemon of `env`; None, or what went wrong."""
    try:
        done = subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=env, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return error_text(exc)
    return None if done.returncode == 0 else f"quit exited {done.returncode}: {done.stderr.strip()[:300]}"


def packed_section(ctx: dict, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    device = ctx["device"]
    rows, skipped, mps_info = [], [], {}
    wait_s = 90.0 if device.type == "cuda" else 180.0  # for the workers' start and warm-up (a hung MPS client ends)
    release(device)
    for mps in (False, True):
        if not mps:
            env, why = dict(os.environ), None
        elif budget.spent():  # no daemon started for nothing
            env, why = None, "not tried: section budget spent"
            mps_info = {"available": None, "why_not": why}
        else:
            env, why = start_mps(tmp, device)
            mps_info = {"available": env is not None, "why_not": why}
        try:
            for n in plan.packed:
                row = {"processes": n, "mps": mps, "arch": PACKED_ARCH.name, "loss": "l2", "batch": plan.batch,
                       "timed_steps": plan.packed_timed, "images_per_s": None}
                if env is None:
                    row["skipped"] = f"no MPS: {why}"
                elif budget.spent():
                    row["skipped"] = "section budget spent"
                else:
                    try:
                        row.update(run_packed(n, plan, device, env, tmp, wait_s))
                    except Exception as exc:  # noqa: BLE001
                        row["error"] = error_text(exc)
                if "skipped" in row:
                    skipped.append(f"{n} processes{' with MPS' if mps else ''}: {row['skipped']}")
                rows.append(row)
                print(f"  {n} processes {'MPS   ' if mps else 'no MPS'} " + (
                    f"{row['images_per_s']:>12,.1f} img/s" if row["images_per_s"] else
                    row.get("error") or f"skipped ({row['skipped']})"), flush=True)
        finally:
            if mps and env is not None:
                mps_info["stop_error"] = stop_mps(env)
                mps_info["server_started"] = (Path(env["CUDA_MPS_LOG_DIRECTORY"]) / "server.log").exists()
    alone = {r["mps"]: r["images_per_s"] for r in rows if r["processes"] == 1 and r["images_per_s"]}
    for r in rows:
        base = alone.get(r["mps"])
        r["x_of_one_process"] = r["images_per_s"] / base if base and r["images_per_s"] else None
    return {"rows": rows, "skipped": skipped, "mps": mps_info}


def print_packed(section: dict, ctx: dict) -> None:
    r0 = section["rows"][0]
    print(f"\nPacked trial processes on {ctx['name']}: each trains {r0['arch']} {r0['loss']} at batch {r0['batch']} "
          f"for {r0['timed_steps']} timed steps, all starting together")
    print(f"{'processes':>9} {'MPS':<4} {'total img/s':>12} {'x one':>6} {'per process img/s':<40}")
    for r in section["rows"]:
        if r["images_per_s"] is None:
            why = r.get("error") or "skipped: " + r["skipped"]
            print(f"{r['processes']:>9} {'yes' if r['mps'] else 'no':<4} {why}")
            continue
        per = ", ".join(f"{x:,.0f}" for x in r["per_process_images_per_s"])
        print(f"{r['processes']:>9} {'yes' if r['mps'] else 'no':<4} {r['images_per_s']:>12,.1f} "
              f"{fmt(r['x_of_one_process'], '.2f'):>6} {per:<40}")


# ------------------------------------------------------------------------------------------ 3. latency
def latency_section(ctx: dict, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    device = ctx["device"]
    prepare_device(device)  # TF32 on a GPU, as in a trial, which measures latency after training
    scale = PAPER_IMAGES / plan.latency_images
    key = [(KEY_ARCH, "float32", False), (KEY_ARCH, "bfloat16", False)]
    key += [(KEY_ARCH, "bfloat16", True)] if plan.latency_compile else []
    others = [(StudentArch(d, w, h), dtype, False) for dtype in plan.latency_dtypes for _, d, w, h, _ in PAPER_TABLE6
              if StudentArch(d, w, h) != KEY_ARCH]
    table = {StudentArch(d, w, h).name: (group, jetson_s) for group, d, w, h, jetson_s in PAPER_TABLE6}
    rows, skipped = [], []
    for arch, dtype, compile_model in key + others:  # the targets' student first, in case time runs out
        group, jetson_s = table[arch.name]
        row = {"group": group, "arch": arch.name, "params": count_params(arch, CIFAR), "dtype": dtype,
               "compile": compile_model, "images_timed": plan.latency_images,
               "scaled": plan.latency_images != PAPER_IMAGES,
               "batch": PAPER_BATCH, "guidance": GUIDANCE, "latency_50k_s": None, "paper_jetson_orin_s": jetson_s,
               "paper_a100_s": PAPER_A100_S.get(arch.name)}
        if budget.spent():
            row["skipped"] = "section budget spent"
            skipped.append(f"{arch.name} {dtype}{' compiled' if compile_model else ''}: {row['skipped']}")
        else:
            try:
                m = measure_latency(random_student(arch), num_images=plan.latency_images, batch_size=PAPER_BATCH,
                                    guidance=GUIDANCE, repeats=plan.latency_repeats, device=device, dtype=dtype,
                                    compile=compile_model)
                row.update(measured_s=m["latency_s"], latency_50k_s=m["latency_s"] * scale,
                           compiled=m["latency_compile"], contended=m["latency_contended"],
                           repeats=plan.latency_repeats)
            except Exception as exc:  # noqa: BLE001
                row["error"] = error_text(exc)
            release(device)
        s = row["latency_50k_s"]
        row["x_of_paper_a100"] = s / row["paper_a100_s"] if s and row["paper_a100_s"] else None
        if arch == KEY_ARCH:
            row.update(target_columns(s, TARGET_LATENCY_S, False))
        rows.append(row)
        print(f"  {arch.name:<12} {dtype:<8} {'compiled' if compile_model else 'eager':<8} "
              + (f"{s:>9.3f} s / 50k" if s else row.get("error") or f"skipped ({row['skipped']})"), flush=True)
    order = list(table)
    rows.sort(key=lambda r: (order.index(r["arch"]), r["dtype"] != "float32", r["compile"]))
    return {"rows": rows, "skipped": skipped, "num_images": PAPER_IMAGES, "paper_a100_others_s": PAPER_A100_OTHERS,
            "tf32": device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
            "paper_note": "Table 6 seconds are on an NVIDIA Jetson Orin (Nano); Table 5's on an A100"}


def print_latency(section: dict, ctx: dict) -> None:
    scaled = any(r["scaled"] for r in section["rows"])
    print(f"\nSeconds for {PAPER_IMAGES:,} images at batch {PAPER_BATCH} with guidance {GUIDANCE} on {ctx['name']}, "
          f"torch runtime, random weights" + (" (timed on fewer images, scaled to 50k)" if scaled else ""))
    print(f"{'group':<6} {'student':<12} {'dtype':<8} {'mode':<8} {'50k s':>9} {'paper A100':>10} {'x A100':>7} "
          f"{'Jetson':>7} {'target':>6} {'x target':>8}")
    for r in section["rows"]:
        s = r["latency_50k_s"]
        head = f"{r['group']:<6} {r['arch']:<12} {r['dtype']:<8} {'compiled' if r['compile'] else 'eager':<8}"
        if s is None:
            print(f"{head} {r.get('error') or 'skipped: ' + r['skipped']}")
            continue
        print(f"{head} {s:>9.3f} {fmt(r['paper_a100_s'], '.2f'):>10} {fmt(r['x_of_paper_a100'], '.2f'):>7} "
              f"{r['paper_jetson_orin_s']:>7.1f} {fmt(r.get('target'), '.1f'):>6} "
              f"{fmt(r.get('x_of_target'), '.3g'):>8}")
    others = section["paper_a100_others_s"]
    print("paper A100, not measured here: " + ", ".join(f"{k} {v} s" for k, v in others.items()))


# ---------------------------------------------------------------------------------------------- 4. FID
class _Images(torch.utils.data.Dataset):
    """uint8 NHWC images as the uint8 CHW tensors torch-fidelity reads."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))  # (C, H, W)


def fid_section(ctx: dict, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from dse.assets.inception import inception_weights
    from dse.metrics.extractors import EXTRACTORS, register_extractors
    from dse.metrics.fid import frechet_distances
    from dse.metrics.samples import sample_images

    device, gpu = ctx["device"], ctx["device"].type == "cuda"
    out: dict[str, Any] = {"arch": KEY_ARCH.name, "guidance": GUIDANCE, "num_images": PAPER_IMAGES, "skipped": []}
    prepare_device(device)  # TF32 on a GPU, as in a trial, which measures image quality after training
    model = random_student(KEY_ARCH).to(device)
    sample_images(model, min(plan.fid_images, 500), guidance=GUIDANCE, device=device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    images, _ = sample_images(model, plan.fid_images, guidance=GUIDANCE, device=device)  # (N, 32, 32, 3) uint8
    generate_s = time.perf_counter() - t0
    out.update(generated=plan.fid_images, generate_s=generate_s,
               generate_50k_s=generate_s * PAPER_IMAGES / plan.fid_images)
    try:
        t0 = time.perf_counter()
        found = inception_weights()
        out["weights_lookup_s"] = time.perf_counter() - t0
    except DseError as exc:
        out.update(extractor=None, weights_missing=one_line(exc), features_50k_s=None, fid_50k_s=None,
                   scaled=plan.fid_images != PAPER_IMAGES)
        out["skipped"].append("feature extraction: Inception weights missing")
        return out
    register_extractors()
    spec = EXTRACTORS[found.network]
    net = create_feature_extractor(found.network, [spec.layer], cuda=gpu, verbose=False,
                                   feature_extractor_weights_path=str(found.state_path))
    extract = dict(feat_extractor=net, batch_size=spec.batch_size, cuda=gpu, save_cpu_ram=True, verbose=False)
    get_featuresdict_from_dataset(_Images(images[: spec.batch_size]), **extract)  # warm-up
    sync(device)
    done, seconds, features = 0, 0.0, []
    while done < len(images):
        if done and budget.spent():
            out["skipped"].append(f"features of {len(images) - done} of {len(images)} images: section budget spent")
            break
        chunk = images[done: done + plan.fid_chunk]
        t0 = time.perf_counter()
        features.append(get_featuresdict_from_dataset(_Images(chunk), **extract)[spec.layer])
        sync(device)
        seconds += time.perf_counter() - t0
        done += len(chunk)
    f = torch.cat(features).double().numpy()  # (done, d)
    t0 = time.perf_counter()
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    frechet_distances(f, mu, sigma, np.ones((1, len(f))), device=device)
    distance_s = time.perf_counter() - t0
    features_50k = seconds * PAPER_IMAGES / done
    out.update(extractor=found.network, weights_source=found.source.kind, feature_batch=spec.batch_size,
               features_timed=done, features_s=seconds, features_50k_s=features_50k, distance_s=distance_s,
               fid_50k_s=out["generate_50k_s"] + features_50k + distance_s,
               scaled=done != PAPER_IMAGES or plan.fid_images != PAPER_IMAGES)
    return out


def print_fid(section: dict, ctx: dict) -> None:
    print(f"\nFID-{section['num_images'] // 1000}k wall time on {ctx['name']}: {section['arch']} with guidance "
          f"{section['guidance']}" + (" (timed on fewer images, scaled to 50k)" if section.get("scaled") else ""))
    print(f"  generate 50k: {section['generate_50k_s']:.2f} s (timed on {section['generated']:,})")
    if section.get("extractor") is None:
        print(f"  features: not measured, {section.get('weights_missing') or section.get('error')}")
        return
    print(f"  features 50k ({section['extractor']}, batch {section['feature_batch']}): "
          f"{section['features_50k_s']:.2f} s "
          f"(timed on {section['features_timed']:,}); Frechet distance {section['distance_s']:.2f} s")
    print(f"  FID-50k: {section['fid_50k_s']:.2f} s (reference statistics cached by dse, not counted)")


# -------------------------------------------------------------------------------------------- 5. LPIPS
def lpips_features(loss_fn: LPIPSLoss, images: torch.Tensor) -> list[torch.Tensor]:
    """LPIPS's normalised trunk features of `images` (B, C, H, W) in [-1, 1]: what a cache of the teacher
    images would hold, one (B, C_l, H_l, W_l) tensor per layer."""
    import lpips

    net = loss_fn.lpips
    return [lpips.normalize_tensor(f) for f in net.net(net.scaling_layer(loss_fn._prepare(images)))]


def lpips_cached(loss_fn: LPIPSLoss, target_features: list[torch.Tensor], pred: torch.Tensor) -> torch.Tensor:
    """`loss_fn(target, pred)` with the target's features precomputed (`lpips_features`)."""
    from lpips.lpips import spatial_average

    net = loss_fn.lpips
    pred_features = lpips_features(loss_fn, pred)
    return sum(spatial_average(lin((p - t.to(p.dtype)) ** 2), keepdim=True)
               for lin, p, t in zip(net.lins, pred_features, target_features)).mean()


def lpips_section(ctx: dict, plan: Plan, budget: Budget, tmp: Path) -> dict[str, Any]:
    device = ctx["device"]
    rows, skipped = [], []
    for size in LPIPS_SIZES:
        row: dict[str, Any] = {"net": "alex", "size": size, "batch": plan.lpips_batch, "steps": plan.lpips_steps}
        if budget.spent():
            row["skipped"] = "section budget spent"
            skipped.append(f"size {size}: {row['skipped']}")
            rows.append(row)
            continue
        try:
            loss_fn = LPIPSLoss("alex", size).to(device)
            gen = torch.Generator().manual_seed(size)
            target = (torch.rand(plan.lpips_batch, 3, 32, 32, generator=gen) * 2 - 1).to(device)  # (B, 3, 32, 32)
            pred = (torch.rand(plan.lpips_batch, 3, 32, 32, generator=gen) * 2 - 1).to(device).requires_grad_(True)
            with torch.no_grad():
                cache = lpips_features(loss_fn, target)
                row["max_abs_diff_cached"] = float((loss_fn(target, pred) - lpips_cached(loss_fn, cache, pred)).abs())
            cache = [c.half() for c in cache]  # stored as float16

            def step(cached: bool) -> None:
                with autocast(device):
                    value = lpips_cached(loss_fn, cache, pred) if cached else loss_fn(target, pred)
                value.backward()
                pred.grad = None

            for cached in (False, True):
                step(cached)  # warm-up
                sync(device)
                t0 = time.perf_counter()
                for _ in range(plan.lpips_steps):
                    step(cached)
                sync(device)
                ms = 1000 * (time.perf_counter() - t0) / (plan.lpips_steps * plan.lpips_batch)
                row["cached_ms_per_image" if cached else "ms_per_image"] = ms
            row["cached_speedup"] = row["ms_per_image"] / row["cached_ms_per_image"]
            row["cache_bytes_per_image"] = sum(c[0].numel() * c.element_size() for c in cache)
            row["cache_pairs_per_gb"] = int(1e9 // row["cache_bytes_per_image"])
            row["cache_1m_pairs_gb"] = row["cache_bytes_per_image"] * 1e6 / 1e9
            row["layer_shapes"] = [list(c.shape[1:]) for c in cache]
        except Exception as exc:  # noqa: BLE001
            row["error"] = error_text(exc)
        rows.append(row)
        release(device)
        print(f"  LPIPS alex {size:>3} px " + (f"{row['ms_per_image']:.3f} ms/image" if "ms_per_image" in row
                                                else row.get("error", "")), flush=True)
    return {"rows": rows, "skipped": skipped, "cache_dtype": "float16",
            "what": "forward + backward through LPIPS on the prediction (grad to the 32x32 prediction), per image"}


def print_lpips(section: dict, ctx: dict) -> None:
    print(f"\nLPIPS (alex) on {ctx['name']}: {section['what']}; cache = the teacher images' normalised features, "
          f"{section['cache_dtype']}")
    print(f"{'size':>4} {'ms/img':>8} {'cached ms/img':>13} {'speed-up':>8} {'cache KB/img':>12} {'pairs/GB':>9} "
          f"{'1M pairs GB':>11} {'check':>8}")
    for r in section["rows"]:
        if "ms_per_image" not in r:
            print(f"{r['size']:>4} {r.get('error') or 'skipped: ' + r.get('skipped', '')}")
            continue
        print(f"{r['size']:>4} {r['ms_per_image']:>8.3f} {r['cached_ms_per_image']:>13.3f} {r['cached_speedup']:>8.2f} "
              f"{r['cache_bytes_per_image'] / 1e3:>12.1f} {r['cache_pairs_per_gb']:>9,} "
              f"{r['cache_1m_pairs_gb']:>11,.0f} "
              f"{r['max_abs_diff_cached']:>8.1e}")


# ------------------------------------------------------------------------------------------------ main
RUNNERS: dict[str, tuple[Callable, Callable]] = {
    "train": (train_section, print_train), "packed": (packed_section, print_packed),
    "latency": (latency_section, print_latency), "fid": (fid_section, print_fid), "lpips": (lpips_section, print_lpips),
}


def targets_summary(result: dict) -> dict[str, Any]:
    """The best measured figure for each target, with its ratio."""
    summary: dict[str, Any] = {}
    train = result["sections"].get("train", {}).get("rows", [])
    best = max((r for r in train if r.get("target") and r["images_per_s"]), key=lambda r: r["images_per_s"],
               default=None)
    summary["train_images_per_s"] = {
        "what": f"{KEY_ARCH.name} l2 training images/s (best of eager / compiled, cohorts; the target is one H100/H200's)",
        "value": best["images_per_s"] if best else None,
        "row": {k: best[k] for k in ("mode", "cohort")} if best else None,
        "flop_floor_images_per_s": best["flop_floor_images_per_s"] if best else None,
        **target_columns(best["images_per_s"] if best else None, TARGET_TRAIN_IMAGES_PER_S, True)}
    latency = result["sections"].get("latency", {}).get("rows", [])
    fast = min((r for r in latency if r.get("target") and r["latency_50k_s"]), key=lambda r: r["latency_50k_s"],
               default=None)
    summary["latency_50k_s"] = {
        "what": f"{KEY_ARCH.name}: 50k images at batch {PAPER_BATCH} with guidance {GUIDANCE} (best dtype / mode)",
        "value": fast["latency_50k_s"] if fast else None,
        "row": {k: fast[k] for k in ("dtype", "compile")} if fast else None,
        "scaled": fast["scaled"] if fast else None,
        **target_columns(fast["latency_50k_s"] if fast else None, TARGET_LATENCY_S, False)}
    return summary


def print_targets(summary: dict) -> None:
    print("\nTargets (issue 14):")
    for key, t in summary.items():
        if t["value"] is None:
            print(f"  {t['what']}: not measured (target {t['target']:,})")
            continue
        need = ">=" if key.startswith("train") else "<="
        print(f"  {t['what']}: {t['value']:,.3f} vs target {need} {t['target']:,} -> {t['x_of_target']:.3g}x of target "
              f"({'met' if t['meets_target'] else 'not met'})" + (f", row {t['row']}" if t["row"] else ""))


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(result, indent=2, default=str))
    part.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (default where "
                    "there is one) or cpu")
    ap.add_argument("--quick", action="store_true", help="a smoke run: every code path, tiny sizes")
    ap.add_argument("--out", default="", help="the JSON's path (default bench/results/gpu-<device>[-quick].json)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--budget", type=float, default=-1.0, help="seconds for all sections (default: 400 on a GPU; "
                    "600 with --device cpu --quick, whose sizes keep it well under)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # a packed trial process (section 2)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    os.environ.setdefault(OFFLINE_ENV, "1")  # a benchmark never downloads: weights found here, or said missing
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: --device {args.device}, but torch {torch.__version__} sees no CUDA device; run it on a "
              "machine with an NVIDIA GPU or use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or device.type not in ("cpu", "cuda"):
        print(f"bench/gpu.py: unknown section(s) {unknown} (known: {', '.join(SECTIONS)}) or device {args.device!r} "
              "(cpu or cuda)", file=sys.stderr)
        raise SystemExit(2)
    gpu = device.type == "cuda"
    plan = plan_for(gpu, args.quick)
    if args.budget >= 0:
        plan = dataclasses.replace(plan, budget_s=args.budget)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    name = device_name(device)
    slug = device_slug(device, name)
    default = ROOT / "bench" / "results" / f"gpu-{slug}{'-quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else default
    ctx = {"device": device, "name": name, "peak": peak_flops(device, name)}
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": name, "device_slug": slug, "quick": args.quick, "torch": torch.__version__,
        "cuda": torch.version.cuda if gpu else None, "threads": torch.get_num_threads(), "host": platform.node(),
        "peak_flops": ctx["peak"], "peak_note": "dense bf16 tensor-core peak (vendor datasheet)" if ctx["peak"] else
        "no peak known for this device: no floor", "budget_s": plan.budget_s, "plan": dataclasses.asdict(plan),
        "targets_issue14": {"train_images_per_s": TARGET_TRAIN_IMAGES_PER_S, "latency_50k_s": TARGET_LATENCY_S},
        "notes": list(plan.notes), "sections": {},
    }
    print(f"bench/gpu.py on {name} ({slug}), torch {torch.__version__}, budget {plan.budget_s:.0f} s, sections "
          f"{', '.join(sections)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dse-bench-gpu-") as tmp:
        for i, key in enumerate(sections):
            left = plan.budget_s - (time.perf_counter() - started)
            share = SHARES[key] / sum(SHARES[k] for k in sections[i:])
            budget = Budget(max(0.0, left * share))
            print(f"\n[{key}] budget {budget.seconds:.0f} s", flush=True)
            run, show = RUNNERS[key]
            folder = Path(tmp) / key
            folder.mkdir()
            try:
                section = run(ctx, plan, budget, folder)
            except Exception as exc:  # noqa: BLE001 - the other sections still run
                section = {"error": error_text(exc), "rows": [], "skipped": [f"{key}: {error_text(exc)}"]}
            section.update(budget_s=budget.seconds, seconds=budget.elapsed())
            result["sections"][key] = section
            result["targets"] = targets_summary(result)
            result["seconds"] = time.perf_counter() - started
            save(result, out)
            if "error" in section:
                print(f"[{key}] failed: {section['error']}")
            else:
                show(section, ctx)
            release(device)
    print_targets(result["targets"])
    result["seconds"] = time.perf_counter() - started
    save(result, out)
    print(f"\nwritten: {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
