"""Tests for dse.pareto: hand-worked fronts, ties, missing values, and a brute-force cross-check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dse.errors import DseError
from dse.pareto import non_dominated_sort, pareto_front, pareto_ranks

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
