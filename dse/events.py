"""Owns the words a study's parts exchange: the statuses a stored trial row can have, the kinds of
progress event the executor and the study send, and the `OnEvent` callback type (no dependencies).

An event is `on_event(trial_id, kind, data)`: START when a trial begins, TRAIN every few steps
(`data`: step, loss), LATENCY when the latency pass measured it (`data`: the row with its latency
columns), and one of the row statuses when it ends (`data`: the row, or for FAILED at least `error`).
`run_trial`'s own progress callback also sends QUALITY once the images are measured (fid, kid, is_mean).
OUTSIDE says that a planned trial is not trained because its candidate is outside the study's
constraints (`data`: reason, and the latency columns when it was measured).
"""

from __future__ import annotations

from collections.abc import Callable

# The status of a stored trial row.
COMPLETE, FAILED, STOPPED = "complete", "failed", "stopped"
STATUSES = (COMPLETE, FAILED, STOPPED)

# Progress events besides the statuses above.
START, TRAIN, QUALITY, LATENCY, OUTSIDE = "start", "train", "quality", "latency", "outside"
EVENT_KINDS = (START, TRAIN, QUALITY, LATENCY, OUTSIDE, *STATUSES)

OnEvent = Callable[[str, str, dict], None]
