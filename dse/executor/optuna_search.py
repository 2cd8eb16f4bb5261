"""Owns the optuna search: `DistinctOptunaSearch`, Ray Tune's `OptunaSearch` with seeded
multi-objective TPE over (fid, params) that never suggests a candidate twice, and what the store tells
it (`known_results`). Imported only for `search = "optuna"` (it needs the optuna package).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

from ray.tune.search.optuna import OptunaSearch

import dse.search as dse_search
from dse.errors import DseError
from dse.events import COMPLETE, FAILED, STOPPED
from dse.executor.reports import PHASE_DONE, PHASE_TRAIN
from dse.store import ResultsStore, is_null
from dse.trial import TrialSpec

try:
    import optuna as ot
except ImportError:
    raise DseError("search = optuna needs the optuna package: pip install optuna") from None

log = logging.getLogger(__name__)

# What the optuna search minimises (latency comes later, in the study's own pass).
SEARCH_OBJECTIVES = ("fid", "params")


def search_key(spec: TrialSpec) -> tuple:
    """The spec's path in the optuna search space (`search.SEARCH_LEVELS`): training, width, depth, heads."""
    return (spec.variant or f"{spec.train.setup}-{spec.train.loss}", spec.arch.width, spec.arch.depth, spec.arch.heads)


# A result the sampler is told: ("complete", [fid, params]), ("pruned", None) or ("fail", None).
Known = tuple[str, "list[float] | None"]


def known_results(store: ResultsStore, ids: list[str], *, failed: Iterable[str] = ()) -> dict[str, Known]:
    """trial_id -> what the store says of it, for the ids with a row that counts: complete (with both
    objectives), stopped or complete without an FID (pruned) and, for the ids in `failed`, failed."""
    failed = set(failed)
    df = store.read()
    out: dict[str, Known] = {}
    for rec in df[df["trial_id"].isin(set(ids))].to_dict("records"):
        tid, status = rec["trial_id"], rec["status"]
        values = [rec.get(k) for k in SEARCH_OBJECTIVES]
        if status == COMPLETE and not any(map(is_null, values)):
            out[tid] = ("complete", [float(v) for v in values])
        elif status in (COMPLETE, STOPPED):
            out[tid] = ("pruned", None)
        elif status == FAILED and tid in failed:
            out[tid] = ("fail", None)
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

    def __init__(self, keys: dict[str, tuple], known: dict[str, Known], seed: int, unavailable=()):
        ot.logging.set_verbosity(ot.logging.WARNING)
        self._tree = dse_search.CandidateTree(keys)
        super().__init__(space=self._define, metric=list(SEARCH_OBJECTIVES),
                         mode=["min"] * len(SEARCH_OBJECTIVES), seed=seed)
        self._order = random.Random(seed).sample(sorted(keys), len(keys))  # the fallback order
        self._outcome: dict[str, Known] = {}
        self._running: set[str] = set(unavailable) - set(known)
        self._waiting: dict[str, list] = {}  # candidate -> Optuna trials sampled while it was running
        self._candidate: dict[str, str] = {}  # Tune trial id -> candidate
        for tid, outcome in known.items():
            path = self._tree.path(tid)
            self._ot_study.add_trial(ot.trial.create_trial(
                state=self.STATES[outcome[0]], values=outcome[1], params={n: v for n, (v, _) in path.items()},
                distributions={n: ot.distributions.CategoricalDistribution(o) for n, (_, o) in path.items()}))
            self._outcome[tid] = outcome

    def _define(self, ot_trial) -> None:  # the define-by-run space (OptunaSearch needs one to start)
        self._tree.walk(ot_trial.suggest_categorical)

    def _tell(self, ot_trial, tid: str) -> None:
        state, values = self._outcome[tid]
        self._ot_study.tell(ot_trial, values, state=self.STATES[state])

    def _tried(self, tid: str) -> bool:
        return tid in self._outcome or tid in self._running

    def suggest(self, trial_id: str):
        if all(self._tried(t) for t in self._order):
            return self.FINISHED
        for _ in range(self.MAX_DRAWS):
            ot_trial = self._ot_study.ask()
            tid = self._tree.walk(ot_trial.suggest_categorical)
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
        self._ot_trials[trial_id] = ot_trial
        self._candidate[trial_id] = tid
        self._running.add(tid)
        return {"trial_id": tid}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        tid = self._candidate.get(trial_id)
        if tid is None or tid in self._outcome:
            return
        result = result or {}
        values = [result.get(k) for k in SEARCH_OBJECTIVES]
        if result.get("phase") == PHASE_DONE and result.get("status") == COMPLETE and not any(map(is_null, values)):
            self._outcome[tid] = ("complete", [float(v) for v in values])
        elif result.get("phase") == PHASE_TRAIN and not error:  # stopped by halving
            self._outcome[tid] = ("pruned", None)
        else:
            self._outcome[tid] = ("fail", None)
        self._running.discard(tid)
        for ot_trial in [self._ot_trials[trial_id], *self._waiting.pop(tid, [])]:
            try:
                self._tell(ot_trial, tid)
            except Exception as exc:  # noqa: BLE001 - a sampler bookkeeping issue must not stop the study
                log.warning("optuna: could not tell trial %s: %s", tid, exc)
        self._completed_trials.add(trial_id)


def make_optuna_search(keys: dict[str, tuple], known: dict[str, Known], seed: int = 0,
                       unavailable=()) -> DistinctOptunaSearch:
    """A `DistinctOptunaSearch`: Ray Tune's `OptunaSearch` with seeded multi-objective TPE over
    (fid, params), sampling a candidate as a path of categorical choices (`search.CandidateTree` over
    `keys`, trial_id -> `search_key`), told the results in `known` and never suggesting those nor the
    `unavailable` ids (candidates of the study run elsewhere)."""
    return DistinctOptunaSearch(keys, known, seed, unavailable)
