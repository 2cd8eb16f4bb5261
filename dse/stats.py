"""Owns how sure a figure is: the estimate of a mean with its confidence interval, the comparison of two
estimates, and the grouping of a study's rows (one per training seed) into points (one per candidate).

- `estimate(values, sds)`: the mean of a point's rows, the standard deviation of one observation and
  the CONFIDENCE interval of the mean. With n >= 2 rows it is Student's t interval; the spread is the
  larger of the rows' sample variance and their own mean squared `sds` (e.g. each FID's bootstrap SD,
  `fid_std`), so a point never looks more precise than one of its measurements. With one row and an
  SD, mean +- z * sd (the normal quantile); with one row and none, the spread is unknown (`known` False)
  and the interval is the mean alone.
- `compare(a, b)`: Welch's interval of a.mean - b.mean (Welch-Satterthwaite degrees of freedom):
  "less" when it lies entirely below 0, "greater" when entirely above, else "tied". An estimate with
  an unknown spread is tied with anything (nothing is known about how far it may be off).
- `group_points(df)`: the COMPLETE rows grouped into points, by `candidate_id` (rows written before it
  existed group by what the trial trained: architecture, setup, loss, variant, steps, guidance, size).

Which objectives carry which noise (`objective_estimate`): `params` is exact (sd 0); an objective with
a per-row SD column `<name>_std` (fid: `fid_std`) uses it as `sds`; any other (latency_s) uses the
spread across the point's rows when it has n >= 2 of them, and is taken as exact with one row (measurement
noise only; the latency measurement repeats itself inside one row).

Imports neither torch nor ray; pandas and scipy (for the t and normal quantiles) only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from dse.events import COMPLETE

if TYPE_CHECKING:
    import pandas as pd

CONFIDENCE = 0.95  # the confidence of every interval dse reports, and of "clearly" better or worse

LESS, GREATER, TIED = "less", "greater", "tied"  # what `compare` answers
EXACT_OBJECTIVES = ("params",)  # counted, not measured: sd 0
# Rows without a candidate_id (written before it existed) form one point per value of these (params and
# patch_size too: rows of different sizes are never one candidate).
GROUP_KEYS = ("depth", "width", "heads", "mlp_ratio", "setup", "loss", "variant", "steps", "guidance", "params",
              "patch_size")
# Columns of a point taken from its first row (the lowest training seed).
FIRST_ROW_COLUMNS = ("depth", "width", "heads", "setup", "loss", "variant", "steps", "guidance", "params",
                     "proposed", "dataset", "samples_png")


@dataclass(frozen=True)
class Estimate:
    """A mean over n rows: `sd` is the standard deviation of ONE observation (NaN when unknown), and
    [low, high] the CONFIDENCE interval of the mean (low = high = mean when the spread is unknown)."""

    mean: float
    sd: float
    n: int
    low: float
    high: float

    @property
    def known(self) -> bool:
        """False when nothing is known about the spread (one row without an SD, or no rows)."""
        return self.n > 0 and math.isfinite(self.sd) and math.isfinite(self.mean)

    @property
    def half_width(self) -> float:
        """Half the interval's width; NaN when the spread is unknown."""
        return (self.high - self.low) / 2 if self.known else math.nan

    @property
    def df(self) -> float:
        """Degrees of freedom of the spread: n - 1 from n >= 2 rows, infinite from one row's own SD."""
        return float(self.n - 1) if self.n >= 2 else math.inf


UNKNOWN = Estimate(math.nan, math.nan, 0, math.nan, math.nan)


