"""Owns Pareto dominance: non-dominated sorting of trials over objectives that are all minimised.

A point a dominates b when a <= b in every objective and a < b in at least one. Rank 0 is the
Pareto front; rank k is the front of what is left after removing ranks 0..k-1 (NSGA-II's fast
non-dominated sort, Deb et al. 2002). Points with a missing objective (None or NaN) are left out
of the sort and get rank None. Imports neither torch nor ray; pandas only inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

from dse.errors import DseError
from dse.events import COMPLETE

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_OBJECTIVES: tuple[str, ...] = ("params", "fid", "latency_s")

Point = Sequence[float | None]


def _as_floats(point: Point) -> tuple[float, ...] | None:
    """The point as floats, or None when any objective is missing (None or NaN)."""
    if any(v is None for v in point):
        return None
    values = tuple(float(v) for v in point)
    return None if any(math.isnan(v) for v in values) else values


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """True when a <= b everywhere and a != b (so a < b somewhere): a is at least as good and better once."""
    return a != b and all(x <= y for x, y in zip(a, b))


def non_dominated_sort(points: Sequence[Point]) -> list[int | None]:
    """The Pareto rank of each point (0 = front), all objectives minimised; None for a point with a
    missing (None or NaN) objective, which takes no part in the sort.

    Equal points do not dominate each other, so duplicates share a rank. Raises ValueError when the
    points do not all have the same number of objectives. O(n^2 * m) for n points of m objectives.
    """
    if len({len(p) for p in points}) > 1:
        raise ValueError("non_dominated_sort: every point needs the same number of objectives")
    values = [_as_floats(p) for p in points]
    valid = [i for i, v in enumerate(values) if v is not None]
    dominated: dict[int, list[int]] = {i: [] for i in valid}  # i -> the points that i dominates
    dominators = dict.fromkeys(valid, 0)  # i -> how many points dominate i
    for i, j in combinations(valid, 2):
        if _dominates(values[i], values[j]):
            dominated[i].append(j)
            dominators[j] += 1
        elif _dominates(values[j], values[i]):
            dominated[j].append(i)
            dominators[i] += 1

    ranks: list[int | None] = [None] * len(points)
    front = [i for i in valid if dominators[i] == 0]
    rank = 0
    while front:
        next_front = []
        for i in front:
            ranks[i] = rank
            for j in dominated[i]:
                dominators[j] -= 1
                if dominators[j] == 0:
                    next_front.append(j)
        front, rank = next_front, rank + 1
    return ranks


def pareto_ranks(df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> pd.Series:
    """The Pareto rank of each row (nullable Int64, aligned with df.index) among the rows with
    status COMPLETE and every objective present; <NA> for every other row.
    """
    import pandas as pd

    missing = [c for c in ("status", *objectives) if c not in df.columns]
    if missing:
        raise DseError(
            f"the results have no column {', '.join(map(repr, missing))}: "
            f"choose objectives among {', '.join(map(str, df.columns))}"
        )
    complete = (df["status"] == COMPLETE).to_numpy(dtype=bool)
    values = df.loc[complete, list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    ranks = pd.array([pd.NA] * len(df), dtype="Int64")
    ranks[complete] = pd.array(non_dominated_sort(values.tolist()), dtype="Int64")
    return pd.Series(ranks, index=df.index, name="rank")


def pareto_front(df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> pd.Series:
    """True (aligned with df.index) for the complete rows with every objective present that no other
    such row dominates; False for every other row.
    """
    return pareto_ranks(df, objectives).eq(0).fillna(False).astype(bool).rename("on_front")
