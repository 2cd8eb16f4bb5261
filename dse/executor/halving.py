"""Owns successive halving under Ray Tune: `HalvingScheduler`, a Tune scheduler that asks
`dse.search.SuccessiveHalving` at every training report and stops the trials it rejects, and
`halving_group`, which trials' losses it compares.
"""

from __future__ import annotations

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
        total = int(result["total_steps"])
        stop = self.halving.observe(tid, halving_group(self.specs[tid], total), params=result["params"],
                                    step=int(result["step"]), total_steps=total, loss=result["loss"])
        if stop is None:
            return TrialScheduler.CONTINUE
        self.on_stop(tid, stop, result)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"Successive halving on the non-dominated rank (rungs {self.halving.rungs}, eta {self.halving.eta})."
