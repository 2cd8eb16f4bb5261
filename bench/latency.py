"""Benchmark generation latency: seconds for 50k CIFAR-10 images at batch 128 with guidance 1.5 for
the paper's Table 6 students, in PyTorch (eager) and onnxruntime, beside the paper's figures and the
device's FLOP-count floor.

    .venv/bin/python bench/latency.py [--quick] [--device cuda] [--images N] [--repeats R] [--no-onnx]

Prints a table and writes bench/results/latency-<device>.json. The protocol is the library's
(`dse.metrics.latency.measure_latency`, `dse.metrics.export.onnx_latency`): noise made on the
device, guidance as one batch of 2B, one untimed warm-up batch, synchronised, the lower median of R
runs (R = 2 on CPU: the faster of two, which also resists other processes sharing the CPU).
On a CPU, 50k images would take hours, so `--images` (default 128, one batch) are timed and the
figure is extrapolated linearly to 50k (`"extrapolated_from"` in the JSON); on a GPU the full 50k
are timed. onnxruntime always runs on the CPU (the deployment proxy), extrapolated the same way.

The floor is 50k images x 2 (guidance doubles the batch) x the student's forward matmul FLOPs
(`dse.sizing.forward_flops`, a lower bound: norms, softmax and activations are left out) / the
device's peak. CPU peak: the best of several float32 2048^3 `torch.mm` on this machine with the
threads used (a measured, attainable peak); GPU: the dense bf16 tensor-core peak (H100: 989 TFLOP/s).
The paper's figures are on an NVIDIA Jetson Orin (Nano), a different device: compare orderings and
ratios, not seconds (the JSON gives the Spearman rank correlation).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dse.metrics.latency import measure_latency
from dse.models.dit import DiT
from dse.sizing import count_params, forward_flops
from dse.types import Geometry, StudentArch

CIFAR = Geometry(32, 3, 10, 2)
PAPER_IMAGES, PAPER_BATCH, GUIDANCE = 50_000, 128, 1.5
# Paper Table 6 (App. D): (group, depth, width, heads, latency in s for 50k images on a Jetson Orin).
# Its last row, "5M (200 epochs)", is d7-w192-h12 again at 458.6 s (same network, longer training).
PAPER_TABLE6 = [
    ("0.42M", 1, 128, 8, 97.5), ("0.42M", 2, 96, 8, 123.6), ("0.42M", 5, 64, 4, 162.6),
    ("0.42M", 5, 64, 8, 198.7), ("0.42M", 9, 48, 6, 259.0), ("0.42M", 21, 32, 4, 411.7),
    ("2.2M", 3, 192, 12, 233.2), ("2.2M", 7, 128, 8, 322.6), ("2.2M", 13, 96, 8, 493.7),
    ("5M", 4, 256, 16, 367.6), ("5M", 16, 128, 8, 657.9), ("5M", 7, 192, 12, 460.9),
]
PAPER_DEVICE = "NVIDIA Jetson Orin (Nano), paper App. C-D"
CONTENDED = 0.8  # a CPU run whose CPU time is under 0.8 x threads x wall time shared the CPU with others
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def cpu_name() -> str:
    from dse.metrics.runtimes import cpu_model  # the name the latency cache's fingerprint uses

    return cpu_model()


def measured_cpu_peak(n: int = 2048, reps: int = 5) -> float:
    """Best float32 FLOP/s of an n x n x n matmul with torch's current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def student(arch: StudentArch, seed: int = 0) -> DiT:
    """A student with random weights everywhere (DiT's init zeroes the output layer, which would make
    the ONNX check trivially exact); latency does not depend on the weights' values."""
    torch.manual_seed(seed)
    model = DiT(arch, CIFAR)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:
        return None


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--images", type=int, default=0,
                    help="images timed per run (default: 128 on CPU, extrapolated to 50k; 50k on GPU)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="timed runs, lower median taken (default: 2 on CPU, 3 on GPU)")
    ap.add_argument("--onnx-images", type=int, default=128, help="images timed per onnxruntime run (CPU)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime timing")
    ap.add_argument("--dtype", default="", help="comma list of float32,bfloat16,float16 (default: float32 on CPU, "
                                                "float32,bfloat16 on GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the students (falls back to eager)")
    ap.add_argument("--quick", action="store_true", help="three students, 16 images (a smoke run)")
    args = ap.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        print(f"bench/latency.py: --device cuda, but torch {torch.__version__} sees no CUDA device; "
              "run it on a machine with an NVIDIA GPU or use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    if device.type not in ("cpu", "cuda"):
        print(f"bench/latency.py: --device must be cpu or cuda (got {args.device!r})", file=sys.stderr)
        raise SystemExit(2)
    table = PAPER_TABLE6[::4] if args.quick else PAPER_TABLE6
    images = args.images or (16 if args.quick else (PAPER_IMAGES if gpu else PAPER_BATCH))
    onnx_images = 16 if args.quick else args.onnx_images
    repeats = args.repeats or (3 if gpu else 2)
    dtypes = [d for d in (args.dtype or ("float32,bfloat16" if gpu else "float32")).split(",") if d]
    threads = torch.get_num_threads()
    if gpu:
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
        peak_note = "dense bf16 tensor-core peak from the vendor's datasheet" if peak else f"unknown peak for {name}"
    else:
        name = cpu_name()
        peak = measured_cpu_peak()
        peak_note = f"measured: best of 5 float32 2048^3 torch.mm on {threads} threads"
    scale = PAPER_IMAGES / images  # linear extrapolation to the paper's 50k images
    onnx_scale = PAPER_IMAGES / onnx_images
    print(f"{name}: {threads} threads, peak {peak / 1e9:,.0f} GFLOP/s ({peak_note})" if peak else name, flush=True)

    load_before = load_average()
    if load_before and not gpu and load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f} before the run: other processes share this CPU, so the "
              "figures are contended (the JSON records the load and each run's CPU/wall ratio)", flush=True)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for group, d, w, h, paper_s in table:
            arch = StudentArch(d, w, h)
            model = student(arch)
            flops = forward_flops(arch, CIFAR)
            floor = PAPER_IMAGES * 2 * flops / peak if peak else None  # x2: guidance doubles the batch
            row = {"group": group, "arch": arch.name, "depth": d, "width": w, "heads": h,
                   "params": count_params(arch, CIFAR), "gflops_per_image": flops / 1e9,
                   "paper_latency_s": paper_s, "flop_floor_s": floor}
            for dtype in dtypes:
                m = measure_latency(model, num_images=images, batch_size=PAPER_BATCH, guidance=GUIDANCE,
                                    repeats=repeats, device=device, dtype=dtype, compile=args.compile)
                key = "torch" if dtype == "float32" else f"torch_{dtype}"
                row[f"{key}_s"] = m["latency_s"] * scale
                row[f"{key}_measured_s"] = m["latency_s"]
                row[f"{key}_cpu_s"] = m["latency_cpu_s"] * scale if m["latency_cpu_s"] is not None else None
                row[f"{key}_compile"] = m["latency_compile"]
                if m["latency_cpu_s"] is not None:  # threads kept busy: about `threads` when uncontended
                    row[f"{key}_cpu_per_wall"] = m["latency_cpu_s"] / m["latency_s"]
                    row[f"{key}_contended"] = row[f"{key}_cpu_per_wall"] < CONTENDED * threads
            if not args.no_onnx:
                from dse.metrics.export import check_onnx, export_onnx, onnx_latency

                path = Path(tmp) / f"{arch.name}.onnx"
                e = export_onnx(model, path, guidance=GUIDANCE, batch_size=PAPER_BATCH)
                o = onnx_latency(path, num_images=onnx_images, batch_size=PAPER_BATCH, repeats=repeats,
                                 threads=0 if gpu else threads)
                row.update(onnx_s=o["latency_onnx_cpu_s"] * onnx_scale, onnx_measured_s=o["latency_onnx_cpu_s"],
                           onnx_threads=o["latency_onnx_threads"], onnx_max_abs_diff=check_onnx(model, path, GUIDANCE),
                           onnx_bytes=e["onnx_bytes"], onnx_export_s=e["onnx_export_s"])
            rows.append(row)
            first = "torch" if "float32" in dtypes else f"torch_{dtypes[0]}"
            print(f"{group:<6} {arch.name:<12} {row[f'{first}_s']:>9.1f} s"
                  + (f"  onnx {row['onnx_s']:>9.1f} s" if "onnx_s" in row else "")
                  + f"  paper {paper_s:>6.1f} s" + (f"  floor {floor:>7.2f} s" if floor else ""), flush=True)

    extrapolated = images != PAPER_IMAGES
    where = "GPU" if gpu else "CPU"
    print(f"\nSeconds for {PAPER_IMAGES:,} images at batch {PAPER_BATCH} with guidance {GUIDANCE} on {name} "
          f"({threads} threads), CIFAR-10 32x32x3, patch 2, random weights;")
    print(f"PyTorch eager {'timed on ' + format(images, ',') + ' images and extrapolated linearly' if extrapolated else 'timed on all of them'}"
          f" (lower median of {repeats}); onnxruntime on the CPU{'' if args.no_onnx else f', timed on {onnx_images:,} images and extrapolated'};")
    print(f"paper: {PAPER_DEVICE}; floor: 2 x 50k x forward FLOPs / {where} peak ({peak / 1e12:.3g} TFLOP/s, {peak_note}).\n"
          if peak else f"paper: {PAPER_DEVICE}; no floor (unknown peak).\n")
    cols = [("torch" if d == "float32" else f"torch_{d}") for d in dtypes]
    head = f"{'group':<6} {'student':<12} {'params':>10} {'GFLOP/img':>9} " + " ".join(f"{c + ' s':>16}" for c in cols)
    head += ("" if args.no_onnx else f" {'onnx s':>10} {'onnx err':>9}") + f" {'paper s':>8} {'floor s':>8}"
    print(head)
    for r in rows:
        line = f"{r['group']:<6} {r['arch']:<12} {r['params']:>10,} {r['gflops_per_image']:>9.3f} "
        line += " ".join(f"{r[c + '_s']:>15.1f}{'*' if r.get(c + '_contended') else ' '}" for c in cols)
        if not args.no_onnx:
            line += f" {r['onnx_s']:>10.1f} {r['onnx_max_abs_diff']:>9.1e}"
        line += f" {r['paper_latency_s']:>8.1f} " + (f"{r['flop_floor_s']:>8.2f}" if r["flop_floor_s"] else f"{'-':>8}")
        print(line)
    paper = [r["paper_latency_s"] for r in rows]
    rank = {c: spearman(paper, [r[c + "_s"] for r in rows]) for c in cols}
    if not args.no_onnx:
        rank["onnx"] = spearman(paper, [r["onnx_s"] for r in rows])
    if any(r.get(c + "_contended") for r in rows for c in cols):
        print(f"* contended: the run's CPU time was under {CONTENDED} x {threads} threads x its wall time "
              "(other processes had part of the CPU); the figure is pessimistic")
    print("\nSpearman rank correlation with the paper's latencies: "
          + ", ".join(f"{k} {v:.2f}" for k, v in rank.items()))
    elapsed = time.perf_counter() - start
    load_after = load_average()
    if load_before and not gpu:
        print(f"load average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
              f"(this process alone adds about {threads})")

    out = ROOT / "bench" / "results" / f"latency-{device.type}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": name, "threads": threads, "torch": torch.__version__,
        "onnxruntime": None if args.no_onnx else __import__("onnxruntime").__version__,
        "num_images": PAPER_IMAGES, "batch": PAPER_BATCH, "guidance": GUIDANCE, "geometry": "CIFAR-10 32x32x3, patch 2",
        "repeats": repeats, "warmup_batches": 1, "dtypes": dtypes, "compile_requested": args.compile,
        "extrapolated_from": images if extrapolated else None,
        "onnx_extrapolated_from": None if args.no_onnx else onnx_images,
        "onnx_device": "cpu (onnxruntime CPUExecutionProvider)", "onnx_exporter": "torchscript, opset 17",
        "peak_flops": peak, "peak_note": peak_note,
        "floor": "num_images x 2 (guidance) x dse.sizing.forward_flops / peak_flops (a lower bound)",
        "paper_device": PAPER_DEVICE,
        "paper_note": "Table 6's last row (5M, 200 epochs) is d7-w192-h12 again at 458.6 s",
        "spearman_vs_paper": rank, "bench_seconds": elapsed,
        "load_average_before": load_before, "load_average_after": load_after, "rows": rows,
    }, indent=2))
    print(f"\nwritten: {out.relative_to(ROOT)} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
