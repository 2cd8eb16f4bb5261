"""Benchmark whether a student's latency depends on its weights: the paper's Table 6 students timed on
fresh (untrained) weights and again after a short training, by the same protocol, and the run-to-run
variation of repeated quiet measurements (what `dse.metrics.latency.LATENCY_NOISE_FLOOR` should be).

    .venv/bin/python bench/latency_weights.py [--quick] [--num-images N] [--batch B] [--repeats R]
                                              [--rounds K] [--per-process M] [--steps S] [--device cpu]
                                              [--out PATH]

Why: a study measures each candidate's latency BEFORE training, on freshly initialised weights (DiT's
initialisation zeroes the adaLN and output layers), and caches it for later studies; that is right
only if trained weights run equally fast (no data-dependent kernels, no denormals from near-zero
weights), and a cached figure is compared with figures measured by other processes at other times.

Protocol: `dse.metrics.runtimes.measure` with the torch runtime (the library's protocol: noise on the
device, guidance as one batch of 2B, a warm-up round, R repeats, lower median; a contended measurement
made again, up to 3 times). Each student is built as a study builds it (`torch.manual_seed(0)`,
`DiT(arch, CIFAR-10 32x32x3, patch 2)`), copied, and the copy trained for S steps of AdamW (lr 1e-3,
batch 16, label dropout on) on 256 fixed (noise, label, image) pairs, as distillation trains, with
real CIFAR-10 images (the subset in ../shared/assets; random images where it is absent): a short,
honest training whose purpose is that every weight moves from its initialisation (the JSON records
by how much, and the pairs' loss before and after). Then K rounds, each in a FRESH PROCESS (as a
later study would measure), each measuring every student untrained and trained M times, in
alternating order, so slow drift of the machine falls on both alike.

Per student and weights the quiet measurements give a `dse.stats.estimate` (mean of the medians; SD
the larger of their spread and their own `latency_s_std`) and the verdict is `dse.stats.compare` of
trained against untrained: "same within noise" when tied; the `raw` verdict uses the measurements'
spread alone (no noise floor). Run-to-run variation, the relative SD of one student's medians pooled
over every (student, weights): between any two measurements (what LATENCY_NOISE_FLOOR should cover),
within one process, and between the processes' means; beside the spread (max - min) / median that
one measurement's repeats show.

Prints a table and writes bench/results/latency-weights-<device>[-quick].json (or --out). The full run
(12 students, 128 images, 3 repeats, 3 rounds x 2, 40 training steps) takes about 30 minutes on a
quiet 2-core CPU; --quick about 20 seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dse.metrics.latency import LATENCY_NOISE_FLOOR  # noqa: E402
from dse.metrics.runtimes import Protocol, cpu_model, measure  # noqa: E402
from dse.models.dit import DiT  # noqa: E402
from dse.sizing import count_params  # noqa: E402
from dse.stats import GREATER, LESS, TIED, compare, estimate  # noqa: E402
from dse.types import Geometry, StudentArch  # noqa: E402

CIFAR = Geometry(32, 3, 10, 2)
GUIDANCE = 1.5
SPACE = ROOT / "search_spaces" / "paper_table6.toml"
ASSET = ROOT.parent / "shared" / "assets" / "cifar10_exact_subset.npz"
TRAIN_BATCH, TRAIN_LR, NUM_PAIRS = 16, 1e-3, 256
VERDICTS = {TIED: "same within noise", LESS: "trained faster", GREATER: "trained slower"}


def table6_archs() -> list[StudentArch]:
    """The architectures of search_spaces/paper_table6.toml, in its order."""
    space = tomllib.loads(SPACE.read_text())["space"]
    return [StudentArch(*map(int, a)) for a in space["architectures"]]


def training_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """CIFAR-10 images (N, 3, 32, 32) in [-1, 1] and labels (N,) from the shared subset, or random
    images with random labels where it is absent; and which it is."""
    if ASSET.is_file():
        d = np.load(ASSET)
        x = torch.from_numpy(d["x_train"]).permute(0, 3, 1, 2).float() / 127.5 - 1  # NHWC uint8 -> NCHW [-1, 1]
        return x, torch.from_numpy(d["y_train"]).long(), f"CIFAR-10 subset ({ASSET.name}, {len(x)} images)"
    gen = torch.Generator().manual_seed(seed)
    n = 512
    return (torch.rand((n, 3, 32, 32), generator=gen) * 2 - 1, torch.randint(10, (n,), generator=gen),
            f"random targets ({ASSET} is absent)")


def pairs(x: torch.Tensor, y: torch.Tensor, n: int = NUM_PAIRS, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """`n` fixed (noise z, label y, image x) pairs, as distillation trains on: z (n, 3, 32, 32) ~ N(0, I),
    x a real image of label y (n, 3, 32, 32)."""
    gen = torch.Generator().manual_seed(seed)
    i = torch.randperm(len(x), generator=gen)[:n]
    return torch.randn((n, *x.shape[1:]), generator=gen), y[i], x[i]


@torch.no_grad()
def pair_loss(model: DiT, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> float:
    """Mean L2 over all the pairs, in eval mode (no label dropout)."""
    model.eval()
    return float(torch.nn.functional.mse_loss(model(z, y), x))


def train_briefly(model: DiT, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor, steps: int,
                  device: torch.device) -> dict:
    """`steps` of AdamW on L2(student(z, y), x) over the fixed pairs (batches of TRAIN_BATCH); the model
    is changed in place. Returns the pairs' loss before and after and how far the weights moved from
    where they started (relative L2 norm over every parameter, the frozen positions included)."""
    start = [p.detach().clone() for p in model.parameters()]
    loss_before = pair_loss(model, z, y, x)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=TRAIN_LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        i = torch.randint(len(z), (TRAIN_BATCH,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(z[i].to(device), y[i].to(device)), x[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.cpu().eval()
    params = list(model.parameters())
    moved = math.sqrt(sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(params, start)))
    norm0 = math.sqrt(sum(float(s.pow(2).sum()) for s in start))
    return {"loss_before": loss_before, "loss_after": pair_loss(model, z, y, x), "weights_moved_rel": moved / norm0,
            "final_layer_norm": float(model.final_layer.linear.weight.detach().norm()),  # 0 at initialisation
            "adaln_norm": float(sum(b.adaLN_modulation[-1].weight.detach().norm() for b in model.blocks))}


def pooled_cv(groups: list[list[float]]) -> float | None:
    """The pooled relative SD of several groups of values: each value divided by its group's mean, the
    squared deviations summed over the groups and divided by their degrees of freedom (n - 1 each)."""
    groups = [g for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    return math.sqrt(sum(float(np.sum((np.asarray(g) / np.mean(g) - 1) ** 2)) for g in groups) / dof)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def child(folder: Path, k: int) -> None:
    """One round, in a process of its own: measure every saved student, untrained and trained, the
    spec's `per_process` times each, in alternating order; write round-<k>.json to `folder`."""
    spec = json.loads((folder / "spec.json").read_text())
    states = torch.load(folder / "models.pt", weights_only=True)
    protocol, device = Protocol(**spec["protocol"]), torch.device(spec["device"])
    models = []
    for d, w, h in spec["archs"]:
        arch = StudentArch(d, w, h)
        for which in ("untrained", "trained"):
            model = DiT(arch, CIFAR)
            model.load_state_dict(states[arch.name][which])
            models.append((arch.name, which, model.eval()))
    rows = []
    for j in range(spec["per_process"]):
        flip = (k + j) % 2  # untrained first in one pass, trained first in the next
        for i in range(0, len(models), 2):
            for name, which, model in (models[i:i + 2] if not flip else models[i:i + 2][::-1]):
                rows.append({"arch": name, "which": which, "process": k, "pass": j,
                             **measure(model, protocol, device)})
    (folder / f"round-{k}.json").write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two students, 32 images, 20 training steps (a smoke run)")
    ap.add_argument("--num-images", type=int, default=0, help="images per timed run (default 128; quick 32)")
    ap.add_argument("--batch", type=int, default=0, help="batch (default 128; quick 16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (lower median taken)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each in a fresh process (default 3)")
    ap.add_argument("--per-process", type=int, default=2, help="measurements per student and weights in one round")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default 40; quick 20)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out", default="", help="the JSON to write (default bench/results/latency-weights-<device>.json)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: run one round from this folder
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.round)
        return

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/latency_weights.py: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        raise SystemExit(2)
    archs = table6_archs()[:2] if args.quick else table6_archs()
    num_images = args.num_images or (32 if args.quick else 128)
    batch = args.batch or (16 if args.quick else 128)
    rounds, per_process = args.rounds, args.per_process
    steps = args.steps or (20 if args.quick else 40)
    protocol = Protocol("torch", num_images=num_images, batch=batch, guidance=GUIDANCE, repeats=args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    threads = torch.get_num_threads()
    print(f"{name}: {threads} threads; {num_images} images at batch {batch}, guidance {GUIDANCE}, {args.repeats} "
          f"repeats; {rounds} rounds in fresh processes x {per_process} measurements; training {steps} steps",
          flush=True)

    start, load_before = time.perf_counter(), load_average()
    x, y, data_note = training_data()
    z_pairs, y_pairs, x_pairs = pairs(x, y)
    trained_info, states = {}, {}
    for arch in archs:
        torch.manual_seed(0)
        fresh = DiT(arch, CIFAR).eval()  # as the study's latency pass builds it
        trained = copy.deepcopy(fresh)
        t0 = time.perf_counter()
        info = train_briefly(trained, z_pairs, y_pairs, x_pairs, steps, device)
        info["train_s"] = time.perf_counter() - t0
        if info["weights_moved_rel"] < 1e-3:
            print(f"warning: {arch.name}'s weights barely moved ({info['weights_moved_rel']:.1e})", flush=True)
        trained_info[arch.name] = info
        states[arch.name] = {"untrained": fresh.state_dict(), "trained": trained.state_dict()}
        print(f"trained {arch.name:<12} loss {info['loss_before']:.4f} -> {info['loss_after']:.4f}, weights moved "
              f"{100 * info['weights_moved_rel']:.1f}% ({info['train_s']:.0f} s)", flush=True)

    measured: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dse-latency-weights-") as tmp:
        folder = Path(tmp)
        torch.save(states, folder / "models.pt")
        (folder / "spec.json").write_text(json.dumps({
            "protocol": protocol.to_dict(), "device": str(device), "per_process": per_process,
            "archs": [[a.depth, a.width, a.heads] for a in archs]}))
        for k in range(rounds):
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tmp, "--round", str(k)],
                           check=True)
            measured += json.loads((folder / f"round-{k}.json").read_text())
            print(f"round {k + 1}/{rounds} done ({time.perf_counter() - start:.0f} s)", flush=True)

    rows, series, by_process, spreads, contended = [], [], [], [], 0
    for arch in archs:
        out = {"arch": arch.name, "depth": arch.depth, "width": arch.width, "heads": arch.heads,
               "params": count_params(arch, CIFAR), "train": trained_info[arch.name]}
        est = {}
        for which in ("untrained", "trained"):
            runs = [r for r in measured if r["arch"] == arch.name and r["which"] == which]
            quiet = [r for r in runs if not r["latency_contended"]]
            contended += len(runs) - len(quiet)
            med = [r["latency_s"] for r in quiet]
            est[which] = estimate(med, [r["latency_s_std"] for r in quiet])
            est[which + "_raw"] = estimate(med)
            spreads += [r["latency_spread"] for r in quiet]
            series.append(med)
            procs = [[r["latency_s"] for r in quiet if r["process"] == k] for k in range(rounds)]
            by_process.append([p for p in procs if p])
            out[which] = {
                "median_s": est[which].mean, "sd_s": est[which].sd, "n": est[which].n,
                "p90_s": float(np.mean([r["latency_p90_s"] for r in quiet])) if quiet else None,
                "cv": pooled_cv([med]), "contended": len(runs) - len(quiet),
                "runs": [{k: r[k] for k in ("process", "pass", "latency_s", "latency_p90_s", "latency_min_s",
                                            "latency_s_std", "latency_spread", "latency_other_load",
                                            "latency_contended", "latency_attempts")} for r in runs],
            }
        u, t = est["untrained"], est["trained"]
        out["ratio"] = t.mean / u.mean if u.n and t.n else None
        out["verdict"] = VERDICTS[compare(t, u)] if u.n and t.n else "not measured (contended)"
        out["verdict_raw"] = VERDICTS[compare(est["trained_raw"], est["untrained_raw"])] if u.n and t.n else None
        rows.append(out)

    # run-to-run variation of quiet measurements, relative: any two measurements (overall), two in one
    # process (within), and the means of different processes (between)
    overall = pooled_cv(series)
    within = pooled_cv([g for procs in by_process for g in procs])
    between = pooled_cv([[float(np.mean(g)) for g in procs] for procs in by_process])
    cvs = sorted(c for r in rows for w in ("untrained", "trained") if (c := r[w]["cv"]) is not None)
    spread = float(np.median(spreads)) if spreads else None

    print(f"\nLatency for {num_images} images at batch {batch} with guidance {GUIDANCE} on {name} ({threads} threads), "
          f"CIFAR-10 32x32x3, patch 2; mean of the quiet measurements' medians (ms), SD as dse.stats.estimate:")
    print(f"{'student':<12} {'params':>9} {'untr med':>9} {'p90':>8} {'sd':>7} {'trained':>9} {'p90':>8} {'sd':>7} "
          f"{'ratio':>6}  verdict (raw: the measurements' spread only)")
    ms = lambda v: f"{1000 * v:.2f}" if v is not None and math.isfinite(v) else "-"  # noqa: E731
    for r in rows:
        u, t = r["untrained"], r["trained"]
        if r["ratio"] is None:
            print(f"{r['arch']:<12} {r['params']:>9,}  {r['verdict']}")
            continue
        print(f"{r['arch']:<12} {r['params']:>9,} {ms(u['median_s']):>9} {ms(u['p90_s']):>8} {ms(u['sd_s']):>7} "
              f"{ms(t['median_s']):>9} {ms(t['p90_s']):>8} {ms(t['sd_s']):>7} "
              f"{r['ratio']:>6.3f}  {r['verdict']} ({r['verdict_raw']})")
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a"  # noqa: E731
    print(f"\nrun-to-run variation of quiet measurements (relative SD, pooled over {len(cvs)} student x weights): "
          f"any two {pct(overall)} (per series: median {pct(float(np.median(cvs)) if cvs else None)}, "
          f"max {pct(cvs[-1] if cvs else None)}); within one process {pct(within)}; between processes' means "
          f"{pct(between)}")
    print(f"within one measurement (spread (max - min) / median of its repeats): median {pct(spread)}; "
          f"LATENCY_NOISE_FLOOR is {pct(LATENCY_NOISE_FLOOR)}")
    if contended:
        print(f"{contended} measurement(s) were contended even after re-measuring and are left out")
    elapsed = time.perf_counter() - start
    load_after = load_average()
    print(f"load average before / after: {load_before} / {load_after}")

    out_path = Path(args.out) if args.out else (
        ROOT / "bench" / "results" / f"latency-weights-{device.type}{'-quick' if args.quick else ''}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({
        "device": name, "threads": threads, "torch": torch.__version__, "protocol": protocol.to_dict(),
        "geometry": "CIFAR-10 32x32x3, patch 2", "rounds": rounds, "per_process": per_process, "training": {
            "steps": steps, "batch": TRAIN_BATCH, "lr": TRAIN_LR, "optimizer": "AdamW", "pairs": NUM_PAIRS,
            "loss": "L2 of student(z, y) to x over fixed (noise, label, image) pairs", "data": data_note},
        "noise_floor": LATENCY_NOISE_FLOOR, "cv_any_two": overall, "cv_within_process": within,
        "cv_between_processes": between, "cv_per_series": cvs, "within_run_spread_median": spread,
        "contended_left_out": contended, "load_average_before": load_before, "load_average_after": load_after,
        "bench_seconds": elapsed, "rows": rows,
    }, indent=2, default=str))
    print(f"\nwritten: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
