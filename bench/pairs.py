"""Benchmark teacher pairs: generation pairs/s per teacher and data set, and pair-store read pairs/s.

    .venv/bin/python bench/pairs.py [--quick] [--device cuda]

Prints two tables and writes bench/results/pairs-<device>.json. Generation uses the paper's sampler
(18 Heun steps, 35 denoiser calls a pair). The trained teacher's speed does not depend on its
weights, so an untrained network of the default teacher size is timed. Reads go through
`PairBatches` and a DataLoader at batch 256, from a store that was just written (so from the page
cache, as in training once the first epoch has read it).
"""

from __future__ import annotations

import argparse
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

from dse.data.datasets import load_dataset  # noqa: E402
from dse.data.pairs import PairBatches, PairWriter  # noqa: E402
from dse.teacher.edm import SamplerSettings, heun_sample  # noqa: E402
from dse.teacher.generate import pair_batch  # noqa: E402
from dse.teacher.registry import make_teacher  # noqa: E402
from dse.types import Geometry  # noqa: E402

CIFAR_SUBSET = ROOT.parent / "shared" / "assets" / "cifar10_exact_subset.npz"


def untrained_teacher(geometry: Geometry, device: str):
    """A denoiser of the trained teacher's default size and structure, with its initial weights."""
    from dse.teacher.train import TeacherTrainConfig, TrainedTeacher, build_denoiser

    cfg = TeacherTrainConfig(dataset="digits")
    return TrainedTeacher(build_denoiser(cfg, geometry).to(device), cfg)


def time_generation(name: str, dataset: str, data_root: str | None, teacher: str, n: int, batch: int, device: str):
    geometry = load_dataset(dataset, data_root).geometry
    if teacher == "empirical":
        denoiser = make_teacher("empirical", dataset, device, data_root=data_root)
    else:
        denoiser = untrained_teacher(geometry, device)
    z, y = pair_batch(0, range(min(batch, n)), geometry)
    heun_sample(denoiser, z.to(device), y.to(device), SamplerSettings(num_steps=2))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in range(0, n, batch):
        z, y = pair_batch(b, range(b, min(b + batch, n)), geometry)
        heun_sample(denoiser, z.to(device), y.to(device), SamplerSettings())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"case": name, "teacher": teacher, "dataset": dataset, "pairs": n, "batch": batch,
            "seconds": seconds, "pairs_per_s": n / seconds}


def time_reads(shape: tuple[int, ...], image_dtype: str, n: int, workers: int, batch: int = 256, epochs: int = 2):
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"teacher": {"kind": "bench"}, "sampler": {}, "dataset": "bench", "seed": 0, "image_dtype": image_dtype}
        writer = PairWriter(tmp, meta)
        rng = np.random.default_rng(0)
        shard = 50_000
        for start in range(0, n, shard):
            m = min(shard, n - start)
            writer.append(rng.standard_normal((m, *shape), np.float32), rng.integers(0, 10, m),
                          rng.uniform(-1, 1, (m, *shape)).astype(np.float32))
        results = []
        for epoch in range(epochs):  # epoch 0 warms the page cache; the last one is reported
            ds = PairBatches(tmp, batch, seed=0, epoch=epoch)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                                 persistent_workers=False, prefetch_factor=4 if workers else None)
            start = time.perf_counter()
            count = sum(len(y) for _, y, _ in loader)
            results.append(count / (time.perf_counter() - start))
    return {"shape": list(shape), "image_dtype": image_dtype, "pairs": n, "workers": workers, "batch": batch,
            "pairs_per_s": results[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer pairs (a smoke run)")
    args = ap.parse_args()
    dev, q = args.device, args.quick

    gen_cases = [("digits / empirical", "digits", None, "empirical", 2048 if not q else 256, 512),
                 ("digits / trained", "digits", None, "trained", 1024 if not q else 128, 256)]
    if CIFAR_SUBSET.is_file():
        gen_cases += [("cifar10 subset / empirical", "cifar10", str(CIFAR_SUBSET), "empirical", 256 if not q else 32, 128),
                      ("cifar10 subset / trained", "cifar10", str(CIFAR_SUBSET), "trained", 256 if not q else 32, 128)]
    else:
        print(f"(CIFAR-10 subset not found at {CIFAR_SUBSET}: its rows are skipped)")
    generation = [time_generation(*case, device=dev) for case in gen_cases]

    n_small, n_big = (200_000, 100_000) if not q else (20_000, 10_000)
    reads = []
    for shape, n in (((1, 8, 8), n_small), ((3, 32, 32), n_big)):
        for dtype in ("float32", "float16"):
            for workers in (0, 2):
                reads.append(time_reads(shape, dtype, n, workers))

    print(f"\nGeneration on {dev} ({torch.get_num_threads()} threads), EDM Heun 18 steps (35 NFE):")
    print(f"{'case':<30} {'pairs':>7} {'batch':>6} {'seconds':>9} {'pairs/s':>10}")
    for r in generation:
        print(f"{r['case']:<30} {r['pairs']:>7} {r['batch']:>6} {r['seconds']:>9.2f} {r['pairs_per_s']:>10,.0f}")
    print("\nPair-store reads (PairBatches + DataLoader, batch 256, warm page cache):")
    print(f"{'pair shape':<12} {'images':<8} {'pairs':>8} {'workers':>8} {'pairs/s':>12}")
    for r in reads:
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:<12} {r['image_dtype']:<8} {r['pairs']:>8} {r['workers']:>8} {r['pairs_per_s']:>12,.0f}")

    out = ROOT / "bench" / "results" / f"pairs-{dev.split(':')[0]}{'-quick' if q else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "generation": generation, "reads": reads,
    }, indent=2))
    print(f"\nwritten: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