@lru_cache(maxsize=1024)
def _quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (the normal one when df is infinite)."""
    from scipy import stats

    return float(stats.norm.ppf(p) if math.isinf(df) else stats.t.ppf(p, df))


def _floats(values: Iterable[Any] | None) -> list[float]:
    out = []
    for v in values if values is not None else ():
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)  # None, pandas' NA
    return out


def _two_sided(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence!r}")
    return (1 + confidence) / 2


def estimate(values: Iterable[Any], sds: Iterable[Any] | None = None, confidence: float = CONFIDENCE) -> Estimate:
    """The mean of `values` with the standard deviation of one observation and the `confidence`
    interval of the mean (see the module docstring). Missing values (None, NaN) are left out, with
    their SD; a missing SD among the others is left out of the mean of squared SDs. No values: UNKNOWN."""
    p = _two_sided(confidence)
    xs = _floats(values)
    ss = _floats(sds) if sds is not None else [math.nan] * len(xs)
    if len(ss) != len(xs):
        raise ValueError("estimate: values and sds need the same length")
    pairs = [(x, s) for x, s in zip(xs, ss) if math.isfinite(x)]
    n = len(pairs)
    if n == 0:
        return UNKNOWN
    mean = sum(x for x, _ in pairs) / n
    own = [s * s for _, s in pairs if math.isfinite(s) and s >= 0]
    own_var = sum(own) / len(own) if own else None
    if n >= 2:
        sample_var = sum((x - mean) ** 2 for x, _ in pairs) / (n - 1)
        sd = math.sqrt(max(sample_var, own_var or 0.0))
        half = _quantile(p, n - 1) * sd / math.sqrt(n)
    elif own_var is not None:
        sd = math.sqrt(own_var)
        half = _quantile(p, math.inf) * sd
    else:
        return Estimate(mean, math.nan, 1, mean, mean)
    return Estimate(mean, sd, n, mean - half, mean + half)


def exact(value: Any, n: int = 1) -> Estimate:
    """A quantity that is counted, not measured (params): sd 0, the interval the value itself."""
    v = _floats([value])[0]
    if not math.isfinite(v):
        return UNKNOWN
    return Estimate(v, 0.0, max(1, int(n)), v, v)


def compare(a: Estimate, b: Estimate, confidence: float = CONFIDENCE) -> str:
    """LESS when Welch's `confidence` interval of a.mean - b.mean lies entirely below 0, GREATER when
    entirely above, else TIED (also whenever either spread is unknown). Two exact estimates compare by
    their means."""
    p = _two_sided(confidence)
    if not (a.known and b.known):
        return TIED
    diff = a.mean - b.mean
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    var = va + vb
    if var == 0:
        return LESS if diff < 0 else GREATER if diff > 0 else TIED
    # Welch-Satterthwaite; a term of infinite degrees of freedom (one row's own SD) adds nothing below
    denom = sum(v * v / df for v, df in ((va, a.df), (vb, b.df)) if v > 0 and math.isfinite(df))
    df = var * var / denom if denom > 0 else math.inf
    half = _quantile(p, df) * math.sqrt(var)
    if diff + half < 0:
        return LESS
    if diff - half > 0:
        return GREATER
    return TIED


def objective_estimate(name: str, values: Sequence[Any], sds: Sequence[Any] | None = None,
                       confidence: float = CONFIDENCE) -> Estimate:
    """The estimate of objective `name` over one point's rows, with the noise that objective carries
    (module docstring): exact for EXACT_OBJECTIVES, the rows' own `sds` when given, else the spread
    across rows (n >= 2) or exact (one row)."""
    xs = [x for x in _floats(values) if math.isfinite(x)]
    if name in EXACT_OBJECTIVES:
        return exact(sum(xs) / len(xs), len(xs)) if xs else UNKNOWN
    if sds is not None:
        return estimate(values, sds, confidence)
    if len(xs) == 1:
        return exact(xs[0])
    return estimate(xs, None, confidence)


def estimate_of(point: dict | Any, name: str) -> Estimate:
    """The Estimate of objective `name` that `group_points` stored in a point's row (a dict or a
    pandas row): `name`, `name_sd`, `n`, `name_low`, `name_high`."""
    get = point.get if hasattr(point, "get") else lambda k, d=None: getattr(point, k, d)
    mean = _floats([get(name)])[0]
    if not math.isfinite(mean):
        return UNKNOWN
    n = _floats([get("n", 1)])[0]
    n = int(n) if math.isfinite(n) else 1
    sd = _floats([get(f"{name}_sd")])[0]
    low, high = _floats([get(f"{name}_low", mean)])[0], _floats([get(f"{name}_high", mean)])[0]
    if name in EXACT_OBJECTIVES and not math.isfinite(sd):
        sd = 0.0
    return Estimate(mean, sd, n, low if math.isfinite(low) else mean, high if math.isfinite(high) else mean)


# --------------------------------------------------------------------------------------- grouping
def _key_id(key: dict) -> str:
    """A readable id for rows without a candidate_id: the architecture, setup and loss, and a hash."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    def part(k: str) -> str:
        v = key.get(k)
        return "?" if v is None else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    return f"d{part('depth')}-w{part('width')}-h{part('heads')}-{part('setup')}-{part('loss')}-{digest}"


