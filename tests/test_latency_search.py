"""Latency steers the search (issue 13): successive halving ranks (params, latency, loss) at each rung,
falling back to (params, loss) where a trial has no usable latency; every report of a trial carries
its latency; the optuna sampler minimises (fid, params, latency_s) and receives the latency of every
trial it asks or is told, in a real Ray Tune run too."""

import dataclasses
import logging
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dse.search import (
    HALVING_FALLBACK, HALVING_OBJECTIVES, Partial, SuccessiveHalving, halving_keeps, halving_objectives, usable_latency,
)
from dse.store import ResultsStore
from dse.trial import base_row
from dse.types import StudentArch

from .test_executor import fast_spec, local_ray  # noqa: F401 - local_ray is a fixture used below
from .test_trial import tiny_spec


def measured(seconds: float, contended: bool = False) -> tuple:
    """A spec's `latency`: the columns of one measurement made before training."""
    return (("latency_s", seconds), ("latency_contended", contended), ("latency_s_std", 0.05 * seconds))


# --- what counts as a latency one can rank on ------------------------------------------------------------------


def test_only_a_finite_uncontended_latency_is_usable():
    assert usable_latency({"latency_s": 0.25}) == 0.25
    assert usable_latency({"latency_s": np.float64(0.5), "latency_contended": np.False_}) == 0.5
    assert usable_latency({"latency_s": 0.5, "latency_contended": None}) == 0.5  # not known to be contended
    assert usable_latency({"latency_s": 0.5, "latency_contended": pd.NA}) == 0.5
    assert usable_latency({"latency_s": 0.5, "latency_contended": float("nan")}) == 0.5
    assert usable_latency({"latency_s": 0.5, "latency_contended": True}) is None  # never ranked
    assert usable_latency({"latency_s": 0.5, "latency_contended": np.True_}) is None  # as pandas gives it back
    for missing in (None, float("nan"), float("inf"), pd.NA, True, "0.5"):
        assert usable_latency({"latency_s": missing}) is None, missing
    assert usable_latency({}) is None


# --- successive halving over (params, latency, loss) -------------------------------------------------------------

# A rung where the 2-way (params, loss) sort and the 3-way one disagree about "slow-small": it is smaller
# than "fast-big", slower than it and worse in loss; "tiny" beats it in size and loss, but is slower still.
RUNG = [
    ("tiny", 100, 0.020, 0.40),
    ("fast-big", 200, 0.002, 0.30),
    ("slow-small", 150, 0.010, 0.50),  # on the (params, latency, loss) front; dominated by tiny in (params, loss)
    ("bad-1", 250, 0.025, 0.80),
    ("bad-2", 300, 0.030, 0.90),
    ("bad-3", 300, 0.030, 0.95),
]


def test_a_trial_faster_than_those_that_beat_it_in_size_and_loss_is_on_the_front_and_goes_on():
    keeps = halving_keeps([Partial(t, p, loss, lat) for t, p, lat, loss in RUNG], eta=3)  # quota 2
    assert keeps["slow-small"] == (True, 0)  # nobody is smaller, faster and better at once
    assert {t for t, (go, _) in keeps.items() if go} == {"tiny", "fast-big", "slow-small"}
    assert keeps["bad-1"] == (False, 1) and not keeps["bad-2"][0] and not keeps["bad-3"][0]


def test_without_latency_the_same_rung_stops_it_as_the_two_way_sort_did():
    keeps = halving_keeps([Partial(t, p, loss) for t, p, _, loss in RUNG], eta=3)  # no latency: (params, loss)
    assert keeps["slow-small"] == (False, 1)  # dominated by tiny; the quota of 2 goes to fast-big and tiny
    assert {t for t, (go, _) in keeps.items() if go} == {"tiny", "fast-big"}


def test_a_trial_larger_slower_and_worse_than_another_is_stopped():
    keeps = halving_keeps([Partial("a", 100, 0.30, 0.001), Partial("b", 200, 0.50, 0.002)], eta=3)  # quota 1
    assert keeps == {"a": (True, 0), "b": (False, 1)}
    sh = SuccessiveHalving(rungs=3, eta=3)  # 900 steps: rungs at 100 and 300
    assert sh.observe("a", "g", params=100, step=100, total_steps=900, loss=0.30, latency=0.001) is None
    stop = sh.observe("b", "g", params=200, step=100, total_steps=900, loss=0.50, latency=0.002)
    assert stop is not None and stop.rank == 1 and stop.objectives == HALVING_OBJECTIVES
    assert stop.reason == ("stopped at step 100 by successive halving (rank 1 over (params, latency, loss) "
                           "at rung 1, step 100, among 2)")


