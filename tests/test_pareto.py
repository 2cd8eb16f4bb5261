"""Tests for dse.pareto: hand-worked fronts, ties, missing values, a brute-force cross-check, and the
noise-aware front on hand-made points (a tie is a tie, a clear win is a win)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dse.errors import DseError
from dse.pareto import (
    DOMINATED, FRONT, TIED, clearly_dominates, noise_aware_front, non_dominated_sort, pareto_front, pareto_ranks,
)
from dse.stats import _quantile, estimate, exact

NAN = float("nan")


def test_2d_layers_worked_by_hand():
    points = [
        (1, 5),  # A: front (best first objective)
        (2, 3),  # B: front
        (3, 1),  # C: front (best second objective)
        (2, 4),  # D: dominated by B only -> rank 1
        (3, 3),  # F: dominated by B and C -> rank 1
        (4, 4),  # E: dominated by D and F (rank 1) -> rank 2
        (5, 5),  # G: dominated by E (rank 2) -> rank 3
    ]
    assert non_dominated_sort(points) == [0, 0, 0, 1, 1, 2, 3]


def test_3d_worked_by_hand():
    points = [
        (100, 10.0, 1.0),  # smallest: front
        (200, 8.0, 1.0),  # best quality: front
        (200, 9.0, 1.0),  # dominated by the one above (tie on two objectives) -> 1
        (300, 12.0, 0.5),  # fastest: front
        (300, 12.0, 0.6),  # dominated by the one above -> 1
        (150, 10.0, 1.0),  # dominated by the first -> 1
        (400, 13.0, 0.7),  # dominated by (300, 12, 0.6), itself rank 1 -> 2
    ]
    assert non_dominated_sort(points) == [0, 0, 1, 0, 1, 1, 2]


def test_a_tie_everywhere_but_one_objective_dominates():
    assert non_dominated_sort([(1, 3), (1, 2)]) == [1, 0]
    assert non_dominated_sort([(2, 2, 2), (2, 2, 1)]) == [1, 0]


def test_duplicates_share_their_rank():
    assert non_dominated_sort([(1, 2), (1, 2), (2, 3), (2, 3)]) == [0, 0, 1, 1]


def test_incomparable_points_are_all_on_the_front():
    assert non_dominated_sort([(1, 4), (2, 3), (3, 2), (4, 1)]) == [0, 0, 0, 0]


@pytest.mark.parametrize("missing", [None, NAN, np.nan])
def test_missing_objectives_are_excluded_and_dominate_nothing(missing):
    # (0, missing) would dominate everything if it took part in the sort.
    points = [(0, missing), (1, 2), (2, 1), (2, 2), (missing, missing)]
    assert non_dominated_sort(points) == [None, 0, 0, 1, None]


def test_empty_and_single():
    assert non_dominated_sort([]) == []
    assert non_dominated_sort([(3.0, 1.0, 2.0)]) == [0]


def test_points_of_different_lengths_are_rejected():
    with pytest.raises(ValueError, match="same number of objectives"):
        non_dominated_sort([(1, 2), (1, 2, 3)])


def _brute_force_ranks(points: np.ndarray) -> list[int]:
    """Peel fronts by the definition: the points of what remains that nothing in it dominates."""

    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(a <= b) and np.any(a < b))

    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_objectives", [2, 3])
def test_matches_brute_force_on_random_points_with_ties(seed, num_objectives):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 8, size=(300, num_objectives)).astype(float)  # small range: many ties
    ranks = non_dominated_sort(points.tolist())
    assert ranks == _brute_force_ranks(points)
    assert max(ranks) > 2  # the test exercises several layers


def test_random_points_with_missing_values_rank_the_rest_alone():
    rng = np.random.default_rng(7)
    points = rng.integers(0, 6, size=(200, 3)).astype(float)
    holes = rng.random(200) < 0.2
    points[holes, rng.integers(0, 3, size=holes.sum())] = np.nan
    ranks = non_dominated_sort(points.tolist())
    assert [r is None for r in ranks] == holes.tolist()
    kept = [r for r in ranks if r is not None]
    assert kept == _brute_force_ranks(points[~holes])


def _trials(rows: list[tuple], index=None) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["status", "params", "fid", "latency_s"], index=index)


def test_pareto_front_considers_only_complete_rows_with_every_objective():
    df = _trials(
        [
            ("complete", 100, 10.0, 1.0),  # front
            ("complete", 200, 8.0, 1.0),  # front
            ("complete", 200, 9.0, 1.0),  # dominated
            ("failed", 50, NAN, NAN),  # failed: never on the front
            ("complete", 10, NAN, 0.1),  # a missing objective: never on the front
            ("running", 10, 1.0, 0.1),  # would dominate everything, but is not complete
        ],
        index=["a", "b", "c", "d", "e", "f"],
    )
    front = pareto_front(df)
    assert front.dtype == bool
    assert front.index.tolist() == df.index.tolist()
    assert front[front].index.tolist() == ["a", "b"]


def test_pareto_ranks_gives_later_layers_and_na_for_excluded_rows():
    df = _trials(
        [("complete", 1, 1.0, 1.0), ("failed", 0, NAN, NAN), ("complete", 2, 2.0, 2.0), ("complete", 3, 3.0, 3.0)],
        index=[7, 7, 3, 1],  # duplicate and unordered labels must not matter
    )
    ranks = pareto_ranks(df)
    assert ranks.index.tolist() == [7, 7, 3, 1]
    assert [None if pd.isna(r) else int(r) for r in ranks] == [0, None, 1, 2]


def test_pareto_front_with_other_objectives():
    df = pd.DataFrame(
        {"status": ["complete"] * 3, "params": [1, 2, 3], "fid": [3.0, 2.0, 1.0], "latency_s": [9.0, 9.0, 9.0]}
    )
    assert pareto_front(df, objectives=("params", "fid")).tolist() == [True, True, True]
    assert pareto_front(df, objectives=("params", "latency_s")).tolist() == [True, False, False]


def test_pareto_front_of_an_empty_frame_is_empty():
    front = pareto_front(_trials([]))
    assert len(front) == 0 and front.dtype == bool


def test_pareto_front_names_a_missing_column():
    with pytest.raises(DseError, match="'fid'"):
        pareto_front(pd.DataFrame({"status": ["complete"], "params": [1], "latency_s": [1.0]}))


def test_none_in_an_object_column_counts_as_missing():
    fd = pd.Series([None, 2.0, 1.0], dtype=object)
    df = pd.DataFrame({"status": ["complete"] * 3, "params": [1, 2, 3], "fid": fd, "latency_s": [1.0] * 3})
    ranks = pareto_ranks(df)
    assert pd.isna(ranks.iloc[0]) and ranks.iloc[1:].tolist() == [0, 0]


# ------------------------------------------------------------------------------ noise-aware front


def _pt(cid, params, fid, fid_sd, latency, n=3, latency_sd=0.0):
    """A point as group_points gives it, its interval made by dse.stats.estimate from mean, sd and n."""
    half = _quantile(0.975, n - 1 if n > 1 else math.inf) * fid_sd / math.sqrt(n)
    lhalf = _quantile(0.975, n - 1 if n > 1 else math.inf) * latency_sd / math.sqrt(n)
    return {"candidate_id": cid, "n": n, "params": params, "params_sd": 0.0, "params_low": params,
            "params_high": params, "fid": fid, "fid_sd": fid_sd, "fid_low": fid - half, "fid_high": fid + half,
            "latency_s": latency, "latency_s_sd": latency_sd, "latency_s_low": latency - lhalf,
            "latency_s_high": latency + lhalf}


def _status(points):
    out = noise_aware_front(pd.DataFrame(points))
    return {r["candidate_id"]: r for r in out.to_dict("records")}


def test_a_point_dominated_on_the_means_but_within_noise_is_tied_with_its_dominator():
    # same size and speed; A's FID is better on the means, but by much less than the noise
    res = _status([_pt("A", 1000, 35.0, 2.0, 1.0), _pt("B", 1000, 36.0, 2.0, 1.0)])
    assert res["A"]["front_status"] == FRONT and res["A"]["pareto_rank"] == 0
    assert res["B"]["front_status"] == TIED and res["B"]["pareto_rank"] == 1
    assert res["B"]["tied_with"] == ["A"] and res["B"]["dominated_by"] == []
    assert res["A"]["tied_with"] == [] and res["A"]["dominated_by"] == []


def test_a_clear_win_is_a_win():
    res = _status([_pt("A", 1000, 20.0, 0.5, 1.0), _pt("B", 1000, 40.0, 0.5, 1.0)])
    assert res["B"]["front_status"] == DOMINATED
    assert res["B"]["dominated_by"] == ["A"] and res["B"]["tied_with"] == []


def test_a_plain_front_point_whose_only_advantage_is_noise_is_tied():
    # the demo's case: B is bigger, with a better FID mean but within noise; A is smaller and no worse
    # anywhere the data can tell: B is on the plain front only by noise -> tied with A (rank 0 kept)
    res = _status([_pt("A", 1000, 36.0, 2.0, 1.0), _pt("B", 2000, 35.0, 2.0, 1.0)])
    assert res["A"]["front_status"] == FRONT and res["A"]["tied_with"] == []
    assert res["B"]["front_status"] == TIED and res["B"]["tied_with"] == ["A"] and res["B"]["dominated_by"] == []
    assert res["B"]["pareto_rank"] == 0
    # a clearly better FID is a real advantage: B stays on the front
    res = _status([_pt("A", 1000, 36.0, 0.5, 1.0), _pt("B", 2000, 30.0, 0.5, 1.0)])
    assert res["A"]["front_status"] == res["B"]["front_status"] == FRONT


def test_an_exact_objective_decides_together_with_the_others():
    # A is smaller (params: exact) but its FID cannot be told apart from B's: B might be the better
    # model in FID, so the data do not say A dominates it -> tied, not dominated
    res = _status([_pt("A", 1000, 35.0, 2.0, 1.0), _pt("B", 1100, 35.5, 2.0, 1.0)])
    assert res["B"]["front_status"] == TIED and res["B"]["tied_with"] == ["A"] and res["B"]["dominated_by"] == []
    # smaller and clearly better in FID: a clear win
    res = _status([_pt("A", 1000, 30.0, 0.5, 1.0), _pt("B", 1100, 35.5, 0.5, 1.0)])
    assert res["B"]["front_status"] == DOMINATED and res["B"]["dominated_by"] == ["A"]
    # an exact objective where A is worse (slower) stops dominance however clear the FID
    res = _status([_pt("A", 1000, 30.0, 0.5, 2.0), _pt("B", 1100, 35.5, 0.5, 1.0)])
    assert res["B"]["front_status"] == FRONT
    # a smaller size does not make A dominate a point whose FID is better on the means (B keeps plain
    # rank 0), but that FID advantage is within noise: B is tied with A, not on the front by itself
    res = _status([_pt("A", 1000, 35.5, 2.0, 1.0), _pt("B", 1100, 35.0, 2.0, 1.0)])
    assert res["B"]["pareto_rank"] == 0 and res["B"]["front_status"] == TIED and res["B"]["dominated_by"] == []


def test_ties_and_clear_dominators_are_listed_apart():
    res = _status([
        _pt("A", 1000, 20.0, 0.5, 1.0),  # front
        _pt("C", 1000, 44.0, 4.0, 1.0),  # front? no: dominated by A clearly (20 vs 44, tight)
        _pt("B", 1000, 45.0, 4.0, 1.0),  # dominated on means by A (clearly) and by C (within noise)
    ])
    assert res["A"]["front_status"] == FRONT
    assert res["C"]["front_status"] == DOMINATED
    assert res["B"]["front_status"] == DOMINATED
    assert res["B"]["dominated_by"] == ["A"] and res["B"]["tied_with"] == ["C"]


def test_a_point_with_a_missing_objective_takes_no_part():
    res = _status([_pt("A", 1000, 35.0, 2.0, 1.0), _pt("B", 1000, NAN, NAN, 1.0)])
    assert pd.isna(res["B"]["front_status"]) and pd.isna(res["B"]["pareto_rank"])
    assert res["A"]["front_status"] == FRONT


def test_the_plain_rank_of_the_means_is_kept_beside_the_status():
    pts = [_pt("A", 1000, 20.0, 9.0, 1.0), _pt("B", 1000, 21.0, 9.0, 1.0), _pt("C", 1000, 22.0, 9.0, 1.0)]
    res = _status(pts)
    assert [res[c]["pareto_rank"] for c in "ABC"] == [0, 1, 2]
    assert [res[c]["front_status"] for c in "ABC"] == [FRONT, TIED, TIED]
    assert res["C"]["tied_with"] == ["A", "B"]


def test_noise_aware_front_needs_its_columns():
    with pytest.raises(DseError, match="no column 'fid'"):
        noise_aware_front(pd.DataFrame([{"candidate_id": "A", "params": 1, "latency_s": 1}]))


def test_clearly_dominates_on_estimates():
    a = [exact(1000), estimate([20.0, 20.5, 19.5]), exact(1.0)]
    b = [exact(1000), estimate([30.0, 30.5, 29.5]), exact(1.0)]
    tie = [exact(1000), estimate([21.0, 18.0, 22.0]), exact(1.0)]
    assert clearly_dominates(a, b) and not clearly_dominates(b, a)
    assert not clearly_dominates(a, a)  # equal everywhere: no dominance
    assert not clearly_dominates(a, tie) and not clearly_dominates(tie, a)


def _arch_pt(cid, depth, fid, fid_sd, latency, latency_sd, params=180_612):
    return {**_pt(cid, params, fid, fid_sd, latency, n=3, latency_sd=latency_sd),
            "depth": depth, "width": 64, "heads": 8, "mlp_ratio": 4.0, "guidance": 1.0}


def test_points_of_one_architecture_share_their_latency():
    # the principles run: an L1 and an LPIPS student of d2-w64-h8; their latencies differ by timing noise only
    l1 = _arch_pt("l1", 2, 104.7, 8.0, 0.1080, 0.004)
    lp = _arch_pt("lpips", 2, 634.3, 90.0, 0.1117, 0.004)
    res = _status([l1, lp])
    assert res["lpips"]["front_status"] == DOMINATED and res["lpips"]["dominated_by"] == ["l1"]
    assert res["l1"]["front_status"] == FRONT
    # the same latencies on two different architectures are two quantities: within noise, so no verdict
    other = {**lp, "depth": 3}
    res = _status([l1, other])
    assert res["lpips"]["front_status"] == TIED and res["lpips"]["tied_with"] == ["l1"]
    # and the plain rank of the means no longer splits one architecture by timing noise
    faster_by_noise = _arch_pt("lpips", 2, 634.3, 90.0, 0.1060, 0.004)
    res = _status([l1, faster_by_noise])
    assert res["lpips"]["pareto_rank"] == 1 and res["lpips"]["front_status"] == DOMINATED


# ------------------------------------------------------------------- latency: measured once per architecture, noisy
def _row(tid, cid, depth, fid, latency, latency_std, key, **kw):
    """A complete store row; its FID known to +-0.5 (bootstrap SD), its latency one measurement (`key`)."""
    return {"trial_id": tid, "candidate_id": cid, "status": "complete", "seed": 0, "depth": depth, "width": 64,
            "heads": 4, "mlp_ratio": 4.0, "patch_size": 2, "guidance": 1.0, "dataset": "digits", "params": 100_000,
            "setup": "get", "loss": cid, "fid": fid, "fid_std": 0.5, "latency_s": latency,
            "latency_s_std": latency_std, "latency_key": key, "latency_measured_at": "2025-01-01T00:00:00", **kw}


def _front(rows):
    from dse.stats import group_points

    out = noise_aware_front(group_points(pd.DataFrame(rows)))
    return {r["candidate_id"]: r for r in out.to_dict("records")}


def test_a_latency_advantage_within_the_noise_does_not_dominate():
    # A: clearly better FID (20 vs 30, +-0.5), same size, faster by 4 ms of two 100 ms measurements known to +-4 ms
    rows = [_row("a", "A", 2, 20.0, 0.100, 0.004, "kA"), _row("b", "B", 3, 30.0, 0.104, 0.004, "kB")]
    res = _front(rows)
    assert res["A"]["front_status"] == FRONT
    # B may well be the faster: the data cannot say A dominates it -> tied, not dominated
    assert res["B"]["front_status"] == TIED and res["B"]["tied_with"] == ["A"] and res["B"]["dominated_by"] == []
    # a strict comparison of the values (the same rows without their latency SD) calls B dominated
    strict = _front([{**r, "latency_s_std": None} for r in rows])
    assert strict["B"]["front_status"] == DOMINATED and strict["B"]["dominated_by"] == ["A"]
    # a latency advantage beyond the noise is a real one: dominated again
    far = _front([rows[0], _row("b", "B", 3, 30.0, 0.130, 0.004, "kB")])
    assert far["B"]["front_status"] == DOMINATED


def test_points_sharing_one_measurement_share_it_without_pooling_copies():
    # three trainings of architecture d2 carry one measurement 0.100 +- 0.004; d3 took 0.110 +- 0.004.
    # Counted once, 10 ms is within the noise of two single measurements (tied); pooled as three
    # observations (sd^2 / 3), d2's latency would look clearly faster and dominate d3's point.
    rows = [_row(f"x{i}", f"X{i}", 2, fid, 0.100, 0.004, "k2") for i, fid in enumerate((20.0, 21.0, 22.0))]
    rows.append(_row("y", "Y", 3, 30.0, 0.110, 0.004, "k3"))
    res = _front(rows)
    assert res["Y"]["front_status"] == TIED and res["Y"]["dominated_by"] == []
    assert res["X0"]["front_status"] == FRONT
    # one architecture's points never rank each other by latency: X1, X2 are clearly worse in FID only
    assert res["X2"]["front_status"] == DOMINATED and "X0" in res["X2"]["dominated_by"]


def test_distinct_estimates_of_one_architecture_still_pool():
    # hand-made points of one architecture with two different measurements: their estimate is pooled
    l1 = _arch_pt("l1", 2, 20.0, 0.5, 0.100, 0.004)
    lp = _arch_pt("lp", 2, 30.0, 0.5, 0.104, 0.004)
    res = _status([l1, lp])
    assert res["lp"]["front_status"] == DOMINATED and res["l1"]["front_status"] == FRONT  # latency shared: equal


def test_a_point_with_a_contended_latency_is_not_ranked():
    rows = [_row("a", "A", 2, 20.0, 0.100, 0.004, "kA"),
            _row("b", "B", 3, 10.0, 0.050, 0.004, "kB", latency_contended=True)]  # would beat A everywhere
    res = _front(rows)
    assert pd.isna(res["B"]["front_status"]) and pd.isna(res["B"]["pareto_rank"]) and res["B"]["latency_contended"]
    assert res["A"]["front_status"] == FRONT and res["A"]["tied_with"] == [] and res["A"]["dominated_by"] == []
    # quiet points of the same architecture do not lend their latency to the contended one
    rows += [_row("c", "C", 3, 11.0, 0.060, 0.004, "kC"), _row("d", "D", 3, 11.5, 0.060, 0.004, "kC")]
    res = _front(rows)
    assert pd.isna(res["B"]["front_status"]) and res["C"]["front_status"] == FRONT
