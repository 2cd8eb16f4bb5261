"""Owns driving a study's trials through Ray Tune: `run_trials` (grid or optuna search, halving, the
resources planned by `prepare_cluster`), the Tune trainable that runs one trial and stores its row,
the callback that turns Tune's trial callbacks into dse progress events, and the rows of the trials
successive halving stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune

import dse.search as dse_search
from dse.config import SEARCHES
from dse.errors import DseError
from dse.events import FAILED, START, STOPPED, TRAIN, OnEvent
from dse.executor.cluster import prepare_cluster
from dse.executor.halving import HalvingScheduler
from dse.executor.reports import PHASE_DONE, PHASE_TRAIN, reported_latency
from dse.executor.resources import node_shape, plan_cohort_resources, resources_of
from dse.layout import TUNE_DIR
from dse.sizing import count_params
from dse.store import ResultsStore
from dse.trial import TrialSpec, base_row, failure_text, run_cohort, run_trial

log = logging.getLogger(__name__)


def _total_steps(spec: TrialSpec) -> int:
    """The trial's training length (steps, or epochs over its pairs); the configured steps if the
    pairs cannot be opened (the trial then fails on its own)."""
    if spec.train.epochs <= 0:
        return spec.train.steps
    try:
        from dse.data.pairs import PairStore
        from dse.distill.train import total_steps

        return total_steps(spec.train, len(PairStore.open(spec.pairs_dir, verify=False)))
    except Exception:  # noqa: BLE001 - reported by run_trial itself
        return spec.train.steps


def _trainable(config: dict, specs: dict[str, TrialSpec], store_root: str,
               cohorts: dict[str, list[TrialSpec]] | None = None) -> None:
    """The Tune function trainable: run one trial (or the cohort its id leads), store its row(s), report
    progress and the result; the reports of a cohort name their `member`."""
    members = (cohorts or {}).get(config["trial_id"]) or [specs[config["trial_id"]]]
    params = {s.trial_id: count_params(s.arch, s.geometry) for s in members}
    total = {s.trial_id: _total_steps(s) for s in members}
    latency = {s.trial_id: reported_latency(s) for s in members}  # measured before training: halving ranks it
    one = len(members) == 1

    def report(tid: str, kind: str, data: dict) -> None:
        if kind == TRAIN:  # "fid": None, because Tune checks that every report has the searcher's metrics
            tune.report({"phase": PHASE_TRAIN, "step": data["step"], "loss": data["loss"], "params": params[tid],
                         "total_steps": total[tid], "fid": None, "latency_s": latency[tid],
                         **({} if one else {"member": tid})})

    share = min(1.0, ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0) or 1.0)  # of its GPU
    start = time.perf_counter()
    if one:
        results = [run_trial(members[0], partial(report, members[0].trial_id), gpu_share=share)]
    else:
        results = run_cohort(members, report, gpu_share=share)
    trial_seconds = time.perf_counter() - start
    _release_gpu_memory()  # the actor may run other trials next (reuse_actors); a shared GPU gets it back
    for spec, result in zip(members, results):
        row = result.row
        begin = time.perf_counter()
        try:
            ResultsStore(store_root).write(row)
        except OSError as exc:  # a full or read-only disk: the trial fails saying so (its row cannot be kept)
            row = {**row, "status": FAILED, "error": f"its row could not be stored: {failure_text(exc, store_root)}"}
        tune.report({
            "phase": PHASE_DONE, "status": row["status"], "error": row.get("error") or "",
            "params": row.get("params", params[spec.trial_id]), "fid": row.get("fid"),
            "latency_s": reported_latency(spec, row), "trial_seconds": trial_seconds,
            "store_seconds": time.perf_counter() - begin,
            "nice": os.nice(0),  # the worker's priority (see dse.executor)
            **({} if one else {"member": spec.trial_id, "cohort_size": len(members)}),
        })


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def run_trials(
    specs: list[TrialSpec], store_root: str | Path, *, storage_dir: str | Path, cpus_per_trial: float = 0,
    gpus_per_trial: float = -1, address: str = "", on_event: OnEvent | None = None, search: str = "grid",
    num_samples: int = 0, halving: bool = False, halving_rungs: int = 3, halving_eta: int = 3, seed: int = 0,
    context: Iterable[TrialSpec] = (), resources: dict[str, tuple[float, float]] | None = None,
    cohort_size: int = 1,
) -> None:
    """Run the specs as Ray Tune trials and wait for all of them; Ctrl-C raises KeyboardInterrupt.

    Ray: a local one (started here unless already running), or the cluster at `address` / $RAY_ADDRESS;
    `resources` from `prepare_cluster` (which connected already) are used as they are, else planned here.
    Resources per trial: `gpus_per_trial` (a fraction such as 0.25 packs four trials on a GPU;
    -1 chooses from each candidate's estimated memory, 0 without GPUs) and `cpus_per_trial` (0: the
    CPUs that go with the GPU share, or all of a node's CPUs for a CPU-only trial, so CPU trials run one
    at a time). `search`: "grid" runs every spec once; "optuna" runs `num_samples` distinct specs
    (0: all) sampled by multi-objective TPE over (fid, params, latency_s), seeded by `seed`; specs whose
    rows are already in the store as complete or stopped are told to the sampler and never run again,
    and so are the study's other candidates in `context` (done, or run by another process), which it
    learns from through their rows (failed ones included) and never runs.
    `halving` stops trials dominated in (params, latency, loss) at the rungs (`dse.search`); their rows
    are written with status STOPPED.
    Latency steers both from the start: each spec's `latency` (the study's measurement before training)
    is in every report of its trial (`reports.reported_latency`) and told to the sampler for every
    candidate. A latency that is missing or contended is never ranked: halving ranks such a rung on
    (params, loss), and the sampler, if any candidate lacks one, minimises (fid, params) with a warning.
    `cohort_size` (grid search without halving only; else each trial trains alone): compatible trials train
    together as one Tune trial led by the first member's id (`resources.plan_cohort_resources`: 0 chooses
    from the GPU memory, 1 alone, N at most N), one row and one set of events per member.
    """
    if search not in SEARCHES:
        raise DseError(f"search {search!r}: use one of {', '.join(SEARCHES)}")
    if halving and (halving_rungs < 2 or halving_eta < 2):
        raise DseError("halving needs halving_rungs >= 2 and halving_eta >= 2")
    by_id = {s.trial_id: s for s in specs}
    if not by_id:
        return
    store = ResultsStore(store_root)
    if resources is None or not ray.is_initialized():
        planned = prepare_cluster(list(by_id.values()), cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                  address=address)
        resources = planned if resources is None else resources
    for tid, spec in by_id.items():
        if not spec.threads:  # a trial's torch threads = the CPUs Ray gave it
            by_id[tid] = dataclasses.replace(spec, threads=max(1, int(resources[tid][0])))
    cohorts: dict[str, list[TrialSpec]] = {}
    if search == "grid" and not halving and cohort_size != 1:
        groups, resources = plan_cohort_resources(list(by_id.values()), resources, cohort_size=cohort_size,
                                                  gpus_per_trial=gpus_per_trial, node_gpus=node_shape()[1])
        cohorts = {g[0].trial_id: g for g in groups if len(g) > 1}
        led = {s.trial_id for g in cohorts.values() for s in g[1:]}
        by_id = {tid: s for tid, s in by_id.items() if tid not in led}  # Tune runs the leaders
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, specs=by_id, store_root=str(store.root.resolve()), cohorts=cohorts),
        partial(resources_of, resources),
    )
    naming = dict(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    scheduler, stopped = None, {}
    if halving:
        scheduler = HalvingScheduler(
            dse_search.SuccessiveHalving(halving_rungs, halving_eta), by_id,
            partial(_write_stopped, store, by_id, on_event, stopped),
        )
    if search == "grid":
        param_space = {"trial_id": tune.grid_search(list(by_id))}
        tune_config = tune.TuneConfig(scheduler=scheduler, reuse_actors=True, **naming)
    else:
        from dse.executor.optuna_search import known_results, make_optuna_search, search_key  # needs optuna

        others = {s.trial_id: s for s in context if s.trial_id not in by_id}
        every = {**others, **by_id}
        # a failed spec of ours may run again; rows without a latency take their spec's
        known = known_results(store, list(every), failed=others, specs=every)
        fresh = [tid for tid in by_id if tid not in known]
        n = min(num_samples or len(fresh), len(fresh))
        if n == 0:
            return
        keys = {tid: search_key(s) for tid, s in every.items()}
        latency = {tid: reported_latency(s) for tid, s in every.items()}  # measured before training
        param_space = {}
        tune_config = tune.TuneConfig(
            search_alg=make_optuna_search(keys, known, seed, unavailable=set(others), latency=latency),
            num_samples=n, scheduler=scheduler, reuse_actors=True, **naming)
    tuner = tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config,
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(Path(storage_dir).resolve()), verbose=0,
            callbacks=[Events(on_event, stopped, {k: [s.trial_id for s in g] for k, g in cohorts.items()})]
            if on_event else None,
        ),
    )
    tuner.fit()


def _trial_name(trial) -> str:
    return trial.config["trial_id"]


class Events(tune.Callback):
    """Turns Tune's trial callbacks into dse progress events; `stopped` holds the trials that
    successive halving stopped (their rows are already written), told as STOPPED when they end;
    `cohorts` (leader id -> member ids): a cohort's start and failure are told for each member, and its
    reports name their member."""

    def __init__(self, on_event: OnEvent, stopped: dict[str, dict] | None = None,
                 cohorts: dict[str, list[str]] | None = None):
        self.on_event = on_event
        self.stopped = stopped if stopped is not None else {}
        self.cohorts = cohorts or {}

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; the handler (a live table with locks,
        # a terminal) belongs to this driver process only, so a restored copy reports nothing.
        return {"stopped": self.stopped, "cohorts": self.cohorts}

    def __setstate__(self, state: dict) -> None:
        self.on_event = lambda trial_id, kind, data: None
        self.stopped = state["stopped"]
        self.cohorts = state.get("cohorts", {})

    def _members(self, trial) -> list[str]:
        tid = trial.config["trial_id"]
        return self.cohorts.get(tid, [tid])

    def on_trial_start(self, iteration, trials, trial, **info):
        for tid in self._members(trial):
            self.on_event(tid, START, {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = result.get("member") or trial.config["trial_id"]
        if result.get("phase") == PHASE_TRAIN:
            self.on_event(tid, TRAIN, {"step": result["step"], "loss": result["loss"]})
        elif result.get("phase") == PHASE_DONE:
            self.on_event(tid, result["status"], dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.config["trial_id"]
        if tid in self.stopped:
            self.on_event(tid, STOPPED, self.stopped[tid])

    def on_trial_error(self, iteration, trials, trial, **info):
        for tid in self._members(trial):
            self.on_event(tid, FAILED, {"error": "the Ray worker running it failed"})


def stopped_row(spec: TrialSpec, stop: dse_search.Stop, train_seconds: float | None = None) -> dict[str, Any]:
    """The store row of a trial stopped by successive halving: its configuration, the step and loss
    it reached, status STOPPED and the reason."""
    row = base_row(spec)
    now = datetime.now(timezone.utc)
    row.update({
        "status": STOPPED, "error": stop.reason, "steps": stop.step, "final_loss": stop.loss,
        "train_seconds": train_seconds, "finished_at": now.isoformat(timespec="seconds"),
    })
    if train_seconds is not None:
        row["started_at"] = (now - timedelta(seconds=train_seconds)).isoformat(timespec="seconds")
    return row


def _write_stopped(store: ResultsStore, specs: dict[str, TrialSpec], on_event: OnEvent | None,
                   stopped: dict[str, dict], trial_id: str, stop: dse_search.Stop, result: dict) -> None:
    """Driver side: store the stopped trial's row; `Events` tells the caller when Tune has stopped it."""
    row = stopped_row(specs[trial_id], stop, result.get("time_total_s"))
    try:
        store.write(row)
    except Exception as exc:  # noqa: BLE001 - the study goes on; the trial will simply run again next time
        log.error("could not store the stopped trial %s: %s", trial_id, exc)
        if on_event:
            on_event(trial_id, FAILED, {"error": f"{stop.reason}; its row could not be stored: {exc}"})
        return
    stopped[trial_id] = {"error": stop.reason, "step": stop.step, "loss": stop.loss, "rank": stop.rank,
                         "rung": stop.rung, "params": row["params"]}
