"""Owns what a dse trial tells Ray Tune through `tune.report`: the phase of each report, read back by
the driver's event callback, the halving scheduler and the optuna searcher, and the latency it reports.

A PHASE_TRAIN report comes every few training steps (step, loss, params, total_steps, latency_s; "fid"
None, because Tune checks that every report has the searcher's metrics); the one PHASE_DONE report ends
a trial (status, error, params, fid, latency_s, timings, the worker's niceness). Every report's
"latency_s" is `reported_latency`: the trial's usable latency (measured before training, so known from
its first report on; `dse.search.usable_latency`), or None when it has none (not measured, or contended:
never ranked), which successive halving and the optuna sampler rank on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dse.search import usable_latency
from dse.trial import TrialSpec

PHASE_TRAIN, PHASE_DONE = "train", "done"


def reported_latency(spec: TrialSpec, row: Mapping[str, Any] | None = None) -> float | None:
    """The "latency_s" a trial reports: the usable latency of its row when `row` has one, else that of
    `spec.latency` (the study's measurement before training), else None."""
    found = usable_latency(row) if row is not None else None
    return found if found is not None else usable_latency(spec.latency_row)
