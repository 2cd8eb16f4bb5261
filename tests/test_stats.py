"""Tests for dse.stats: intervals on synthetic rows of known spread, comparisons, and grouping rows into points."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dse.stats import (
    CONFIDENCE, GREATER, LESS, TIED, Estimate, compare, estimate, estimate_of, exact, group_points,
)

NAN = float("nan")


def test_the_sd_of_one_two_three_is_one_and_the_interval_is_students_t():
    e = estimate([1, 2, 3])
    assert (e.mean, e.sd, e.n) == (2.0, 1.0, 3)
    # t(0.975, 2 df) = 4.302653 (tables); half-width = t * sd / sqrt(3)
    assert e.high - e.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert e.mean - e.low == pytest.approx(e.high - e.mean)
    assert e.known


def test_the_t_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    groups = rng.normal(10.0, 2.0, size=(2000, 3))
    covered = 0
    for g in groups:
        e = estimate(g.tolist())
        covered += e.low <= 10.0 <= e.high
    assert 0.93 <= covered / len(groups) <= 0.97


def test_a_z_interval_would_cover_too_rarely_with_three_rows():
    # The check above can fail: a normal (z) quantile instead of t's covers ~87.6% of groups of 3.
    rng = np.random.default_rng(1)
    groups = rng.normal(0.0, 1.0, size=(2000, 3))
    z_covered = sum(abs(g.mean()) <= 1.959964 * g.std(ddof=1) / math.sqrt(3) for g in groups) / 2000
    t_covered = sum(estimate(g.tolist()).low <= 0 <= estimate(g.tolist()).high for g in groups) / 2000
    assert z_covered < 0.91 < t_covered


def test_one_row_with_its_own_sd_uses_the_normal_quantile():
    e = estimate([36.1], sds=[1.8])
    assert e.n == 1 and e.sd == 1.8 and e.known
    assert e.high - 36.1 == pytest.approx(1.959964 * 1.8, rel=1e-5)
    assert e.half_width == pytest.approx(1.959964 * 1.8, rel=1e-5)


def test_one_row_without_an_sd_has_an_unknown_spread():
    e = estimate([36.1])
    assert not e.known and e.n == 1 and math.isnan(e.sd)
    assert e.low == e.high == 36.1
    assert math.isnan(e.half_width)


def test_the_rows_own_sds_are_a_floor_under_the_spread():
    # three identical values: no spread between rows, but each value is known only to +-2
    e = estimate([10, 10, 10], sds=[2, 2, 2])
    assert e.sd == pytest.approx(2.0)
    # rows that disagree more than their own SDs say: the sample SD wins
    assert estimate([1, 2, 3], sds=[0.1, 0.1, 0.1]).sd == pytest.approx(1.0)
    # a missing SD (an old row) is left out of the mean of the squared SDs
    assert estimate([10, 10], sds=[None, 3.0]).sd == pytest.approx(3.0)


def test_missing_values_are_left_out_and_no_values_are_unknown():
    e = estimate([1, None, 3, NAN, 2])
    assert (e.n, e.mean, e.sd) == (3, 2.0, 1.0)
    assert not estimate([]).known and estimate([None]).n == 0


def test_a_higher_confidence_gives_a_wider_interval():
    assert estimate([1, 2, 3], confidence=0.99).low < estimate([1, 2, 3], confidence=0.9).low
    with pytest.raises(ValueError):
        estimate([1, 2], confidence=1.0)


def test_compare_clearly_separated_estimates():
    a, b = estimate([10.0, 10.2, 9.8]), estimate([20.0, 20.2, 19.8])
    assert compare(a, b) == LESS
    assert compare(b, a) == GREATER


def test_compare_overlapping_estimates_is_a_tie():
    a, b = estimate([34.4, 34.8, 33.9]), estimate([36.1, 33.6, 35.3])  # the d10-w32-h4 vs d4-w48-h6
    assert compare(a, b) == TIED == compare(b, a)
    # one FID each, bootstrap SD 1.8 and 2.2: 36.1 vs 43.4 is clear, 36.1 vs 38.0 is not
    assert compare(estimate([36.1], [1.8]), estimate([43.4], [2.2])) == LESS
    assert compare(estimate([36.1], [1.8]), estimate([38.0], [2.2])) == TIED


def test_compare_with_an_unknown_spread_is_always_a_tie():
    assert compare(estimate([1.0]), estimate([100.0])) == TIED
    assert compare(estimate([1.0]), estimate([100.0, 100.1])) == TIED


def test_exact_values_compare_by_their_means():
    assert compare(exact(100), exact(101)) == LESS
    assert compare(exact(100), exact(100)) == TIED
    assert compare(exact(200), estimate([100.0, 101.0, 99.0])) == GREATER


def test_welch_and_not_a_pooled_interval_decides():
    # a: tight, n=10; b: very noisy, n=2. The pooled SD would call the difference clear; Welch (df ~1) does not.
    a = Estimate(0.0, 0.1, 10, NAN, NAN)
    b = Estimate(3.0, 2.0, 2, NAN, NAN)
    assert compare(a, b) == TIED
    # with more rows for b the same difference becomes clear
    assert compare(a, Estimate(3.0, 2.0, 30, NAN, NAN)) == LESS


def _row(tid, cid, seed, fid, **kw):
    row = {"trial_id": tid, "candidate_id": cid, "status": "complete", "seed": seed, "depth": 4, "width": 48,
           "heads": 6, "mlp_ratio": 4.0, "setup": "get", "loss": "l2", "variant": "", "steps": 600,
           "guidance": 1.5, "params": 420_000, "proposed": True, "dataset": "digits", "fid": fid,
           "fid_std": None, "latency_s": 0.5, "label_agreement": 0.9, "still_improving": False,
           "final_loss": 0.1, "samples_png": f"{tid}.png"}
    row.update(kw)
    return row


def test_group_points_one_row_per_candidate_with_the_intervals_of_its_seeds():
    rows = [
        _row("a1", "A", 1, 2.0, latency_s=0.4, still_improving=True, label_agreement=0.8),
        _row("a0", "A", 0, 1.0, latency_s=0.6, label_agreement=1.0),
        _row("a2", "A", 2, 3.0, latency_s=0.5),
        _row("b0", "B", 0, 40.0, fid_std=2.0, params=300_000, depth=2, latency_s=0.1),
        _row("b1", "B", 1, 99.0, status="failed"),  # not complete: not part of the point
    ]
    pts = group_points(pd.DataFrame(rows))
    assert list(pts["candidate_id"]) == ["B", "A"]  # by params
    a = pts.set_index("candidate_id").loc["A"]
    assert a["n"] == 3 and a["trial_ids"] == ["a0", "a1", "a2"] and a["seeds"] == [0, 1, 2]
    assert (a["fid"], a["fid_sd"]) == (2.0, 1.0)
    assert a["fid_high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert a["latency_s"] == pytest.approx(0.5) and a["latency_s_sd"] == pytest.approx(0.1)
    assert a["params"] == 420_000 and a["params_sd"] == 0 and a["params_low"] == a["params_high"] == 420_000
    assert a["label_agreement"] == pytest.approx(0.9)
    assert a["still_improving"] == pytest.approx(1 / 3)
    assert a["samples_png"] == "a0.png"  # the first seed's
    b = pts.set_index("candidate_id").loc["B"]
    assert b["n"] == 1 and b["trial_ids"] == ["b0"]
    assert b["fid_sd"] == 2.0 and b["fid_low"] == pytest.approx(40 - 1.959964 * 2, rel=1e-5)
    assert b["latency_s_sd"] == 0 and b["latency_s_low"] == b["latency_s_high"] == 0.1  # one row: exact
    assert estimate_of(b, "fid").known and estimate_of(b, "params").sd == 0


def test_rows_without_a_candidate_id_group_by_what_they_trained():
    rows = [
        _row("x0", None, 0, 10.0), _row("x1", None, 1, 12.0),  # same training, two seeds
        _row("y0", None, 0, 20.0, loss="l1"),  # another loss: another point
        _row("z0", None, 0, 30.0, steps=2000),  # more steps: another point
    ]
    pts = group_points(pd.DataFrame(rows))
    assert sorted(pts["n"]) == [1, 1, 2]
    assert len(set(pts["candidate_id"])) == 3
    two = pts[pts["n"] == 2].iloc[0]
    assert two["trial_ids"] == ["x0", "x1"] and two["fid"] == 11.0


def test_group_points_of_nothing_complete_is_empty_with_the_columns():
    empty = group_points(pd.DataFrame([_row("f", "F", 0, 1.0, status="failed")]))
    assert len(empty) == 0 and {"candidate_id", "fid_low", "latency_s_high", "n"} <= set(empty.columns)
    assert len(group_points(pd.DataFrame())) == 0


def test_confidence_is_95_percent():
    assert CONFIDENCE == 0.95


# ------------------------------------------------------------------------ latency: one measurement per architecture
Z = 1.959964  # the normal 97.5% quantile


def _timed(tid, cid, seed, latency, std, key="k1", at="2025-01-01T00:00:00", **kw):
    """A row whose latency is one measurement (`latency_key`, `latency_measured_at`) with its SD."""
    return _row(tid, cid, seed, 30.0, latency_s=latency, latency_s_std=std, latency_key=key,
                latency_measured_at=at, **kw)


def _latency(points, cid):
    p = points.set_index("candidate_id").loc[cid]
    return p["latency_s"], p["latency_s_sd"], p["latency_s_low"], p["latency_s_high"], p["latency_s_n"]


def test_three_seeds_sharing_one_latency_measurement_are_one_observation():
    one = group_points(pd.DataFrame([_timed("a0", "A", 0, 0.5, 0.02)]))
    three = group_points(pd.DataFrame([_timed(f"a{s}", "A", s, 0.5, 0.02) for s in range(3)]))
    assert three.set_index("candidate_id").loc["A", "n"] == 3  # three rows ...
    assert _latency(three, "A") == _latency(one, "A")  # ... but the interval of one measurement
    mean, sd, low, high, n = _latency(three, "A")
    assert (mean, sd, n) == (0.5, 0.02, 1) and high - mean == pytest.approx(Z * 0.02, rel=1e-5)
    # rows without the measurement's id (written by hand, or before the cache) are copies by value and SD
    bare = group_points(pd.DataFrame([_timed(f"a{s}", "A", s, 0.5, 0.02, key=None, at=None) for s in range(3)]))
    assert _latency(bare, "A") == _latency(one, "A")


def test_distinct_latency_measurements_of_a_point_pool():
    rows = [_timed("a0", "A", 0, 0.50, 0.01, at="t0"), _timed("a1", "A", 1, 0.50, 0.01, at="t0"),
            _timed("a2", "A", 2, 0.56, 0.01, at="t1")]  # re-measured for the third seed
    mean, sd, low, high, n = _latency(group_points(pd.DataFrame(rows)), "A")
    assert n == 2 and mean == pytest.approx(0.53)
    assert sd == pytest.approx(estimate([0.50, 0.56]).sd)  # their spread, above the rows' own 0.01
    assert high - mean == pytest.approx(12.7062 * sd / math.sqrt(2), rel=1e-4)  # t(0.975, 1 df)


def test_two_latencies_within_the_noise_are_tied_and_farther_apart_are_not():
    a, b = estimate([0.100], [0.004]), estimate([0.105], [0.004])
    assert compare(a, b) == TIED == compare(b, a)  # 5 ms apart, each known to +-4 ms: cannot tell
    assert compare(a, estimate([0.120], [0.004])) == LESS
    # the same values without an SD (old rows) would be exact: a strict comparison
    rows = pd.DataFrame([_timed("a0", "A", 0, 0.100, None), _timed("b0", "B", 0, 0.105, None, key="k2")])
    pts = group_points(rows).set_index("candidate_id")
    assert compare(estimate_of(pts.loc["A"], "latency_s"), estimate_of(pts.loc["B"], "latency_s")) == LESS


def test_estimate_of_reads_the_objectives_own_count():
    pts = group_points(pd.DataFrame([_timed(f"a{s}", "A", s, 0.5, 0.02) for s in range(3)]))
    est = estimate_of(pts.iloc[0], "latency_s")
    assert (est.n, est.sd, est.df) == (1, 0.02, math.inf)  # not n=3 from the point's rows
    assert compare(est, estimate([0.55], [0.02])) == TIED
    # had the three copies counted as three observations, Welch would take sd^2 / 3 and call it clear
    assert compare(Estimate(0.5, 0.02, 3, NAN, NAN), estimate([0.55], [0.02])) == LESS


def test_a_contended_latency_is_missing_and_marked():
    rows = [_timed("a0", "A", 0, 9.0, 0.5, latency_contended=True),
            _timed("b0", "B", 0, 0.5, 0.01, key="k2", latency_contended=False)]
    pts = group_points(pd.DataFrame(rows)).set_index("candidate_id")
    assert math.isnan(pts.loc["A", "latency_s"]) and pts.loc["A", "latency_s_n"] == 0
    assert bool(pts.loc["A", "latency_contended"]) is True and bool(pts.loc["B", "latency_contended"]) is False
    assert not estimate_of(pts.loc["A"], "latency_s").known
    # a point whose latency was re-measured quietly for another seed keeps the quiet measurement
    rows = [_timed("a0", "A", 0, 9.0, 0.5, latency_contended=True), _timed("a1", "A", 1, 0.5, 0.01, key="k3")]
    pt = group_points(pd.DataFrame(rows)).iloc[0]
    assert (pt["latency_s"], pt["latency_s_n"], bool(pt["latency_contended"])) == (0.5, 1, False)


def test_latency_p90_cached_and_the_per_image_sd():
    rows = [_timed(f"a{s}", "A", s, 0.5, 0.02, latency_p90_s=0.6, latency_cached=s > 0,
                   latency_per_image_ms=2.0, latency_num_images=250) for s in range(3)]
    pts = group_points(pd.DataFrame(rows), objectives=("params", "fid", "latency_per_image_ms"))
    p = pts.iloc[0]
    assert p["latency_p90_s"] == pytest.approx(0.6)
    assert p["latency_cached"] is not None and not p["latency_cached"]  # the first seed's was measured, not cached
    # latency_per_image_ms = 1000 * latency_s / 250: its SD scales the same way (0.02 s -> 0.08 ms)
    assert (p["latency_per_image_ms"], p["latency_per_image_ms_n"]) == (2.0, 1)
    assert p["latency_per_image_ms_sd"] == pytest.approx(0.08)
    rows = [{**r, "latency_cached": True} for r in rows]
    assert bool(group_points(pd.DataFrame(rows)).iloc[0]["latency_cached"]) is True
    assert group_points(pd.DataFrame([_row("x", "X", 0, 1.0)])).iloc[0]["latency_cached"] is None  # unknown


def test_rows_written_before_latency_s_std_keep_an_exact_latency():
    rows = [_timed("a0", "A", 0, 0.5, None, key=None, at=None)]
    p = group_points(pd.DataFrame(rows)).iloc[0]  # the column is there, empty: as before, exact with one row
    assert (p["latency_s_sd"], p["latency_s_low"], p["latency_s_high"]) == (0.0, 0.5, 0.5)
