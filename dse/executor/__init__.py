"""Owns running trials with Ray Tune, the only package that imports ray: one Tune trial per candidate,
on a local Ray by default or on a cluster given its address; this file names its public functions.

Each Tune trial calls `dse.trial.run_trial` and writes its row to the results store itself, so a
finished trial is in the store even if the driver dies; progress flows back through `tune.report`
(every report carries the trial's "params", so a scheduler can rank partial results). Tune reuses a
worker for the next trial with the same resources (`reuse_actors`), so the imports and the CUDA start
are paid once per worker rather than once per trial (bench/orchestrate.py, 2 CPUs: 0.17 s of overhead
a trial instead of 1.9 s, and the first trial's 4 s of imports once per worker instead of every time).

- `cluster.py`: the address (format, a TCP connect and a token probe of the GCS, each within
  PROBE_TIMEOUT_S), connecting, and `prepare_cluster`, which checks the resources asked against the
  cluster's nodes, all before a study writes anything; `run_trials` reuses that connection and those
  resources.
- `resources.py`: per trial, from `dse.search.trial_resources`: a fraction of a GPU chosen from the
  candidate's estimated peak training memory (or the fraction given), and the CPUs that go with it,
  given to Tune as a plain resource dict.
- `driver.py`: `run_trials`, the Tune trainable, the progress events, the rows of stopped trials.
  Search: "grid" runs every spec once; "optuna" samples `num_samples` distinct specs with Optuna's
  multi-objective TPE (`optuna_search.py`, imported only for that search) over (fid, params,
  latency_s), all minimised. The study measures latency before training (`TrialSpec.latency`), so it
  steers the sampler and halving from the first trial: every Optuna trial carries its candidate's
  latency; when a candidate has no usable one (not measured, or contended) the sampler falls back to
  (fid, params) and says so.
- `halving.py`: `HalvingScheduler` stops trials whose partial (params, latency, loss) is dominated at a
  rung (`dse.search.SuccessiveHalving`; (params, loss) at a rung where one lacks a usable latency); the
  driver writes their rows with status STOPPED.
- `reports.py`: what a trial tells Tune (the phases of its reports, and the latency every report
  carries), read by the driver, the scheduler and the searcher.
- Ctrl-C: Tune's own SIGINT handler (which stops the run gracefully and returns as if it had
  finished) is off, so an interrupted `run_trials` raises KeyboardInterrupt; the trials keep their
  checkpoints (`last.pt`) and the next run resumes them.
- Priority: the raylet starts trial workers at `RAY_worker_niceness` (Ray's default: nice 15, so a
  trial starves beside any other load); a local Ray started here runs them at the driver's own
  niceness instead (`RAY_worker_niceness` set in the environment wins). Each trial reports its niceness.

Ray's settings below are read when ray is imported, so they are set here, before any module of this
package imports it (Python runs this file before any of its submodules).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports: runs offline
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises KeyboardInterrupt (module docstring)
os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))  # trials at the driver's priority, not nice 15

from dse.executor.cluster import PROBE_TIMEOUT_S, check_reachable, connect, prepare_cluster  # noqa: E402
from dse.executor.driver import SEARCHES, Events, run_trials, stopped_row  # noqa: E402
from dse.executor.halving import HalvingScheduler, halving_group  # noqa: E402
from dse.executor.resources import gpu_memory_bytes, plan_resources, resources_of  # noqa: E402

__all__ = [
    "PROBE_TIMEOUT_S", "SEARCHES", "Events", "HalvingScheduler", "check_reachable", "connect", "gpu_memory_bytes",
    "halving_group", "plan_resources", "prepare_cluster", "resources_of", "run_trials", "stopped_row",
]
