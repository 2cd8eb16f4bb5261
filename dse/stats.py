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
a per-row SD column `<name>_std` uses it as `sds`: fid its bootstrap SD `fid_std`, latency_s the SD one
latency measurement is taken to have, `latency_s_std` (the larger of the sample SD of its timed repeats
and a relative noise floor, `dse.metrics.latency.LATENCY_NOISE_FLOOR`, for the run-to-run variation one
pass's repeats do not show); latency_per_image_ms takes latency_s_std scaled by latency_per_image_ms /
latency_s (`SD_FROM`). Any other objective, and a latency of rows written before latency_s_std, uses
the spread across the point's rows when it has n >= 2 of them, and is taken as exact with one.

Latency is a property of the architecture, measured once per study (the latency cache): every row of
one architecture, whatever its seed or training, carries the SAME measurement. For the
`ARCHITECTURE_OBJECTIVES` a point's rows are therefore first reduced to their distinct measurements
(`measurements`: by (latency_key, latency_measured_at) when the rows have them, else by (value, SD)),
so three seeds sharing one measurement are one observation, not three (`compare` would otherwise divide
its variance by 3 and call a difference within the noise clear), while measurements that differ
(re-measured) pool. A row whose latency was contended
(`latency_contended`: other work ran while it was timed, even after re-measuring) has no latency here:
its latency objectives count as missing, so a point left with none is not ranked. The estimate's own
count is stored as `<objective>_n` beside the point's row count `n` (`estimate_of` reads it).

Imports neither torch nor ray; pandas and scipy (for the t and normal quantiles) only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from dse.events import COMPLETE

if TYPE_CHECKING:
    import pandas as pd

CONFIDENCE = 0.95  # the confidence of every interval dse reports, and of "clearly" better or worse

LESS, GREATER, TIED = "less", "greater", "tied"  # what `compare` answers
EXACT_OBJECTIVES = ("params",)  # counted, not measured: sd 0
# Objectives that depend on the architecture (and how it is measured), never on the trained weights:
# every row of one architecture carries one measurement of them (module docstring); dse.pareto shares
# one estimate of them between the points of one architecture.
ARCHITECTURE_OBJECTIVES = ("latency_s", "latency_per_image_ms", "latency_onnx_cpu_s")
# The identity of one latency measurement in a row (all rows that copy it carry the same pair).
MEASUREMENT_ID_COLUMNS = ("latency_key", "latency_measured_at")
# An objective without its own `<name>_std` column whose SD is another's scaled: sd = sd(base) * value / base.
SD_FROM = {"latency_per_image_ms": "latency_s"}
# What a point whose latency was contended is called, and how to measure it again (report, summary).
CONTENDED_STATUS = "latency contended: not ranked"
CONTENDED_FIX = "re-run `dse run` on a quiet machine; dse re-measures latencies it could not trust"
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
    """The estimate of objective `name` over one point's rows (or, for ARCHITECTURE_OBJECTIVES, its
    distinct measurements), with the noise that objective carries (module docstring): exact for
    EXACT_OBJECTIVES, the rows' own `sds` when given (for a latency: when one of them is known), else
    the spread across rows (n >= 2) or exact (one row)."""
    xs = [x for x in _floats(values) if math.isfinite(x)]
    if name in EXACT_OBJECTIVES:
        return exact(sum(xs) / len(xs), len(xs)) if xs else UNKNOWN
    if sds is not None and name in ARCHITECTURE_OBJECTIVES and not any(
            math.isfinite(x) and math.isfinite(s) for x, s in zip(_floats(values), _floats(sds))):
        sds = None  # rows written before latency_s_std: as before, exact with one row
    if sds is not None:
        return estimate(values, sds, confidence)
    if len(xs) == 1:
        return exact(xs[0])
    return estimate(xs, None, confidence)


def estimate_of(point: dict | Any, name: str) -> Estimate:
    """The Estimate of objective `name` that `group_points` stored in a point's row (a dict or a
    pandas row): `name`, `name_sd`, `name_n` (else the point's `n`), `name_low`, `name_high`."""
    get = point.get if hasattr(point, "get") else lambda k, d=None: getattr(point, k, d)
    mean = _floats([get(name)])[0]
    if not math.isfinite(mean):
        return UNKNOWN
    n = _floats([get(f"{name}_n")])[0]
    if not math.isfinite(n) or n < 1:
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


def _is_true(value: Any) -> bool:
    """A bool cell: True only for a true value (None, NA and NaN are not)."""
    v = _plain(value)
    return isinstance(v, (bool, int, float)) and bool(v)


def _row_sd(row: Mapping[str, Any], name: str) -> float:
    """The SD of one row's measurement of `name`: its `<name>_std`, else one scaled from SD_FROM's base."""
    sd = _floats([row.get(f"{name}_std")])[0]
    if math.isfinite(sd) or name not in SD_FROM:
        return sd
    base = SD_FROM[name]
    base_sd, base_value, value = _floats([row.get(f"{base}_std"), row.get(base), row.get(name)])
    return base_sd * value / base_value if base_value > 0 else math.nan


def latency_contended(row: Mapping[str, Any]) -> bool:
    """True when the row's latency was contended (other work ran while it was timed, even after
    re-measuring): its latency objectives are not to be ranked on."""
    return _is_true(row.get("latency_contended"))


def _distinct_rows(rows: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The first row of each distinct measurement of `name` among `rows` (module docstring), leaving
    out rows without a value and rows whose latency was contended."""
    seen: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        value = _floats([r.get(name)])[0]
        if not math.isfinite(value) or latency_contended(r):
            continue
        ids = tuple(_plain(r.get(c)) for c in MEASUREMENT_ID_COLUMNS)
        sd = _row_sd(r, name)
        # copies of one measurement share its id; a value that differs is never a copy
        key = ("id", *ids, value) if all(v is not None for v in ids) else \
            ("value", value, sd if math.isfinite(sd) else None)
        seen.setdefault(key, r)
    return list(seen.values())


def measurements(rows: Iterable[Mapping[str, Any]], name: str) -> list[tuple[float, float]]:
    """The distinct measurements (value, sd) of the architecture objective `name` among `rows` (dicts),
    in order of first appearance: copies of one measurement (the same latency_key and
    latency_measured_at, else the same value and SD) count once; contended rows and rows without a
    value are left out; sd is NaN when the rows do not say it."""
    return [(_floats([r.get(name)])[0], _row_sd(r, name)) for r in _distinct_rows(rows, name)]


def _cached(rows: Sequence[Mapping[str, Any]]) -> bool | None:
    """True when every row that says so took its latency from the cache; None when none says."""
    flags = [_plain(r.get("latency_cached")) for r in rows]
    known = [bool(f) for f in flags if f is not None]
    return all(known) if known else None


def point_columns(objectives: Sequence[str] = ("params", "fid", "latency_s")) -> list[str]:
    """The columns of `group_points`' frame, in order."""
    cols = ["candidate_id", "trial_ids", "seeds", "n", "depth", "width", "heads", "setup", "loss", "variant",
            "steps", "guidance", "params", "proposed", "dataset"]
    for o in objectives:
        cols += [o] if o not in cols else []
        cols += [f"{o}_sd", f"{o}_low", f"{o}_high", f"{o}_n"]
    return cols + ["label_agreement", "still_improving", "final_loss", "samples_png", "latency_p90_s",
                   "latency_cached", "latency_contended"]


def group_points(df: pd.DataFrame, objectives: Sequence[str] = ("params", "fid", "latency_s"),
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per point (candidate x training over its training seeds) of the COMPLETE rows of `df`,
    sorted by params then candidate_id: candidate_id, trial_ids and seeds (lists, by seed), n, the
    configuration of its first row, for each objective o its mean `o` and `o_sd`, `o_low`, `o_high`
    and `o_n`, the count the estimate is over (see `objective_estimate`; for ARCHITECTURE_OBJECTIVES
    the point's distinct, uncontended measurements, `measurements`), the mean label_agreement and
    final_loss, still_improving as the fraction of its rows still improving, its first row's
    samples_png, latency_p90_s (the mean p90 of those latency measurements), latency_cached (True when
    all its rows' latencies came from the cache; None when no row says) and latency_contended (True
    when its latency was contended and no uncontended measurement is left: its latency objectives are
    then missing and the point is not ranked)."""
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
            if o in ARCHITECTURE_OBJECTIVES:
                obs = measurements(members, o)
                est = objective_estimate(o, [v for v, _ in obs], [s for _, s in obs], confidence)
            else:
                values = [r.get(o) for r in members]
                std = f"{o}_std"
                sds = [r.get(std) for r in members] if std in rows.columns else None
                est = objective_estimate(o, values, sds, confidence)
            point[o] = est.mean
            point[f"{o}_sd"], point[f"{o}_low"], point[f"{o}_high"], point[f"{o}_n"] = est.sd, est.low, est.high, est.n
        point["label_agreement"] = _mean(r.get("label_agreement") for r in members)
        flags = [bool(r["still_improving"]) for r in members if r.get("still_improving") is not None]
        point["still_improving"] = sum(flags) / len(flags) if flags else math.nan
        point["final_loss"] = _mean(r.get("final_loss") for r in members)
        trusted = _distinct_rows(members, "latency_s")
        point["latency_p90_s"] = _mean(r.get("latency_p90_s") for r in trusted)
        point["latency_cached"] = _cached([r for r in members if not latency_contended(r)] or members)
        point["latency_contended"] = any(latency_contended(r) for r in members) and not trusted
        out.append(point)
    points = pd.DataFrame(out, columns=cols)
    order = points["params"].apply(lambda v: _floats([v])[0]).fillna(math.inf)
    return points.assign(_order=order).sort_values(["_order", "candidate_id"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)