def test_one_missing_latency_makes_the_whole_rung_rank_on_params_and_loss():
    # slow-small's latency is missing: it is not immune (it would be if its latency took part as None) ...
    records = [Partial(t, p, loss, None if t == "slow-small" else lat) for t, p, lat, loss in RUNG]
    assert halving_objectives(records) == HALVING_FALLBACK
    assert halving_keeps(records, eta=3)["slow-small"] == (False, 1)
    # ... and a trial without one is not stopped for a speed it was never measured at: m equals n in size
    # and loss, and n is measured (as if m's latency were the worst, n would dominate it)
    keeps = halving_keeps([Partial("n", 100, 0.3, 0.002), Partial("m", 100, 0.3, None), Partial("o", 200, 0.9, 0.5)],
                          eta=3)
    assert keeps["m"] == (True, 0) and keeps["n"] == (True, 0) and keeps["o"] == (False, 1)
    # a record whose loss is missing takes no part in the ranking, so its missing latency changes nothing
    records = [Partial("a", 100, 0.3, 0.001), Partial("b", 200, float("nan")), Partial("c", 100, 0.5, 0.002)]
    assert halving_objectives(records) == HALVING_OBJECTIVES and halving_keeps(records, 3)["b"] == (True, -1)


def test_the_stop_says_what_the_rung_ranked_on():
    sh = SuccessiveHalving(rungs=3, eta=3)
    assert sh.observe("a", "g", params=100, step=100, total_steps=900, loss=0.3, latency=0.001) is None
    stop = sh.observe("b", "g", params=200, step=100, total_steps=900, loss=0.5, latency=float("nan"))  # unusable
    assert stop.objectives == HALVING_FALLBACK and sh.recorded[("g", 0)][1].latency is None
    assert "(rank 1 over (params, loss) at rung 1" in stop.reason


def test_the_scheduler_ranks_the_latency_each_report_carries():
    from dse.executor.halving import HalvingScheduler
    from dse.executor.reports import PHASE_TRAIN

    specs = {t: tiny_spec("/p", arch=StudentArch(1, w, 2)) for t, w in (("tiny", 8), ("slow-small", 16))}

    def run(latency_of):
        stops = {}
        scheduler = HalvingScheduler(SuccessiveHalving(3, 3), {s.trial_id: s for s in specs.values()},
                                     lambda tid, stop, result: stops.update({tid: stop}))
        answers = []
        for name, params, loss in (("tiny", 100, 0.4), ("slow-small", 150, 0.5)):
            result = {"phase": PHASE_TRAIN, "step": 20, "loss": loss, "params": params, "total_steps": 150,
                      "latency_s": latency_of[name]}
            trial = SimpleNamespace(config={"trial_id": specs[name].trial_id})
            answers.append(scheduler.on_trial_result(None, trial, result))
        return answers, stops

    # measured: slow-small is faster than tiny, so neither dominates the other
    assert run({"tiny": 0.020, "slow-small": 0.010})[0] == ["CONTINUE", "CONTINUE"]
    # the same reports without latency (or a contended one, reported as None): tiny dominates it
    answers, stops = run({"tiny": 0.020, "slow-small": None})
    assert answers == ["CONTINUE", "STOP"]
    assert "over (params, loss)" in stops[specs["slow-small"].trial_id].reason


def test_every_report_carries_the_usable_latency_of_the_row_or_else_of_the_spec():
    from dse.executor.reports import reported_latency

    spec = dataclasses.replace(tiny_spec("/p"), latency=measured(0.3))
    assert reported_latency(spec) == 0.3
    assert reported_latency(spec, {"latency_s": 0.25, "latency_contended": False}) == 0.25  # the row's wins
    assert reported_latency(spec, {"latency_s": None}) == 0.3  # a row without one: the spec's
    assert reported_latency(dataclasses.replace(spec, latency=measured(0.3, contended=True))) is None
    assert reported_latency(tiny_spec("/p")) is None  # not measured


# --- the optuna sampler over (fid, params, latency_s) ------------------------------------------------------------

