"""Owns running trials with Ray Tune (the only module that imports ray): one Tune trial per
candidate, on a local Ray by default or on a cluster given its address.

Each Tune trial calls `dse.trial.run_trial` and writes its row to the results store itself, so a
finished trial is in the store even if the driver dies; progress flows back through `tune.report`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports: runs offline
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from dse.store import ResultsStore
from dse.trial import TrialSpec, run_trial

# Event callback: (trial_id, kind, data); kinds are "start", "train", "complete", "failed".
OnEvent = Callable[[str, str, dict], None]


def _trainable(config: dict, specs: dict[str, TrialSpec], store_root: str) -> None:
    """The Tune function trainable: run one trial, store its row, report progress and the result."""
    spec = specs[config["trial_id"]]

    def progress(kind: str, data: dict) -> None:
        if kind == "train":
            tune.report({"phase": "train", "step": data["step"], "loss": data["loss"]})

    result = run_trial(spec, progress)
    ResultsStore(store_root).write(result.row)
    row = result.row
    tune.report({
        "phase": "done", "status": row["status"], "error": row.get("error") or "",
        "params": row.get("params"), "fid": row.get("fid"), "latency_s": row.get("latency_s"),
    })


def run_trials(
    specs: list[TrialSpec], store_root: str | Path, *, storage_dir: str | Path, cpus_per_trial: float = 0,
    gpus_per_trial: float = 0, address: str = "", on_event: OnEvent | None = None,
) -> None:
    """Run every spec as a Ray Tune trial and wait for all of them.

    `cpus_per_trial = 0` gives a trial every CPU of the local machine, so trials run one at a time
    and each measures its latency with the machine to itself.
    """
    if not specs:
        return
    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
            log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
        )
    cpus = cpus_per_trial or max(1, int(ray.available_resources().get("CPU", os.cpu_count() or 1)))
    by_id = {s.trial_id: s for s in specs}
    for spec in specs:
        if not spec.threads:
            by_id[spec.trial_id] = dataclasses.replace(spec, threads=max(1, int(cpus)))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, specs=by_id, store_root=str(Path(store_root).resolve())),
        {"cpu": cpus, "gpu": gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(
            trial_name_creator=lambda t: t.config["trial_id"], trial_dirname_creator=lambda t: t.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(Path(storage_dir).resolve()), verbose=0,
            callbacks=[Events(on_event)] if on_event else None,
        ),
    )
    tuner.fit()


class Events(tune.Callback):
    """Turns Tune's trial callbacks into dse progress events."""

    def __init__(self, on_event: OnEvent):
        self.on_event = on_event

    def on_trial_start(self, iteration, trials, trial, **info):
        self.on_event(trial.config["trial_id"], "start", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config["trial_id"]
        if result.get("phase") == "train":
            self.on_event(tid, "train", {"step": result["step"], "loss": result["loss"]})
        elif result.get("phase") == "done":
            self.on_event(tid, result["status"], dict(result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_event(trial.config["trial_id"], "failed", {"error": "the Ray worker running it failed"})
