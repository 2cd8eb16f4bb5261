"""Owns the optuna search: `DistinctOptunaSearch`, Ray Tune's `OptunaSearch` with seeded
multi-objective TPE over (fid, params, latency_s) that never suggests a candidate twice, and what the
store tells it (`known_results`). Imported only for `search = "optuna"` (it needs the optuna package).

Latency is measured before training, so the sampler knows it for every candidate from the start: every
Optuna trial it asks or creates (complete, pruned, failed, told from the store) carries the candidate's
latency as the user attribute "latency_s", and a complete one has it as its third value. It is an
objective only when every candidate of the search (the study's others too) has a usable latency
(`dse.search.usable_latency`); otherwise the search is over (fid, params), with a warning naming how many
lack one (a missing value cannot be told to Optuna as a value, and a made-up one would steer it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ray.tune.search.optuna import OptunaSearch

import dse.search as dse_search
from dse.errors import DseError
from dse.events import COMPLETE, FAILED, STOPPED
from dse.executor.reports import PHASE_DONE, PHASE_TRAIN, reported_latency
from dse.store import ResultsStore, is_null
from dse.trial import TrialSpec

try:
    import optuna as ot
except ImportError:
    raise DseError("search = optuna needs the optuna package: pip install optuna") from None

log = logging.getLogger(__name__)

# What the optuna search minimises: image quality, size and latency (measured before training).
SEARCH_OBJECTIVES = ("fid", "params", "latency_s")
# ... when a candidate of the search has no usable latency.
FALLBACK_OBJECTIVES = ("fid", "params")
LATENCY_ATTR = "latency_s"  # the user attribute of every Optuna trial: its candidate's latency (None: none)


def search_key(spec: TrialSpec) -> tuple:
    """The spec's path in the optuna search space (`search.SEARCH_LEVELS`): training, width, depth, heads."""
    return (spec.variant or f"{spec.train.setup}-{spec.train.loss}", spec.arch.width, spec.arch.depth, spec.arch.heads)


class Known(NamedTuple):
    """A result the sampler is told: state "complete" (values [fid, params]), "pruned" or "fail" (values
    None), and the candidate's usable latency in seconds (None: none known from its row)."""

    state: str
    values: list[float] | None
    latency: float | None = None


def known_results(store: ResultsStore, ids: list[str], *, failed: Iterable[str] = (),
                  specs: Mapping[str, TrialSpec] | None = None) -> dict[str, Known]:
    """trial_id -> what the store says of it, for the ids with a row that counts: complete (with fid and
    params), stopped or complete without an FID (pruned) and, for the ids in `failed`, failed. The latency
    is the row's usable one, or, for a row without (stored before latency came first), that of its spec
    in `specs`."""
    failed, specs = set(failed), specs or {}
    df = store.read()
    out: dict[str, Known] = {}
    for rec in df[df["trial_id"].isin(set(ids))].to_dict("records"):
        tid, status = rec["trial_id"], rec["status"]
        latency = reported_latency(specs[tid], rec) if tid in specs else dse_search.usable_latency(rec)
        values = [rec.get(k) for k in FALLBACK_OBJECTIVES]
        if status == COMPLETE and not any(map(is_null, values)):
            out[tid] = Known("complete", [float(v) for v in values], latency)
        elif status in (COMPLETE, STOPPED):
            out[tid] = Known("pruned", None, latency)
        elif status == FAILED and tid in failed:
            out[tid] = Known("fail", None, latency)
    return out