KEYS = {f"c{i}": ("get-l2", w, d, h) for i, (w, d, h) in enumerate(
    [(64, 10, 4), (64, 10, 8), (64, 11, 4), (96, 5, 4), (96, 5, 8), (128, 3, 4), (128, 3, 8)])}
LATENCY = {tid: 0.001 * (i + 1) for i, tid in enumerate(KEYS)}


def _drive(searcher, latency=LATENCY, n=7):
    """Suggest up to n candidates, ending each at once: complete, except the 2nd (stopped by halving) and
    the 3rd (failed, reporting no latency); each reports the latency its trial would (`latency`)."""
    from ray.tune.search import Searcher

    order = []
    for k in range(n):
        got = searcher.suggest(f"tune-{k}")
        if got == Searcher.FINISHED:
            break
        order.append(got["trial_id"])
        result = {"phase": "done", "status": "complete", "fid": 5.0 + k, "params": 100.0 + k,
                  "latency_s": latency[got["trial_id"]]}
        if k == 1:
            result = {"phase": "train", "step": 10, "loss": 0.5, "params": 101.0, "latency_s": latency[got["trial_id"]]}
        elif k == 2:
            result = {"phase": "done", "status": "failed", "fid": None, "params": 102.0, "latency_s": None}
        searcher.on_trial_complete(f"tune-{k}", result)
    return order


def test_the_sampler_minimises_three_objectives_and_every_trial_carries_its_latency():
    from dse.executor.optuna_search import SEARCH_OBJECTIVES, Known, make_optuna_search

    known = {"c0": Known("complete", [10.0, 100.0], 0.0042), "c1": ("pruned", None)}  # c0's row has its own latency
    searcher = make_optuna_search(KEYS, known, seed=7, unavailable={"c6"}, latency=LATENCY)
    assert searcher.objectives == SEARCH_OBJECTIVES == ("fid", "params", "latency_s")
    assert searcher.metric == list(SEARCH_OBJECTIVES) and len(searcher._ot_study.directions) == 3
    order = _drive(searcher)
    assert sorted(order) == ["c2", "c3", "c4", "c5"]
    trials = searcher._ot_study.trials
    assert {t.state.name for t in trials} == {"COMPLETE", "PRUNED", "FAIL", "RUNNING"}
    for t in trials:  # told from the store, sampled duplicates, complete, pruned and failed: each has it
        tid = searcher._tree.walk(lambda name, options, t=t: t.params[name])
        want = 0.0042 if tid == "c0" else LATENCY[tid]  # a row's own latency wins over the spec's
        assert t.user_attrs["latency_s"] == want, (tid, t.state)
        if t.state.name == "COMPLETE":
            assert len(t.values) == 3 and t.values[2] == want
        elif t.state.name == "RUNNING":  # sampled while c6 runs elsewhere: told when it ends (never, here)
            assert tid == "c6"
        else:
            assert t.values is None
    assert trials[0].values == [10.0, 100.0, 0.0042]  # the known result, told first


def test_one_candidate_without_a_usable_latency_turns_the_search_two_way_with_a_warning(caplog):
    from dse.executor.optuna_search import FALLBACK_OBJECTIVES, make_optuna_search

    latency = {**LATENCY, "c3": None, "c5": None}  # say, contended twice
    with caplog.at_level(logging.WARNING, logger="dse.executor.optuna_search"):
        searcher = make_optuna_search(KEYS, {"c0": ("complete", [10.0, 100.0])}, seed=7, latency=latency)
    assert searcher.objectives == FALLBACK_OBJECTIVES and len(searcher._ot_study.directions) == 2
    assert "2 of 7 candidates have no usable latency" in caplog.text and "(fid, params) only" in caplog.text
    _drive(searcher, latency)
    for t in searcher._ot_study.trials:  # still told, where known
        tid = searcher._tree.walk(lambda name, options, t=t: t.params[name])
        assert t.user_attrs["latency_s"] == latency[tid]
        assert t.values is None or len(t.values) == 2
    assert {t.user_attrs["latency_s"] for t in searcher._ot_study.trials} >= {None, LATENCY["c0"]}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dse.executor.optuna_search"):
        make_optuna_search(KEYS, {}, seed=7, latency=LATENCY)
    assert "no usable latency" not in caplog.text


