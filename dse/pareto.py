"""Owns Pareto dominance: non-dominated sorting of trials over objectives that are all minimised.

A point a dominates b when a <= b in every objective and a < b in at least one. Rank 0 is the
Pareto front; rank k is the front of what is left after removing ranks 0..k-1 (NSGA-II's fast
non-dominated sort, Deb et al. 2002). Points with a missing objective (None or NaN) are left out
of the sort and get rank None.

The noise-aware front (`noise_aware_front`) works on points (`dse.stats.group_points`: one per
candidate, each objective a mean with an interval). A point a *clearly dominates* b when a dominates
b on the means and the evidence says a is at least as good in every objective at
`dse.stats.CONFIDENCE`: in an exact objective (no spread: params; one latency without its SD) a <= b,
in a noisy one (FID, a latency with its SD) a is clearly better (`dse.stats.compare` == "less"). So a
smaller model whose FID cannot be told apart from a larger one's does not make the larger one
dominated: they are tied (the larger might be better in FID; the data cannot say). Each point is then
DOMINATED (some point clearly dominates it), TIED (the data cannot
separate it from a point that beats it: it is dominated on the means but not clearly, or it is on the
plain front only by an advantage within the noise, `beats_within_noise`: another point is clearly
better somewhere and clearly worse nowhere) or FRONT (plain rank 0 and beaten by nothing the data can
tell). Requiring dominance on the means for DOMINATED keeps the two views consistent: a point of
plain rank 0 is never listed as dominated. Points of one architecture share their latency estimate
(`dse.stats.ARCHITECTURE_OBJECTIVES`): it does not depend on the trained weights, and copies of one
measurement count once. A latency carries its measurement noise (`latency_s_std`, dse.stats), so two
latencies within the noise of each other are tied, like two FIDs; a contended latency is missing (the
point is not ranked: front_status None).

Imports neither torch nor ray; pandas only inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

from dse.errors import DseError
from dse.events import COMPLETE
from dse.stats import (  # noqa: F401  (ARCHITECTURE_OBJECTIVES re-exported: dse.stats owns it)
    ARCHITECTURE_OBJECTIVES, CONFIDENCE, GREATER, LESS, TIED as TIED_VERDICT, Estimate, compare, estimate, estimate_of,
)

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_OBJECTIVES: tuple[str, ...] = ("params", "fid", "latency_s")
# A point's `front_status` in the noise-aware front (module docstring).
FRONT, TIED, DOMINATED = "front", "tied", "dominated"
FRONT_STATUSES = (FRONT, TIED, DOMINATED)

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


def clearly_dominates(a: Sequence[Estimate], b: Sequence[Estimate], confidence: float = CONFIDENCE) -> bool:
    """True when point a (one Estimate per objective) clearly dominates b: a dominates b on the means,
    and the evidence says a is at least as good in every objective at `confidence`: in an exact one
    (no spread, such as params) a <= b, in a noisy one a is clearly better (`compare` says "less")."""
    means_a, means_b = _as_floats([e.mean for e in a]), _as_floats([e.mean for e in b])
    if means_a is None or means_b is None or not _dominates(means_a, means_b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue  # one shared estimate (the latency of one architecture): equal, so no obstacle
        exact = x.known and y.known and x.sd == 0 and y.sd == 0
        if not (x.mean <= y.mean if exact else compare(x, y, confidence) == LESS):
            return False  # a noisy objective where a is not clearly better: the data cannot tell them apart
    return True


def _verdict(x: Estimate, y: Estimate, confidence: float) -> str:
    """"less", "greater" or "tied" for one objective of two points: a shared estimate is equal (tied),
    an exact one (no spread) compares by value, a noisy one by `compare`."""
    if x is y:
        return TIED_VERDICT
    if x.known and y.known and x.sd == 0 and y.sd == 0:
        return LESS if x.mean < y.mean else TIED_VERDICT if x.mean == y.mean else GREATER
    return compare(x, y, confidence)


def beats_within_noise(a: Sequence[Estimate], b: Sequence[Estimate], confidence: float = CONFIDENCE) -> bool:
    """True when a is clearly better than b in some objective and clearly worse in none: b's own
    advantages over a, if any, are within the noise, so b cannot be told apart from a point that beats it."""
    verdicts = [_verdict(x, y, confidence) for x, y in zip(a, b)]
    return LESS in verdicts and GREATER not in verdicts


# The columns that name one architecture (as far as points carry them): its points share ARCHITECTURE_OBJECTIVES.
ARCHITECTURE_KEYS = ("dataset", "depth", "width", "heads", "mlp_ratio", "patch_size", "params", "guidance")


def _share_architecture_objectives(df, records: list[dict], objectives: Sequence[str], ests: list[list[Estimate]]) -> None:
    """Give the points of one architecture (`ARCHITECTURE_KEYS` present in `df`) one estimate of each
    objective in `dse.stats.ARCHITECTURE_OBJECTIVES` that they have: their distinct estimates (copies of
    one measurement, as every point of an architecture carries when the study measured it once, count
    once: by mean, sd and n) pooled over their means with their SDs, or the one estimate itself when
    they all carry the same. Their latencies then compare as equal instead of as two noisy measurements
    of one number, which would otherwise rank an L1 and an LPIPS student of one architecture by timing
    noise, or keep a clearly worse one tied because its latency cannot be told apart from an equal one.
    A point without the objective (not measured, or contended) keeps it missing."""
    keys = [c for c in ARCHITECTURE_KEYS if c in df.columns]
    shared = [k for k, o in enumerate(objectives) if o in ARCHITECTURE_OBJECTIVES]
    if not keys or not shared:
        return
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(tuple(str(r.get(c)) for c in keys), []).append(i)
    for members in (m for m in groups.values() if len(m) > 1):
        for k in shared:
            known = [i for i in members if math.isfinite(ests[i][k].mean)]
            if len(known) < 2:
                continue
            distinct = list({(e.mean, e.sd, e.n): e for e in (ests[i][k] for i in known)}.values())
            pooled = distinct[0] if len(distinct) == 1 else \
                estimate([e.mean for e in distinct], [e.sd for e in distinct])
            for i in known:
                ests[i][k] = pooled


def noise_aware_front(points_df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES,
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """`points_df` (one row per point, as `dse.stats.group_points` gives it: per objective o the
    columns o, o_sd, o_low, o_high, and n, candidate_id) plus `pareto_rank` (plain rank on the means,
    nullable Int64; <NA> when an objective is missing), `front_status` (FRONT, TIED, DOMINATED; None
    when an objective is missing), `dominated_by` (the candidate_ids that clearly dominate it) and
    `tied_with` (those that dominate it on the means, but not clearly). See the module docstring."""
    import pandas as pd

    missing = [c for c in ("candidate_id", *objectives) if c not in points_df.columns]
    if missing:
        raise DseError(
            f"the points have no column {', '.join(map(repr, missing))}: "
            f"choose objectives among {', '.join(map(str, points_df.columns))}"
        )
    df = points_df.copy()
    records = df.to_dict("records")
    ests = [[estimate_of(r, o) for o in objectives] for r in records]
    _share_architecture_objectives(df, records, objectives, ests)
    means = [[e.mean for e in row] for row in ests]
    ranks = non_dominated_sort(means)
    ids = [str(r["candidate_id"]) for r in records]
    dominated_by: list[list[str]] = [[] for _ in records]
    tied_with: list[list[str]] = [[] for _ in records]
    valid = [i for i, rank in enumerate(ranks) if rank is not None]
    for i in valid:
        for j in valid:
            if i == j:
                continue
            if _dominates(tuple(means[i]), tuple(means[j])):
                (dominated_by if clearly_dominates(ests[i], ests[j], confidence) else tied_with)[j].append(ids[i])
            elif beats_within_noise(ests[i], ests[j], confidence):
                tied_with[j].append(ids[i])  # on the plain front only by an advantage within the noise
    status: list[str | None] = []
    for i, rank in enumerate(ranks):
        status.append(None if rank is None else DOMINATED if dominated_by[i] else TIED if tied_with[i] else FRONT)
    df["pareto_rank"] = pd.array(ranks, dtype="Int64")
    df["front_status"] = status
    df["dominated_by"] = dominated_by
    df["tied_with"] = tied_with
    return df
