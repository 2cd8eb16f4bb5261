"""Benchmark distillation training speed: images/s of a GET step for the paper's (5, 64, 8) and
(7, 192, 12) students with each loss, on CIFAR-10-sized pairs, and the FLOP-count floor.

    .venv/bin/python bench/train.py [--quick] [--device cuda] [--compile]

Prints a table and writes bench/results/train-<device>.json. A step is the whole trainer step
(read a batch from the pair store, forward, loss, backward, AdamW, EMA); the first steps are
discarded as warm-up. The floor is the student's matmul FLOPs for forward + backward (3 x forward,
`dse.sizing.forward_flops`) divided by the device's peak; LPIPS adds its own network's FLOPs on top,
which the floor leaves out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dse.config import TrainConfig  # noqa: E402
from dse.data.pairs import PairStore, PairWriter  # noqa: E402
from dse.distill.train import train_student  # noqa: E402
from dse.models.dit import DiT  # noqa: E402
from dse.sizing import count_params, forward_flops  # noqa: E402
from dse.types import Geometry, StudentArch

CIFAR = Geometry(32, 3, 10)
ARCHS = [StudentArch(5, 64, 8), StudentArch(7, 192, 12)]
PEAK_FLOPS = {"cpu": None, "H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def make_store(root: str, n: int) -> PairStore:
    meta = {"teacher": {"kind": "bench"}, "sampler": {}, "dataset": "cifar10", "seed": 0, "image_dtype": "float32"}
    rng = np.random.default_rng(0)
    PairWriter(root, meta).append(rng.standard_normal((n, 3, 32, 32), np.float32), rng.integers(0, 10, n),
                                  rng.uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32))
    return PairStore.open(root)


def images_per_second(arch: StudentArch, loss: str, pairs: PairStore, batch: int, steps: int, warmup: int,
                      device: torch.device, compile_model: bool) -> float:
    torch.manual_seed(0)
    model = DiT(arch, CIFAR)
    if compile_model:
        model = torch.compile(model)
    cfg = TrainConfig(loss=loss, batch_size=batch, steps=warmup, lr=1e-4)
    train_student(model, pairs, cfg, device)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_student(model, pairs, dataclasses.replace(cfg, steps=steps), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd students")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = 256 if gpu else 32
    steps, warmup = (2, 1) if args.quick else ((50, 10) if gpu else (4, 1))
    name = torch.cuda.get_device_name(device) if gpu else (platform.processor() or "cpu")
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None) if gpu else None

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_store(tmp, 4 * batch)
        for arch in ARCHS:
            flops = 3 * forward_flops(arch, CIFAR)  # forward + backward
            for loss in ("l1", "l2", "lpips"):
                for compiled in ([False, True] if args.compile else [False]):
                    ips = images_per_second(arch, loss, pairs, batch, steps, warmup, device, compiled)
                    floor = peak / flops if peak else None
                    rows.append({"arch": arch.name, "params": count_params(arch, CIFAR), "loss": loss,
                                 "compiled": compiled, "batch": batch, "images_per_s": ips,
                                 "student_gflops_per_image": flops / 1e9, "flop_floor_images_per_s": floor})
                    print(f"{arch.name:<12} {loss:<6} {'compiled' if compiled else 'eager':<9} {ips:>10,.1f} img/s"
                          + (f"   FLOP floor {floor:,.0f} img/s" if floor else ""), flush=True)

    print(f"\nTraining images/s on {name} ({torch.get_num_threads()} threads), batch {batch}, CIFAR-10 32x32x3,"
          " LPIPS at 224 px:")
    print(f"{'student':<12} {'params':>10} {'loss':<6} {'mode':<9} {'img/s':>10} {'GFLOP/img':>10}")
    for r in rows:
        print(f"{r['arch']:<12} {r['params']:>10,} {r['loss']:<6} {'compiled' if r['compiled'] else 'eager':<9} "
              f"{r['images_per_s']:>10,.1f} {r['student_gflops_per_image']:>10.3f}")
    out = ROOT / "bench" / "results" / f"train-{device.type}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "peak_flops": peak, "rows": rows}, indent=2))
    print(f"\nwritten: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
