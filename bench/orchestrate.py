"""Benchmark the orchestrator: what Ray Tune and the results store cost per trial, and (on a GPU) how
much training throughput packing several small trials on one GPU buys.

    .venv/bin/python bench/orchestrate.py [--trials 12] [--device cuda]

Overhead: N trivial trials (a 1-step training of a tiny student on 512 digits pairs, FID on 200
samples, latency deferred) run through `dse.executor.run_trials`, one at a time (every CPU to each),
with the grid and the optuna drivers. Each trial reports the seconds it spent in `run_trial`; the
overhead per trial is (wall - sum of those) / N: Ray scheduling, worker start and imports, result
reporting and the row's store write (also timed alone). The store rows: write and read time of a
store of N rows, in this process.

GPU packing (`--device cuda`): 1, 2, 4 and 8 identical small trials at once, with 1/k of the GPU and
1/k of the CPUs each; the aggregate training images/s is the sum of the trials' own rates (an upper
bound: it assumes their training loops overlap fully) and, as a lower bound, all images trained over
the whole wall time of the run (worker start and FID included).

Prints a table and writes bench/results/orchestrate-<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dse.config import EvalConfig, TrainConfig  # noqa: E402
from dse.store import ResultsStore  # noqa: E402
from dse.trial import TrialSpec  # noqa: E402
from dse.types import Geometry, StudentArch


def make_pairs(root: Path) -> Path:
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings

    return generate_pairs(root / "digits", num_pairs=512, settings=SamplerSettings(num_steps=6), shard_size=512)


def trivial_specs(pairs: Path, n: int, device: str) -> list[TrialSpec]:
    """n distinct 1-step trials (distinct seeds give distinct trial ids)."""
    base = TrialSpec(
        study="bench", dataset="digits", geometry=Geometry(8, 1, 10), arch=StudentArch(1, 8, 2),
        train=TrainConfig(steps=1, batch_size=16, lr=1e-3), eval=EvalConfig(num_samples=200, samples_per_class=0),
        pairs_dir=str(pairs), budget=5_000, device=device, defer_latency=True,
    )
    return [dataclasses.replace(base, train=dataclasses.replace(base.train, seed=i)) for i in range(n)]


def overhead(pairs: Path, work: Path, n: int, search: str, cpus: float) -> dict:
    from dse.executor import run_trials

    done: list[dict] = []
    specs = trivial_specs(pairs, n, "cpu")
    store = work / f"trials-{search}"
    start = time.perf_counter()
    run_trials(specs, store, storage_dir=work / f"ray-{search}", cpus_per_trial=cpus, gpus_per_trial=0,
               search=search, num_samples=n,
               on_event=lambda tid, kind, data: done.append(data) if kind in ("complete", "failed") else None)
    wall = time.perf_counter() - start
    assert len(done) == n and len(ResultsStore(store).files()) == n, (len(done), n)
    times = [d["trial_seconds"] for d in done]  # in order: the trials run one at a time
    trial = sum(times)
    writes = sum(d["store_seconds"] for d in done)
    return {
        "search": search, "trials": n, "cpus_per_trial": cpus, "wall_s": wall, "sum_trial_s": trial,
        "overhead_per_trial_s": (wall - trial) / n, "store_write_per_row_s": writes / n,
        "trial_s_first": times[0], "trial_s_median_rest": sorted(times[1:])[len(times[1:]) // 2] if n > 1 else None,
    }


def store_timing(work: Path, n: int) -> dict:
    """Write and read a store of n rows in this process (a study reads its store at start and end)."""
    from dse.trial import base_row

    spec = trivial_specs(work / "none", 1, "cpu")[0]
    row = {**base_row(spec), "status": "complete", "error": None}
    store = ResultsStore(work / "store-timing")
    start = time.perf_counter()
    for i in range(n):
        store.write({**row, "trial_id": f"t{i:05d}"})
    write = (time.perf_counter() - start) / n
    start = time.perf_counter()
    df = store.read()
    read = time.perf_counter() - start
    assert len(df) == n
    return {"rows": n, "write_per_row_s": write, "read_all_s": read}


def gpu_packing(pairs: Path, work: Path, ks: tuple[int, ...], steps: int, device: str = "cuda") -> list[dict]:
    from dse.executor import run_trials

    cpus = os.cpu_count() or 1
    out = []
    for k in ks:
        base = TrialSpec(
            study="bench", dataset="digits", geometry=Geometry(8, 1, 10, 2), arch=StudentArch(4, 128, 4),
            train=TrainConfig(steps=steps, batch_size=256, lr=1e-3),
            eval=EvalConfig(num_samples=200, samples_per_class=0),
            pairs_dir=str(pairs), budget=1_000_000, device=device, defer_latency=True,
        )
        specs = [dataclasses.replace(base, train=dataclasses.replace(base.train, seed=100 * k + i)) for i in range(k)]
        store = work / f"gpu-{k}"
        start = time.perf_counter()
        run_trials(specs, store, storage_dir=work / f"ray-gpu-{k}", gpus_per_trial=1 / k,
                   cpus_per_trial=max(1, cpus // k))
        wall = time.perf_counter() - start
        df = ResultsStore(store).read()
        ok = df[df["status"] == "complete"]
        images = float((ok["steps"] * ok["batch_size"]).sum())
        out.append({
            "trials": k, "gpus_per_trial": 1 / k, "complete": int(len(ok)), "wall_s": wall,
            "aggregate_images_per_s": float(ok["train_images_per_s"].sum()),
            "per_trial_images_per_s": float(ok["train_images_per_s"].mean()) if len(ok) else None,
            "images_over_wall_per_s": images / wall,  # a lower bound: the wall includes worker start and FID
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12, help="trivial trials per driver for the overhead")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gpu-steps", type=int, default=300, help="training steps of each packed GPU trial")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import ray

    result: dict = {"device": args.device, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "host": platform.node(),
                    "load_average_1min_at_start": os.getloadavg()[0]}  # other work on the machine skews timings
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        pairs = make_pairs(work)
        result["pairs_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        result["ray_init_s"] = time.perf_counter() - start
        cpus = float(ray.cluster_resources().get("CPU", 1))
        result["overhead"] = [overhead(pairs, work, args.trials, s, cpus) for s in ("grid", "optuna")]
        result["store"] = store_timing(work, 200)
        if args.device == "cuda":
            result["gpu_packing"] = gpu_packing(pairs, work, (1, 2, 4, 8), args.gpu_steps)
        else:
            result["gpu_packing"] = "needs a GPU: run with --device cuda on a machine with one"
        ray.shutdown()

    print(f"ray.init: {result['ray_init_s']:.1f} s on {result['cpus']} CPUs (ray {result['ray']})")
    print(f"{'driver':8} {'trials':>6} {'wall s':>8} {'sum trial s':>12} {'overhead/trial s':>17} "
          f"{'store write/row s':>18} {'first trial s':>14} {'later trial s':>14}")
    for o in result["overhead"]:
        print(f"{o['search']:8} {o['trials']:>6} {o['wall_s']:>8.2f} {o['sum_trial_s']:>12.2f} "
              f"{o['overhead_per_trial_s']:>17.3f} {o['store_write_per_row_s']:>18.4f} {o['trial_s_first']:>14.2f} "
              f"{o['trial_s_median_rest'] or 0:>14.2f}")
    s = result["store"]
    print(f"store of {s['rows']} rows: write {1e3 * s['write_per_row_s']:.1f} ms/row, read all {s['read_all_s']:.2f} s")
    if isinstance(result["gpu_packing"], str):
        print(f"GPU packing: {result['gpu_packing']}")
    else:
        print(f"{'trials/GPU':>10} {'aggregate img/s':>16} {'(lower bound)':>14} {'per trial img/s':>16} {'wall s':>8}")
        for g in result["gpu_packing"]:
            print(f"{g['trials']:>10} {g['aggregate_images_per_s']:>16.0f} {g['images_over_wall_per_s']:>14.0f} "
                  f"{g['per_trial_images_per_s'] or 0:>16.0f} {g['wall_s']:>8.1f}")
    out = Path(args.out or ROOT / "bench" / "results" / f"orchestrate-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