class DistinctOptunaSearch(OptunaSearch):
    """OptunaSearch over the candidates that never suggests one twice.

    A sampled candidate that already ran (or is running) is not run again: its Optuna trial is
    told that candidate's result (at once, or when the running one ends) and the sampler is asked
    again; after MAX_DRAWS duplicates in a row, the next untried candidate in a seeded order is
    enqueued. A trial stopped by halving is told as pruned, a failed one as failed.
    """

    MAX_DRAWS = 200
    STATES = {"complete": ot.trial.TrialState.COMPLETE, "pruned": ot.trial.TrialState.PRUNED,
              "fail": ot.trial.TrialState.FAIL}

    def __init__(self, keys: dict[str, tuple], known: Mapping[str, tuple], seed: int, unavailable=(),
                 latency: Mapping[str, float | None] | None = None):
        ot.logging.set_verbosity(ot.logging.WARNING)
        self._tree = dse_search.CandidateTree(keys)
        known = {tid: Known(*k) for tid, k in known.items()}
        latency = latency or {}
        # each candidate's latency: from its row when the store has one, else as given (from its spec)
        self._latency: dict[str, float | None] = {
            tid: known[tid].latency if tid in known and known[tid].latency is not None else latency.get(tid)
            for tid in keys}
        lacking = sum(v is None for v in self._latency.values())
        self.objectives = SEARCH_OBJECTIVES if not lacking else FALLBACK_OBJECTIVES
        if lacking:
            log.warning("optuna: %d of %d candidates have no usable latency (not measured, or contended): "
                        "the sampler minimises (%s) only", lacking, len(keys), ", ".join(self.objectives))
        super().__init__(space=self._define, metric=list(self.objectives), mode=["min"] * len(self.objectives),
                         seed=seed)
        self._order = random.Random(seed).sample(sorted(keys), len(keys))  # the fallback order
        self._outcome: dict[str, Known] = {}
        self._running: set[str] = set(unavailable) - set(known)
        self._waiting: dict[str, list] = {}  # candidate -> Optuna trials sampled while it was running
        self._candidate: dict[str, str] = {}  # Tune trial id -> candidate
        for tid, outcome in known.items():
            path = self._tree.path(tid)
            self._ot_study.add_trial(ot.trial.create_trial(
                state=self.STATES[outcome.state], values=self._values(tid, outcome),
                params={n: v for n, (v, _) in path.items()},
                distributions={n: ot.distributions.CategoricalDistribution(o) for n, (_, o) in path.items()},
                user_attrs={LATENCY_ATTR: self._latency.get(tid)}))
            self._outcome[tid] = outcome

    def _values(self, tid: str, outcome: Known) -> list[float] | None:
        """What Optuna is told of a complete trial: [fid, params], and its latency when it is an objective."""
        if outcome.values is None:
            return None
        return [*outcome.values, self._latency[tid]] if "latency_s" in self.objectives else list(outcome.values)

    def _define(self, ot_trial) -> None:  # the define-by-run space (OptunaSearch needs one to start)
        self._tree.walk(ot_trial.suggest_categorical)

    def _tell(self, ot_trial, tid: str) -> None:
        outcome = self._outcome[tid]
        ot_trial.set_user_attr(LATENCY_ATTR, self._latency.get(tid))  # the latency the result came with
        self._ot_study.tell(ot_trial, self._values(tid, outcome), state=self.STATES[outcome.state])

    def _tried(self, tid: str) -> bool:
        return tid in self._outcome or tid in self._running

    def suggest(self, trial_id: str):
        if all(self._tried(t) for t in self._order):
            return self.FINISHED
        for _ in range(self.MAX_DRAWS):
            ot_trial = self._ot_study.ask()
            tid = self._tree.walk(ot_trial.suggest_categorical)
            ot_trial.set_user_attr(LATENCY_ATTR, self._latency.get(tid))
            if not self._tried(tid):
                break
            if tid in self._outcome:
                self._tell(ot_trial, tid)
            else:
                self._waiting.setdefault(tid, []).append(ot_trial)
        else:
            tid = next(t for t in self._order if not self._tried(t))
            self._ot_study.enqueue_trial({n: v for n, (v, _) in self._tree.path(tid).items()})
            ot_trial = self._ot_study.ask()
            self._tree.walk(ot_trial.suggest_categorical)  # takes the enqueued choices: tid
            ot_trial.set_user_attr(LATENCY_ATTR, self._latency.get(tid))
        self._ot_trials[trial_id] = ot_trial
        self._candidate[trial_id] = tid
        self._running.add(tid)
        return {"trial_id": tid}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        tid = self._candidate.get(trial_id)
        if tid is None or tid in self._outcome:
            return
        result = result or {}
        reported = dse_search.usable_latency(result)  # the row's, as the trial reports it (`reported_latency`)
        if reported is not None:
            self._latency[tid] = reported
        values = [result.get(k) for k in FALLBACK_OBJECTIVES]
        if result.get("phase") == PHASE_DONE and result.get("status") == COMPLETE and not any(map(is_null, values)):
            self._outcome[tid] = Known("complete", [float(v) for v in values], self._latency[tid])
        elif result.get("phase") == PHASE_TRAIN and not error:  # stopped by halving
            self._outcome[tid] = Known("pruned", None, self._latency[tid])
        else:
            self._outcome[tid] = Known("fail", None, self._latency[tid])
        self._running.discard(tid)
        for ot_trial in [self._ot_trials[trial_id], *self._waiting.pop(tid, [])]:
            try:
                self._tell(ot_trial, tid)
            except Exception as exc:  # noqa: BLE001 - a sampler bookkeeping issue must not stop the study
                log.warning("optuna: could not tell trial %s: %s", tid, exc)
        self._completed_trials.add(trial_id)


def make_optuna_search(keys: dict[str, tuple], known: Mapping[str, tuple], seed: int = 0, unavailable=(),
                       latency: Mapping[str, float | None] | None = None) -> DistinctOptunaSearch:
    """A `DistinctOptunaSearch`: Ray Tune's `OptunaSearch` with seeded multi-objective TPE over
    (fid, params, latency_s) (or (fid, params) when a candidate has no usable latency), sampling a
    candidate as a path of categorical choices (`search.CandidateTree` over `keys`, trial_id ->
    `search_key`), told the results in `known` (`Known`, or (state, values) pairs) and never suggesting
    those nor the `unavailable` ids (candidates of the study run elsewhere). `latency`: trial_id -> its
    usable latency in seconds or None (from its spec; a known row's own latency wins)."""
    return DistinctOptunaSearch(keys, known, seed, unavailable, latency)
