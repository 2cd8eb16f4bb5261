"""Owns successive halving under Ray Tune: `HalvingScheduler`, a Tune scheduler that asks
`dse.search.SuccessiveHalving` at every training report and stops the trials it rejects, and
`halving_group`, which trials' losses it compares. It ranks what each training report carries: the
trial's params, its loss and its latency ("latency_s": measured before training, None when not usable).

Halving compares candidates, not training seeds: the seeds of one candidate (`TrialSpec.candidate_id`)
are one entry of the halving, the first of them to reach a rung stands for the candidate there, and
its other seeds follow that decision (all go on, or all stop at their next report). Seeds compared
with each other would stop every seed but the luckiest one, leaving one biased row per candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

import dse.search as dse_search
from dse.executor.reports import PHASE_TRAIN
from dse.trial import TrialSpec


def halving_group(spec: TrialSpec, total_steps: int) -> str:
    """Trials whose training losses are comparable: same setup, loss function and run length."""
    return f"{spec.train.setup}/{spec.train.loss}/{total_steps}"


class HalvingScheduler(FIFOScheduler):
    """A Tune scheduler that asks `search.SuccessiveHalving` at every training report and stops the
    trials it rejects; `on_stop(trial_id, stop, result)` records them (the trial's own code never
    writes a row for them: with synchronous reporting it is blocked in `tune.report` until it stops)."""

    def __init__(self, halving: dse_search.SuccessiveHalving, specs: dict[str, TrialSpec],
                 on_stop: Callable[[str, dse_search.Stop, dict], None]):
        super().__init__()
        self.halving, self.specs, self.on_stop = halving, specs, on_stop

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("phase") != PHASE_TRAIN:
            return TrialScheduler.CONTINUE
        tid = trial.config["trial_id"]
        spec, total = self.specs[tid], int(result["total_steps"])
        stop = self.halving.observe(spec.candidate_id, halving_group(spec, total), params=result["params"],
                                    step=int(result["step"]), total_steps=total, loss=result["loss"],
                                    latency=result.get("latency_s"))
        if stop is None:
            return TrialScheduler.CONTINUE
        # the candidate's decision, at this seed's own report
        stop = dataclasses.replace(stop, trial_id=tid, step=int(result["step"]), loss=result["loss"])
        self.on_stop(tid, stop, result)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"Successive halving on the non-dominated rank (rungs {self.halving.rungs}, eta {self.halving.eta})."