def _plain(value: Any) -> Any:
    """A cell as a plain Python value (None when missing)."""
    from dse.store import is_null

    if is_null(value):
        return None
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def _mean(values: Iterable[Any]) -> float:
    xs = [x for x in _floats(values) if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def point_columns(objectives: Sequence[str] = ("params", "fid", "latency_s")) -> list[str]:
    """The columns of `group_points`' frame, in order."""
    cols = ["candidate_id", "trial_ids", "seeds", "n", "depth", "width", "heads", "setup", "loss", "variant",
            "steps", "guidance", "params", "proposed", "dataset"]
    for o in objectives:
        cols += [o] if o not in cols else []
        cols += [f"{o}_sd", f"{o}_low", f"{o}_high"]
    return cols + ["label_agreement", "still_improving", "final_loss", "samples_png"]


def group_points(df: pd.DataFrame, objectives: Sequence[str] = ("params", "fid", "latency_s"),
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per point (candidate x training over its training seeds) of the COMPLETE rows of `df`,
    sorted by params then candidate_id: candidate_id, trial_ids and seeds (lists, by seed), n, the
    configuration of its first row, for each objective o its mean `o` and `o_sd`, `o_low`, `o_high`
    (see `objective_estimate`), the mean label_agreement and final_loss, still_improving as the
    fraction of its rows still improving, and its first row's samples_png."""
    import pandas as pd

    cols = point_columns(objectives)
    if df is None or not len(df) or "status" not in df.columns:
        return pd.DataFrame(columns=cols)
    rows = df[df["status"] == COMPLETE]
    if not len(rows):
        return pd.DataFrame(columns=cols)
    groups: dict[str, list[dict]] = {}
    for record in rows.to_dict("records"):
        r = {k: _plain(v) for k, v in record.items()}
        cid = r.get("candidate_id")
        if not cid:
            cid = _key_id({k: r.get(k) for k in GROUP_KEYS})
        groups.setdefault(str(cid), []).append(r)
    out = []
    for cid, members in groups.items():
        members.sort(key=lambda r: (r.get("seed") is None, r.get("seed") or 0, str(r.get("trial_id"))))
        first = members[0]
        point: dict[str, Any] = {
            "candidate_id": cid, "trial_ids": [r.get("trial_id") for r in members],
            "seeds": [r.get("seed") for r in members], "n": len(members),
            **{c: first.get(c) for c in FIRST_ROW_COLUMNS},
        }
        for o in objectives:
            values = [r.get(o) for r in members]
            std = f"{o}_std"
            sds = [r.get(std) for r in members] if std in rows.columns else None
            est = objective_estimate(o, values, sds, confidence)
            point[o] = est.mean
            point[f"{o}_sd"], point[f"{o}_low"], point[f"{o}_high"] = est.sd, est.low, est.high
        point["label_agreement"] = _mean(r.get("label_agreement") for r in members)
        flags = [bool(r["still_improving"]) for r in members if r.get("still_improving") is not None]
        point["still_improving"] = sum(flags) / len(flags) if flags else math.nan
        point["final_loss"] = _mean(r.get("final_loss") for r in members)
        out.append(point)
    points = pd.DataFrame(out, columns=cols)
    order = points["params"].apply(lambda v: _floats([v])[0]).fillna(math.inf)
    return points.assign(_order=order).sort_values(["_order", "candidate_id"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)
