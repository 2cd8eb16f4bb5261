"""Does a one-step DiT student follow its class label when trained with LPIPS? The experiment behind
the LPIPS answer in docs/findings.md.

    .venv/bin/python bench/lpips_labels.py [--quick] [--steps N] [--cifar NPZ]

The target is made trivially learnable: every (noise, label) pair's image is ONE fixed training image
of that class (a prototype), so a student that follows its label can reach zero loss. Each run trains
a fresh student with AdamW (lr 1e-3, the demo's) on that target and reports the share of its outputs
(200 noises, labels 0..9 in turn) whose nearest prototype in pixels is the prototype of their own label
(chance: 0.1). Runs: digits (8x8x1, d4-w48-h6, batch 128) with l2; lpips at 64; lpips on tanh(output)
(bounded images); l2 for the first third of the steps then lpips; lpips + l2; and, with a CIFAR-10 file
(default ../shared/assets/cifar10_exact_subset.npz, when present), CIFAR-10 (32x32x3, d4-w64-h8, batch
32) with l2 and lpips at 64. Prints a table and writes bench/results/lpips-labels-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dse.data.datasets import load_dataset
from dse.distill.losses import l2, make_loss
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "assets" / "cifar10_exact_subset.npz"


def prototypes(dataset: str, root: str | None) -> torch.Tensor:
    ds = load_dataset(dataset, root, split="train")
    images = ds.as_float()
    return torch.from_numpy(np.stack([images[np.flatnonzero(ds.labels == k)[0]] for k in range(10)]).astype(np.float32))


def run(proto: torch.Tensor, arch: StudentArch, loss_name: str, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    g = Geometry(proto.shape[-1], proto.shape[1], 10, 2)
    student = DiT(arch, g, label_dropout=0.0)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    lpips = make_loss("lpips", lpips_size=64) if "lpips" in loss_name else None

    def loss_of(target, out, step):
        if loss_name == "l2":
            return l2(target, out)
        if loss_name == "lpips":
            return lpips(target, out)
        if loss_name == "lpips(tanh)":
            return lpips(target, torch.tanh(out))
        if loss_name == "l2-then-lpips":
            return l2(target, out) if step < steps // 3 else lpips(target, out)
        return lpips(target, out) + l2(target, out)  # lpips+l2

    start = time.perf_counter()
    for step in range(steps):
        z = torch.randn(batch, *proto.shape[1:])
        y = torch.randint(10, (batch,))
        value = loss_of(proto[y], student(z, y), step)
        opt.zero_grad()
        value.backward()
        opt.step()
    student.eval()
    with torch.no_grad():
        y = torch.arange(200) % 10
        out = student(torch.randn(200, *proto.shape[1:]), y)
        if loss_name == "lpips(tanh)":
            out = torch.tanh(out)
        nearest = torch.cdist(out.flatten(1), proto.flatten(1)).argmin(1)
    return {"loss": loss_name, "steps": steps, "batch": batch, "arch": arch.name,
            "follows_label": float((nearest == y).float().mean()), "final_loss": float(value.detach()),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, digits l2 and lpips only (CI-sized)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cifar", default=str(CIFAR))
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    digits = prototypes("digits", None)
    for loss in (("l2", "lpips") if args.quick else ("l2", "lpips", "lpips(tanh)", "l2-then-lpips", "lpips+l2")):
        rows.append({"data": "digits", **run(digits, StudentArch(4, 48, 6), loss, steps, 128)})
    if not args.quick and Path(args.cifar).is_file():
        cifar = prototypes("cifar10", args.cifar)
        for loss in ("l2", "lpips"):
            rows.append({"data": "cifar10", **run(cifar, StudentArch(4, 64, 8), loss, steps, 32)})
    print(f"{'data':<8} {'loss':<14} {'arch':<10} {'steps':>5} {'follows label':>13} {'final loss':>10} {'s':>6}")
    for r in rows:
        print(f"{r['data']:<8} {r['loss']:<14} {r['arch']:<10} {r['steps']:>5} {r['follows_label']:>13.3f} "
              f"{r['final_loss']:>10.4f} {r['seconds']:>6.1f}")
    out = ROOT / "bench" / "results" / "lpips-labels-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"chance": 0.1, "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "machine": platform.processor() or platform.machine(), "quick": args.quick,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