def test_the_store_tells_the_latency_of_its_rows_or_of_their_specs(tmp_path):
    from dse.executor.optuna_search import Known, known_results

    specs = {n: dataclasses.replace(tiny_spec("/p", arch=StudentArch(1, 8 * (i + 1), 2)),
                                    latency=measured(0.1 * (i + 1)))
             for i, n in enumerate(["now", "before", "contended", "stopped", "failed"])}
    store = ResultsStore(tmp_path)
    done = {"status": "complete", "fid": 9.0, "params": 123}
    store.write({**base_row(specs["now"]), **done, "latency_s": 0.05})  # measured again since: the row's wins
    store.write({**base_row(dataclasses.replace(specs["before"], latency=())), **done})  # a row from before
    store.write({**base_row(dataclasses.replace(specs["contended"], latency=measured(9.0, contended=True))), **done})
    store.write({**base_row(specs["stopped"]), "status": "stopped"})
    store.write({**base_row(specs["failed"]), "status": "failed"})
    ids = {s.trial_id: n for n, s in specs.items()}
    known = known_results(store, list(ids), failed=[specs["failed"].trial_id],
                          specs={s.trial_id: s for s in specs.values()})
    got = {ids[tid]: k for tid, k in known.items()}
    assert got["now"] == Known("complete", [9.0, 123.0], 0.05)
    assert got["before"] == Known("complete", [9.0, 123.0], 0.2)  # its spec's
    assert got["contended"].latency == pytest.approx(0.3)  # the row's figure is never used; the spec's is
    assert got["stopped"] == Known("pruned", None, pytest.approx(0.4))
    assert got["failed"] == Known("fail", None, pytest.approx(0.5))
    without_specs = known_results(store, list(ids))
    assert without_specs[specs["before"].trial_id].latency is None and specs["failed"].trial_id not in without_specs


# --- a real Ray Tune run -----------------------------------------------------------------------------------------


def test_an_optuna_study_tells_the_sampler_the_latency_of_every_trial(local_ray, tiny_pairs, tmp_path, monkeypatch):
    from dse.executor import optuna_search, run_trials

    made = []

    def capture(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    real = optuna_search.make_optuna_search
    monkeypatch.setattr(optuna_search, "make_optuna_search", capture)
    ours = [dataclasses.replace(fast_spec(tiny_pairs, StudentArch(d, 16, 2)), latency=measured(0.01 * d))
            for d in (1, 2)]
    broken = dataclasses.replace(fast_spec(tmp_path / "missing-pairs", StudentArch(3, 16, 2)), latency=measured(0.03))
    told = dataclasses.replace(fast_spec(tiny_pairs, StudentArch(1, 16, 4)), latency=measured(0.015))
    store = ResultsStore(tmp_path / "trials")
    # a candidate done in an earlier study, its row from before latency came first: the sampler is told
    # its fid and params from the row and its latency from its spec
    store.write({**base_row(dataclasses.replace(told, latency=())), "status": "complete", "fid": 42.0, "params": 999})
    run_trials([*ours, broken], store.root, storage_dir=tmp_path / "ray", cpus_per_trial=2, search="optuna", seed=0,
               context=[told, *ours, broken])
    rows = store.read().set_index("trial_id")
    assert rows.loc[broken.trial_id, "status"] == "failed"
    assert set(rows.loc[[s.trial_id for s in ours], "status"]) == {"complete"}

    (searcher,) = made
    assert searcher.objectives == ("fid", "params", "latency_s")
    by_id = {s.trial_id: s for s in [*ours, broken, told]}
    states = {}
    for t in searcher._ot_study.trials:
        tid = searcher._tree.walk(lambda name, options, t=t: t.params[name])
        latency = by_id[tid].latency_row["latency_s"]
        assert t.user_attrs["latency_s"] == latency, (tid, t.state)
        states.setdefault(tid, set()).add(t.state.name)
        if t.state.name == "COMPLETE":
            row = rows.loc[tid]
            assert t.values == [row["fid"], row["params"], latency]
            assert math.isfinite(row["fid"])
            if tid != told.trial_id:  # a trial run here: its row carries the latency too
                assert row["latency_s"] == latency and not row["latency_contended"]
        else:
            assert t.state.name == "FAIL" and tid == broken.trial_id
    assert states[told.trial_id] == {"COMPLETE"} and states[broken.trial_id] == {"FAIL"}
    assert all(states[s.trial_id] == {"COMPLETE"} for s in ours)
    told_trial = searcher._ot_study.trials[0]
    assert told_trial.values == [42.0, 999.0, 0.015]
