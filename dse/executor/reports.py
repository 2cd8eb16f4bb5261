"""Owns what a dse trial tells Ray Tune through `tune.report`: the phase of each report, read back by
the driver's event callback, the halving scheduler and the optuna searcher.

A PHASE_TRAIN report comes every few training steps (step, loss, params, total_steps; "fid" None,
because Tune checks that every report has the searcher's metrics); the one PHASE_DONE report ends a
trial (status, error, params, fid, latency_s, timings, the worker's niceness).
"""

from __future__ import annotations

PHASE_TRAIN, PHASE_DONE = "train", "done"
