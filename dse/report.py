"""Owns the study report: what the results say (`ReportData`, computed and tested without HTML) and
its rendering as one self-contained HTML page that works offline (plotly.js inlined).

`compute_report_data` groups the results table (one row per trial) into points (`dse.stats.group_points`:
one per candidate x training, over its training seeds), places them on the noise-aware Pareto front
(`dse.pareto.noise_aware_front`) and checks the paper's principles on them (`dse.findings`);
`render_html` draws it: a 3-D scatter of the three objectives and its three 2-D projections with the
confidence intervals as error bars and the points tied with the front drawn apart, a table of the
points, the findings, the training curves, the sample grids at a size where 8x8 digits can be seen,
and the trials that did not complete; `write_report` does both and writes the page atomically.

Latency is measured before training: the study's constraints (`Constraints`: max params, max latency)
are drawn as dashed lines on every 2-D plot with a params or latency axis, and the candidates they
kept from training (`ExcludedCandidate`) are listed in their own section and drawn as grey crosses on
the params-latency plot. A point whose latency was contended (other work ran while it was timed) is
not ranked; the page says how many there are and how to measure them again.

Imports neither torch nor ray; pandas and plotly only inside functions, so `import dse.report` is cheap.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.config import format_count, parse_latency
from dse.convergence import parse_curve, study_warnings
from dse.errors import DseError
from dse.events import COMPLETE, FAILED, STOPPED
from dse.fileio import atomic_write
from dse.findings import CANNOT_TELL, DOES_NOT_HOLD, HOLDS, Finding, findings, with_unknown_spreads
from dse.pareto import DEFAULT_OBJECTIVES, DOMINATED, FRONT, TIED, noise_aware_front
from dse.stats import CONFIDENCE, CONTENDED_FIX, CONTENDED_STATUS, Estimate, estimate_of, group_points
from dse.store import is_null

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

REQUIRED_COLUMNS = ("trial_id", "status", "depth", "width", "heads", "params")

_QUALITY_NAMES = {"fid": "FID"}
MIN_CELL_PX = 32  # a sample is shown at least this many screen pixels wide: 8x8 digits at 4x or more
DEFAULT_NUM_CLASSES = 10  # rows of a sample grid when the rows do not say

# Colours and marker symbols shared by every plot.
_OTHER = {"color": "#8a94a6", "symbol": "circle", "size": 8}
_FRONT = {"color": "#e8590c", "symbol": "diamond", "size": 12}
_TIED = {"color": "#e8590c", "symbol": "diamond-open-dot", "size": 12, "line": {"width": 2}}  # half-filled
_RULE = {"color": "#1864ab", "symbol": "circle-open", "size": 24, "line": {"width": 2.5}}  # a ring around the point
_EXCLUDED = {"color": "#adb5bd", "symbol": "x", "size": 9}  # measured, outside the constraints, never trained
_LIMIT = {"line_dash": "dash", "line_color": "#c92a2a", "line_width": 1.5}  # a constraint's line
_SYMBOLS_3D = {"diamond-open-dot": "diamond-open"}  # 3-D scatter plots know fewer symbols
TIED_LEGEND = "tied with the front (within noise)"
EXCLUDED_LEGEND = "outside the constraints (not trained)"


@dataclass(frozen=True)
class Objective:
    """One minimised objective: its results column, a short name for titles, an axis title with units."""

    name: str
    short: str
    label: str


@dataclass(frozen=True)
class ProposedArch:
    """The architecture the paper's design rules propose for the budget."""

    depth: int
    width: int
    heads: int
    params: int

    @property
    def name(self) -> str:
        return arch_name(self.depth, self.width, self.heads)


@dataclass(frozen=True)
class TrialRecord:
    """One stored row (a trial) as the report lists it: its status and error, its training curve."""

    trial_id: str
    depth: int
    width: int
    heads: int
    setup: str
    loss: str
    variant: str
    seed: int | None
    params: int | None
    status: str
    error: str | None
    curve: tuple[tuple[float, float], ...] = ()  # (step, loss) pairs, from the row's loss_curve

    @property
    def name(self) -> str:
        return arch_name(self.depth, self.width, self.heads)


@dataclass(frozen=True)
class PointRecord:
    """One point: a candidate x training over its training seeds (n rows), each objective an Estimate
    (mean and CONFIDENCE interval), its place on the noise-aware front and its plain Pareto rank."""

    candidate_id: str
    depth: int
    width: int
    heads: int
    setup: str
    loss: str
    variant: str
    steps: int | None
    guidance: float | None
    n: int
    seeds: tuple[int, ...]
    trial_ids: tuple[str, ...]
    params: int | None
    estimates: Mapping[str, Estimate]
    rank: int | None  # the plain Pareto rank on the means (0: the plain front); None: an objective is missing
    front_status: str | None  # FRONT, TIED or DOMINATED (dse.pareto); None when not ranked
    dominated_by: tuple[str, ...]
    tied_with: tuple[str, ...]
    is_proposed: bool
    label_agreement: float | None
    still_improving: float | None  # the fraction of its rows whose loss was still falling at the end
    samples_png: str | None = None  # the sample grid of its first row (one row per class), if it has one
    num_classes: int = DEFAULT_NUM_CLASSES
    latency_p90_s: float | None = None  # the 90th percentile of its latency measurement's repeats
    latency_cached: bool | None = None  # its latency came from the latency cache (None: the rows do not say)
    latency_contended: bool = False  # its latency was contended: missing, so the point is not ranked

    @property
    def name(self) -> str:
        return arch_name(self.depth, self.width, self.heads)

    @property
    def values(self) -> dict[str, float | None]:
        """Each objective's mean (None: missing)."""
        return {k: (None if not math.isfinite(e.mean) else e.mean) for k, e in self.estimates.items()}

    @property
    def on_front(self) -> bool:
        return self.front_status == FRONT

    @property
    def tied(self) -> bool:
        return self.front_status == TIED


@dataclass(frozen=True)
class Curve:
    """One trial's training curve: loss per reporting step."""

    trial_id: str
    label: str
    steps: tuple[float, ...]
    losses: tuple[float, ...]


@dataclass(frozen=True)
class Constraints:
    """The study's constraints, applied before training: `max_params` (a count), `max_latency` as the
    user wrote it ("2ms" per image, "30s/50000" per N images) and the same as seconds per image."""

    max_params: int | None = None
    max_latency: str = ""
    max_latency_per_image_s: float | None = None

    @property
    def params_label(self) -> str:
        return f"max params {format_count(self.max_params)}" if self.max_params is not None else ""

    @property
    def latency_label(self) -> str:
        """'max latency 2ms/image', 'max latency 30s/50000'; '' without a latency constraint."""
        if self.max_latency_per_image_s is None:
            return ""
        text = self.max_latency.strip() or f"{self.max_latency_per_image_s * 1000:g}ms"
        return f"max latency {text}" + ("" if "/" in text else "/image")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label in (self.params_label, self.latency_label) if label)


@dataclass(frozen=True)
class ExcludedCandidate:
    """A candidate whose latency was measured but that was never trained: outside the constraints."""

    depth: int
    width: int
    heads: int
    params: int | None
    latency_s: float | None  # seconds for latency_num_images images
    latency_per_image_ms: float | None
    latency_num_images: int | None
    reason: str

    @property
    def name(self) -> str:
        return arch_name(self.depth, self.width, self.heads)

    def value(self, objective: str) -> float | None:
        """Its value of a params or latency objective (None for any other: it has no FID)."""
        return {"params": self.params, "latency_s": self.latency_s,
                "latency_per_image_ms": self.latency_per_image_ms}.get(objective)


@dataclass(frozen=True)
class ReportData:
    """Everything the HTML page shows; points and front ids are sorted by params."""

    title: str
    objectives: tuple[Objective, ...]
    points: tuple[PointRecord, ...]
    trials: tuple[TrialRecord, ...]
    front_ids: tuple[str, ...]
    tied_ids: tuple[str, ...]
    proposed: ProposedArch | None
    proposed_ids: tuple[str, ...]  # the candidate_ids of the points with the proposed architecture
    n_complete: int
    n_failed: int
    n_stopped: int
    provenance: tuple[str, ...]
    findings: tuple[Finding, ...] = ()
    warnings: tuple[str, ...] = ()  # about convergence (dse.convergence.study_warnings)
    confidence: float = CONFIDENCE
    constraints: Constraints | None = None
    excluded: tuple[ExcludedCandidate, ...] = ()
    latency_num_images: int | None = None  # the images one latency_s is for, when all rows share one count

    @property
    def contended(self) -> tuple[PointRecord, ...]:
        """The points whose latency was contended: not ranked until measured again on a quiet machine."""
        return tuple(p for p in self.points if p.latency_contended)

    def limit(self, objective: str) -> float | None:
        """Where a constraint lies on the objective's axis: max_params on params; the latency limit in
        the axis' unit on latency_s (s for latency_num_images images) and latency_per_image_ms; None
        when there is none (or latency_s's image count is not one number)."""
        c = self.constraints
        if c is None:
            return None
        if objective == "params":
            return None if c.max_params is None else float(c.max_params)
        if c.max_latency_per_image_s is None:
            return None
        if objective == "latency_per_image_ms":
            return c.max_latency_per_image_s * 1000
        if objective == "latency_s" and self.latency_num_images:
            return c.max_latency_per_image_s * self.latency_num_images
        return None

    @property
    def proposed_matched(self) -> bool:
        """True when some point has the proposed architecture."""
        return bool(self.proposed_ids)

    @property
    def plotted(self) -> tuple[PointRecord, ...]:
        """The points that have a place in the plots: ranked (every objective present)."""
        return tuple(p for p in self.points if p.rank is not None)

    @property
    def unfinished(self) -> tuple[TrialRecord, ...]:
        """The trials that did not complete (failed or stopped), with their errors."""
        return tuple(t for t in self.trials if t.status != COMPLETE)

    @property
    def curves(self) -> tuple[Curve, ...]:
        """The training curves of the trials that stored one."""
        return tuple(
            Curve(t.trial_id, f"{t.name} {t.setup}·{t.loss}" + (f" s{t.seed}" if t.seed is not None else ""),
                  tuple(s for s, _ in t.curve), tuple(v for _, v in t.curve))
            for t in self.trials if t.curve
        )


def arch_name(depth: int, width: int, heads: int) -> str:
    """The short name of an architecture: `d{depth}-w{width}-h{heads}`."""
    return f"d{depth}-w{width}-h{heads}"


# ---------------------------------------------------------------------------------------------
# ReportData


def compute_report_data(
    df: pd.DataFrame,
    *,
    proposed: Mapping[str, int] | None = None,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    title: str = "dse report",
    constraints: Mapping[str, Any] | Constraints | None = None,
    excluded: Sequence[Mapping[str, Any]] = (),
) -> ReportData:
    """What the report shows for the results `df` (one row per trial).

    `objectives` are three minimised columns, in the order size, quality, speed;
    `proposed` is the design-rule architecture {"depth", "width", "heads", "params"}, or None;
    `constraints` {"max_params": int | None, "max_latency": "2ms" (as written, or ""),
    "max_latency_per_image_s": float | None}, or None; `excluded` the candidates measured but never
    trained because outside them: {depth, width, heads, params, latency_s, latency_per_image_ms,
    latency_num_images, reason} each.
    """
    if len(objectives) != 3:
        raise DseError(f"a report needs three objectives (size, quality, speed), got {list(objectives)}")
    arch = _proposed_arch(proposed)
    if len(df):
        _check_columns(df, objectives)
        df = with_unknown_spreads(df, objectives)  # an old store's FID without fid_std has no interval
        rows = df.to_dict("records")
    else:
        rows = []
    trials = sorted((_trial(row) for row in rows), key=lambda t: (t.params is None, t.params or 0, t.trial_id))
    points = _points(df, objectives, arch) if rows else []
    complete = df[df["status"] == COMPLETE] if len(df) else df
    limits = _constraints(constraints)
    left_out = tuple(_excluded(e) for e in excluded)
    return ReportData(
        title=title,
        objectives=tuple(_objective(name, complete) for name in objectives),
        points=tuple(points),
        trials=tuple(trials),
        front_ids=tuple(p.candidate_id for p in points if p.on_front),
        tied_ids=tuple(p.candidate_id for p in points if p.tied),
        proposed=arch,
        proposed_ids=tuple(p.candidate_id for p in points if p.is_proposed),
        n_complete=sum(t.status == COMPLETE for t in trials),
        n_failed=sum(t.status == FAILED for t in trials),
        n_stopped=sum(t.status == STOPPED for t in trials),
        provenance=_provenance(complete, quality=objectives[1]),
        findings=tuple(findings(df)) if rows and set(objectives) == set(DEFAULT_OBJECTIVES) else (),
        warnings=tuple(study_warnings(df)) if rows else (),
        constraints=limits,
        excluded=left_out,
        latency_num_images=_latency_num_images(complete, left_out),
    )


def _constraints(constraints: Mapping[str, Any] | Constraints | None) -> Constraints | None:
    """The constraints as a Constraints (None when there are none); a DseError for a value that is no
    count or time. A max_latency text without its seconds per image is parsed (dse.config.parse_latency)."""
    if constraints is None or isinstance(constraints, Constraints):
        return constraints if constraints is None or constraints.labels else None
    if not isinstance(constraints, Mapping):
        raise DseError(f"report constraints must be a mapping of max_params, max_latency and "
                       f"max_latency_per_image_s, not {type(constraints).__name__}")
    unknown = sorted(set(constraints) - {"max_params", "max_latency", "max_latency_per_image_s"})
    if unknown:
        raise DseError(f"unknown report constraint(s) {', '.join(unknown)}: "
                       "use max_params, max_latency and max_latency_per_image_s")
    params, text = constraints.get("max_params"), constraints.get("max_latency") or ""
    per_image = constraints.get("max_latency_per_image_s")

    def positive(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    if params is not None and not (positive(params) and float(params) >= 1):
        raise DseError(f"report constraint max_params must be a positive count, not {params!r}")
    if per_image is not None and not positive(per_image):
        raise DseError("report constraint max_latency_per_image_s must be a positive number of seconds, "
                       f"not {per_image!r}")
    if per_image is None and str(text).strip():
        seconds, images = parse_latency(str(text))
        per_image = seconds / images
    out = Constraints(None if params is None else int(params), str(text).strip(),
                      None if per_image is None else float(per_image))
    return out if out.labels else None


def _excluded(entry: Mapping[str, Any]) -> ExcludedCandidate:
    """An excluded candidate from its dict; a DseError when its architecture is not named."""
    try:
        depth, width, heads = (int(entry[k]) for k in ("depth", "width", "heads"))
    except (KeyError, TypeError, ValueError):
        raise DseError(f"an excluded candidate needs integer depth, width and heads; got {dict(entry)!r}") from None
    return ExcludedCandidate(depth, width, heads, _integer(entry.get("params")), _number(entry.get("latency_s")),
                             _number(entry.get("latency_per_image_ms")), _integer(entry.get("latency_num_images")),
                             _text(entry.get("reason")) or "outside the constraints")


def _latency_num_images(complete: pd.DataFrame, excluded: Sequence[ExcludedCandidate]) -> int | None:
    """The image count of latency_s when the plotted rows (else the excluded candidates) share one."""
    counts = {int(c[0]) for c in _distinct(complete, ["latency_num_images"])} if len(complete) else set()
    if not counts:
        counts = {e.latency_num_images for e in excluded if e.latency_num_images}
    return counts.pop() if len(counts) == 1 else None


def _proposed_arch(proposed: Mapping[str, int] | None) -> ProposedArch | None:
    if proposed is None:
        return None
    missing = [k for k in ("depth", "width", "heads", "params") if k not in proposed]
    if missing:
        raise DseError(f"the proposed architecture lacks {', '.join(missing)}: give depth, width, heads and params")
    return ProposedArch(*(int(proposed[k]) for k in ("depth", "width", "heads", "params")))


def _check_columns(df: pd.DataFrame, objectives: Sequence[str]) -> None:
    missing = [c for c in (*REQUIRED_COLUMNS, *objectives) if c not in df.columns]
    if missing:
        raise DseError(
            f"the results lack the column(s) {', '.join(missing)}: are these dse results? "
            f"(columns found: {', '.join(map(str, df.columns))})"
        )


def _trial(row: dict[str, Any]) -> TrialRecord:
    return TrialRecord(
        trial_id=str(row["trial_id"]),
        depth=int(row["depth"]),
        width=int(row["width"]),
        heads=int(row["heads"]),
        setup=_text(row.get("setup")) or "",
        loss=_text(row.get("loss")) or "",
        variant=_text(row.get("variant")) or "",
        seed=_integer(row.get("seed")),
        params=_integer(row["params"]),
        status=str(row["status"]),
        error=_text(row.get("error")),
        curve=tuple((float(step), loss) for step, loss in parse_curve(row.get("loss_curve")) if math.isfinite(loss)),
    )


def _points(df: pd.DataFrame, objectives: Sequence[str], arch: ProposedArch | None) -> list[PointRecord]:
    grouped = group_points(df, objectives)
    if not len(grouped):
        return []
    ranked = noise_aware_front(grouped, objectives)
    classes = _num_classes(df)
    out = []
    for p in ranked.to_dict("records"):
        depth, width, heads = (int(p[k]) for k in ("depth", "width", "heads"))
        out.append(PointRecord(
            candidate_id=str(p["candidate_id"]),
            depth=depth,
            width=width,
            heads=heads,
            setup=_text(p.get("setup")) or "",
            loss=_text(p.get("loss")) or "",
            variant=_text(p.get("variant")) or "",
            steps=_integer(p.get("steps")),
            guidance=_number(p.get("guidance")),
            n=int(p["n"]),
            seeds=tuple(int(s) for s in p.get("seeds") or () if not is_null(s)),
            trial_ids=tuple(str(t) for t in p.get("trial_ids") or ()),
            params=_integer(p.get("params")),
            estimates={o: estimate_of(p, o) for o in objectives},
            rank=_integer(p.get("pareto_rank")),
            front_status=_text(p.get("front_status")),
            dominated_by=tuple(map(str, p.get("dominated_by") or ())),
            tied_with=tuple(map(str, p.get("tied_with") or ())),
            is_proposed=arch is not None and (depth, width, heads) == (arch.depth, arch.width, arch.heads),
            label_agreement=_number(p.get("label_agreement")),
            still_improving=_number(p.get("still_improving")),
            samples_png=_text(p.get("samples_png")),
            num_classes=classes,
            latency_p90_s=_number(p.get("latency_p90_s")),
            latency_cached=None if is_null(p.get("latency_cached")) else bool(p.get("latency_cached")),
            latency_contended=not is_null(p.get("latency_contended")) and bool(p.get("latency_contended")),
        ))
    return sorted(out, key=lambda p: (p.params is None, p.params or 0, p.candidate_id))


def _num_classes(df: pd.DataFrame) -> int:
    if "num_classes" in df.columns:
        known = [int(v) for v in df["num_classes"] if not is_null(v) and int(v) > 0]
        if known:
            return max(known)
    return DEFAULT_NUM_CLASSES


def _number(value: Any) -> float | None:
    if is_null(value):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _integer(value: Any) -> int | None:
    v = _number(value)
    return None if v is None else int(v)


def _text(value: Any) -> str | None:
    return None if is_null(value) else str(value)


def _integer_text(value: Any) -> str:
    """2000.0 -> '2000' (integer columns become float when a failed row leaves them empty)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _distinct(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """The distinct value combinations of `columns` (as text) in order of first appearance;
    empty when a column is absent."""
    if not set(columns) <= set(df.columns):
        return []
    combos = df[list(columns)].dropna().drop_duplicates()
    return [tuple(_integer_text(v) for v in combo) for combo in combos.itertuples(index=False)]


def _objective(name: str, complete: pd.DataFrame) -> Objective:
    """The objective's names; the latency label gives the image count when all trials share one."""
    if name == "params":
        return Objective(name, "params", "params (count)")
    if name == "latency_s":
        counts = _distinct(complete, ["latency_num_images"])
        return Objective(name, "latency", f"latency (s for {counts[0][0] if len(counts) == 1 else 'N'} images)")
    if name == "latency_per_image_ms":
        return Objective(name, "latency", "latency (ms per image)")
    short = _QUALITY_NAMES.get(name, name)
    return Objective(name, short, f"{short} (lower is better)")


def _provenance(complete: pd.DataFrame, quality: str) -> tuple[str, ...]:
    """How the complete trials were measured, one line per distinct setting."""
    quality_columns = [f"{quality}_extractor", f"{quality}_reference", f"{quality}_num_samples"]
    lines = [f"{quality}: {ext} vs {ref}, {n} samples" for ext, ref, n in _distinct(complete, quality_columns)]
    lines += [f"{quality} interval of one trial: bootstrap of its generated samples, {b} resamplings"
              for (b,) in _distinct(complete, [f"{quality}_bootstrap"]) if b not in ("0", "")]
    latency_columns = ["latency_device", "latency_batch", "latency_num_images"]
    lines += [f"latency: {dev}, batch {b}, {n} images" for dev, b, n in _distinct(complete, latency_columns)]
    return tuple(lines)


# ---------------------------------------------------------------------------------------------
# HTML


def render_html(data: ReportData) -> str:
    """One self-contained HTML page for `data`: plots (plotly.js inlined once), the points table, the
    findings, the training curves, the sample grids and the trials that did not complete."""
    e = html.escape
    formats = _formats(data)
    plots = _plots_html(data, formats)
    curves = _curves_html(data, include_js="plotly-graph-div" not in plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(data.title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{e(data.title)}</h1>
<p class="summary">{_summary(data)}</p>
<p class="confidence">{_confidence_html(data)}</p>
{_contended_html(data)}
{_design_rule_html(data)}
{_convergence_html(data)}
{_provenance_html(data)}
</header>
<main>
<section>
{plots}
</section>
<section>
<h2>Points</h2>
{_table_html(data, formats)}
</section>
{_excluded_html(data)}
<section>
<h2>Findings: the paper's principles on this study</h2>
{_findings_html(data)}
</section>
<section>
<h2>Training curves</h2>
{curves}
</section>
<section>
<h2>Samples</h2>
{_gallery_html(data)}
</section>
{_unfinished_html(data)}
</main>
</body>
</html>
"""


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary(data: ReportData) -> str:
    names = ", ".join(html.escape(o.short) for o in data.objectives)
    stopped = f", {data.n_stopped} stopped" if data.n_stopped else ""
    constraints = ""
    if data.constraints is not None:
        constraints = (f" · constraints: {html.escape(', '.join(data.constraints.labels))} "
                       f"({_plural(len(data.excluded), 'candidate')} outside, not trained)")
    return (
        f"{_plural(len(data.trials), 'trial')}: {data.n_complete} complete, {data.n_failed} failed{stopped} · "
        f"{_plural(len(data.points), 'point')} (a candidate over its training seeds) · "
        f"{len(data.front_ids)} on the Pareto front of {names} (all minimised), "
        f"{len(data.tied_ids)} tied with it{constraints}"
    )


def _contended_html(data: ReportData) -> str:
    """A notice counting the points whose latency was contended, and how to measure them again."""
    points = data.contended
    if not points:
        return ""
    names = _point_names(data)
    which = ", ".join(names[p.candidate_id] for p in points)
    return (f'<p class="warning contended">{_plural(len(points), "point")} had a contended latency (other work '
            f"ran on the machine while it was timed, even after re-measuring) and {'is' if len(points) == 1 else 'are'}"
            f" not ranked: {html.escape(which)}. Fix: {html.escape(CONTENDED_FIX)}.</p>")


def _confidence_html(data: ReportData) -> str:
    c = f"{data.confidence:.0%}"
    return (
        f"Every interval is the {c} confidence interval of a point's mean: over its training seeds when it has "
        f"two or more, else from the trial's own FID bootstrap; \"no interval\" where neither is known. A latency's "
        f"interval is that of its measurement (the spread of its timed repeats, and at least a floor for the "
        f"variation between runs): it is measured once per architecture, so the seeds of one share it and it does "
        f"not narrow with them. "
        f"A point is <b>dominated</b> only when the evidence says so: another point is better on the means and at "
        f"least as good in every objective at {c} confidence (no larger in an exact one such as params, clearly "
        f"better in a noisy one such as FID or latency). A point is <b>tied with the front</b> (within noise) when the data "
        f"cannot separate it from a point that beats it: it is off the front of the means but no point dominates "
        f"it in this sense, or it is on that front only by an advantage within the noise (another point is clearly "
        f"better somewhere and clearly worse nowhere). The plain Pareto rank of the means is shown beside it."
    )


def _design_rule_html(data: ReportData) -> str:
    arch = data.proposed
    if arch is None:
        return ""
    head = f"<b>Design rule</b> (paper Sec. 3.2): {html.escape(arch.name)}, {arch.params:,} params"
    if data.proposed_matched:
        points = [p for p in data.points if p.is_proposed]
        ids = ", ".join(html.escape(", ".join(p.trial_ids)) for p in points)
        ringed = " (ringed in the plots)" if any(p.is_proposed for p in data.plotted) else ""
        return f'<p class="rule">{head}; trained as {ids}{ringed}.</p>'
    return f'<p class="rule">{head}; not among the trials.</p>'


def _convergence_html(data: ReportData) -> str:
    return "".join(f'<p class="warning">{html.escape(line)}</p>' for line in data.warnings)


def _provenance_html(data: ReportData) -> str:
    if not data.provenance:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in data.provenance)
    return f'<ul class="provenance">{items}</ul>'


def _plots_html(data: ReportData, formats: Mapping[str, str]) -> str:
    """The 3-D scatter and its three 2-D projections, two by two; a note when nothing is plotted."""
    if not data.trials:
        return '<p class="empty">No trials in the results yet: nothing to plot.</p>'
    if not data.plotted:
        return '<p class="empty">No complete trial has every objective measured: nothing to plot.</p>'
    plots = (_figure_html(_figure(data, axes, formats), include_js=i == 0) for i, axes in enumerate(_PLOTS))
    return '<div class="grid">' + "".join(f'<div class="plot">{p}</div>' for p in plots) + "</div>"


# Objective indices on each plot's axes: the 3-D scatter, then size-quality, size-speed, speed-quality.
_PLOTS = ((0, 1, 2), (0, 1), (0, 2), (2, 1))


def _formats(data: ReportData) -> dict[str, str]:
    """A format spec per objective (and params): whole counts with separators; otherwise the
    decimals that give the smallest plotted value three significant digits, so a column lines up."""
    formats = {"params": ",.0f"}
    for o in data.objectives:
        if o.name != "params":
            sizes = [abs(v) for p in data.points if (v := p.values[o.name])]
            decimals = 2 - math.floor(math.log10(min(sizes))) if sizes else 2
            formats[o.name] = f".{min(max(decimals, 0), 6)}f"
    return formats


def _format(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_interval(est: Estimate, spec: str) -> str:
    """'35.0 [31.8, 38.2]', '35.0 (no interval)' when the spread is unknown, '–' when there is no value."""
    if not math.isfinite(est.mean):
        return "–"
    if not est.known:
        return f"{format(est.mean, spec)} (no interval)"
    mean, low, high = (format(v, spec) for v in (est.mean, est.low, est.high))
    return mean if low == high else f"{mean} [{low}, {high}]"  # an exact value (params, one latency): no interval


def status_text(p: PointRecord, names: Mapping[str, str] | None = None) -> str:
    """'front', 'tied with X, Y', 'dominated by Y' (point names), 'latency contended: not ranked', or '–'
    when the point is not ranked for another reason (an objective is missing)."""
    names = names or {}
    if p.front_status == FRONT:
        return "front"
    if p.front_status == TIED:
        return "tied with " + (", ".join(names.get(c, c) for c in p.tied_with) or "the front")
    if p.front_status == DOMINATED:
        return "dominated by " + ", ".join(names.get(c, c) for c in p.dominated_by)
    if p.latency_contended:
        return CONTENDED_STATUS
    return "–"


def _point_names(data: ReportData) -> dict[str, str]:
    """A readable name per candidate: the architecture, with setup·loss (and variant) when the study has
    several trainings."""
    trainings = {(p.setup, p.loss, p.variant) for p in data.points}
    out = {}
    for p in data.points:
        out[p.candidate_id] = p.name if len(trainings) == 1 else f"{p.name} {_training(p)}"
    return out


def _training(p: PointRecord) -> str:
    words = f"{p.setup}·{p.loss}"
    return words if not p.variant or p.variant == f"{p.setup}-{p.loss}" else f"{words} ({p.variant})"


def _hover(
    p: PointRecord, objectives: Sequence[Objective], formats: Mapping[str, str], names: Mapping[str, str]
) -> str:
    e = html.escape
    lines = [f"<b>{e(p.name)}</b>  {e(_training(p))}", e(f"n={p.n}, seeds {', '.join(map(str, p.seeds)) or '–'}")]
    lines += [f"{e(o.short)}: {e(format_interval(p.estimates[o.name], formats[o.name]))}" for o in objectives]
    details = _latency_details(p, formats)
    if details:
        lines.append(e(details))
    lines.append(e(status_text(p, names)) + ("" if p.rank is None else f" · plain rank {p.rank}"))
    if p.is_proposed:
        lines.append("design rule")
    return "<br>".join(lines)


def _latency_details(p: PointRecord, formats: Mapping[str, str]) -> str:
    """'latency p90 0.520 s · from the cache' (what is known of it), or ''."""
    parts = []
    if p.latency_p90_s is not None:
        parts.append(f"latency p90 {format(p.latency_p90_s, formats.get('latency_s', '.4g'))} s")
    if p.latency_cached is not None:
        parts.append("from the cache" if p.latency_cached else "measured in this study")
    return " · ".join(parts)


def _figure(data: ReportData, axes: tuple[int, ...], formats: Mapping[str, str]) -> go.Figure:
    """One plot of the points on the objectives `axes` (three: 3-D): others, tied, front, design rule."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = _point_names(data)
    groups = [
        ("other points", [p for p in data.plotted if not (p.on_front or p.tied)], _OTHER),
        (TIED_LEGEND, [p for p in data.plotted if p.tied], _TIED),
        ("Pareto front", [p for p in data.plotted if p.on_front], _FRONT),
        ("design rule", [p for p in data.plotted if p.is_proposed], _RULE),
    ]
    for name, points, marker in groups:
        if points:
            fig.add_trace(_trace(data, axes, points, formats, names, name=name, marker=marker))
    if data.proposed is not None and not groups[-1][1] and len(axes) == 2:
        _add_untrained_rule(fig, data, axes)
    if len(axes) == 2:
        _add_excluded(fig, data, axes, formats)
        _add_limits(fig, data, axes)
    fig.update_layout(_layout(data, axes))
    return fig


def _add_limits(fig: go.Figure, data: ReportData, axes: tuple[int, ...]) -> None:
    """A dashed line at each constraint on a 2-D plot's params or latency axis, labelled with it."""
    c = data.constraints
    if c is None:
        return
    for k, a in zip("xy", axes):
        name = data.objectives[a].name
        at = data.limit(name)
        if at is None:
            continue
        label = c.params_label if name == "params" else c.latency_label
        if k == "x":
            fig.add_vline(x=at, annotation_text=label, annotation_position="top right", **_LIMIT)
        else:
            fig.add_hline(y=at, annotation_text=label, annotation_position="top left", **_LIMIT)


def _add_excluded(fig: go.Figure, data: ReportData, axes: tuple[int, ...], formats: Mapping[str, str]) -> None:
    """Grey crosses for the candidates outside the constraints, on a plot whose two axes they have
    values of (params and latency: they have no FID)."""
    import plotly.graph_objects as go

    names = [data.objectives[a].name for a in axes]
    shown = [e for e in data.excluded if all(e.value(n) is not None for n in names)]
    if not shown:
        return
    hover = [html.escape(f"{e.name}: {_format(e.params, ',.0f')} params, latency "
                         f"{_format(e.value(names[1] if names[0] == 'params' else names[0]), '.4g')}") + "<br>"
             + html.escape(e.reason) for e in shown]
    fig.add_trace(go.Scatter(x=[e.value(names[0]) for e in shown], y=[e.value(names[1]) for e in shown],
                             mode="markers", name=EXCLUDED_LEGEND, marker=_EXCLUDED, hoverinfo="text",
                             hovertext=hover))


def _error_bars(points: Sequence[PointRecord], objective: str) -> dict[str, Any] | None:
    """Plotly error bars of the objective's intervals (asymmetric arrays; 0 where none is known), or
    None when no point has one (params: exact)."""
    plus, minus = [], []
    for p in points:
        est = p.estimates[objective]
        known = est.known and math.isfinite(est.low) and math.isfinite(est.high)
        plus.append(max(est.high - est.mean, 0.0) if known else 0.0)
        minus.append(max(est.mean - est.low, 0.0) if known else 0.0)
    if not any(plus) and not any(minus):
        return None
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "visible": True,
            "thickness": 1.2, "width": 3}


def _trace(
    data: ReportData,
    axes: tuple[int, ...],
    points: Sequence[PointRecord],
    formats: Mapping[str, str],
    names: Mapping[str, str],
    *,
    name: str,
    marker: dict[str, Any],
) -> go.Scatter | go.Scatter3d:
    """A scatter trace of `points` with error bars; the design-rule trace labels its first point "design rule"."""
    import plotly.graph_objects as go

    coords: dict[str, Any] = {}
    for k, a in zip("xyz", axes):
        objective = data.objectives[a].name
        coords[k] = [p.values[objective] for p in points]
        bars = _error_bars(points, objective) if marker is not _RULE else None  # the ring sits on the point
        if bars:
            coords[f"error_{k}"] = bars | {"color": marker["color"]}
    labelled = marker is _RULE
    kwargs = dict(
        name=name,
        mode="markers+text" if labelled else "markers",
        hoverinfo="text",
        hovertext=[_hover(p, data.objectives, formats, names) for p in points],
        text=["design rule"] + [""] * (len(points) - 1) if labelled else None,
        textposition="top center",
        textfont={"color": _RULE["color"], "size": 12},
    )
    if len(axes) == 3:  # 3-D markers look bigger at the same size, and know fewer symbols
        symbol = _SYMBOLS_3D.get(marker["symbol"], marker["symbol"])
        return go.Scatter3d(**coords, marker={**marker, "symbol": symbol, "size": marker["size"] * 0.6}, **kwargs)
    return go.Scatter(**coords, marker=marker, **kwargs)


def _add_untrained_rule(fig: go.Figure, data: ReportData, axes: tuple[int, ...]) -> None:
    """Mark an untrained design-rule architecture by its params, on a 2-D plot that has a params axis."""
    names = [data.objectives[a].name for a in axes]
    line = {"line_dash": "dot", "line_color": _RULE["color"], "annotation_text": "design rule (not trained)"}
    if names[0] == "params":
        fig.add_vline(x=data.proposed.params, **line)
    elif names[1] == "params":
        fig.add_hline(y=data.proposed.params, **line)


def _layout(data: ReportData, axes: tuple[int, ...]) -> dict[str, Any]:
    objectives = [data.objectives[a] for a in axes]
    layout: dict[str, Any] = {"template": "plotly_white", "height": 470, "hoverlabel": {"align": "left"}}
    if len(axes) == 3:
        return layout | {
            "title": {"text": f"{' · '.join(o.short for o in objectives)}  (drag to rotate)", "x": 0.01},
            "scene": {f"{k}axis": _axis(o) for k, o in zip("xyz", objectives)}
            | {
                "aspectmode": "cube",
                "domain": {"y": [0.1, 1]},
                "camera": {"eye": {"x": 1.7, "y": -1.7, "z": 1.0}},
            },
            "legend": {"orientation": "h", "x": 0, "y": 0},
            "margin": {"l": 0, "r": 0, "t": 44, "b": 0},
        }
    return layout | {
        "title": {"text": f"{objectives[1].short} vs {objectives[0].short}", "x": 0.02},
        "xaxis": _axis(objectives[0]),
        "yaxis": _axis(objectives[1]),
        "legend": {"orientation": "h", "x": 0, "y": -0.2},
        "margin": {"l": 60, "r": 20, "t": 44, "b": 40},
    }


def _axis(objective: Objective) -> dict[str, Any]:
    """An axis titled with the objective's label; counts tick as 350k, 400k, ..."""
    return {"title": {"text": objective.label}} | ({"tickformat": ".3~s"} if objective.name == "params" else {})


def _figure_html(fig: go.Figure, *, include_js: bool) -> str:
    return fig.to_html(
        full_html=False,
        include_plotlyjs=include_js,
        config={"displaylogo": False, "responsive": True},
    )


def _table_html(data: ReportData, formats: Mapping[str, str]) -> str:
    """Every point, sorted by params: front rows highlighted, tied ones marked."""
    if not data.points:
        if data.trials:
            return '<p class="empty">No trial completed: no points yet (see the trials below).</p>'
        return '<p class="empty">No trials yet.</p>'
    others = [o for o in data.objectives if o.name != "params"]
    columns = [("point", ""), ("architecture", ""), ("setup", ""), ("loss", ""), ("variant", ""), ("steps", "num"),
               ("guidance", "num"), ("n", "num"), ("seeds", ""), ("params", "num")]
    columns += [(f"{o.label}, mean [{data.confidence:.0%} interval]", "num") for o in others]
    columns += [("label agreement", "num"), ("still improving", ""), ("front (noise-aware)", ""),
                ("plain rank", "num"), ("samples", "")]
    head = "".join(f'<th class="{cls}">{html.escape(name)}</th>' for name, cls in columns)
    names = _point_names(data)
    rows = "\n".join(_table_row(p, others, formats, names) for p in data.points)
    return (
        '<p class="legend"><span class="swatch front"></span>Pareto front'
        f'<span class="swatch tied"></span>{html.escape(TIED_LEGEND)}'
        '<span class="badge">design rule</span> the design rule\'s architecture · sorted by params</p>\n'
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    )


def _excluded_html(data: ReportData) -> str:
    """The candidates measured but never trained, because outside the constraints: a table."""
    if not data.excluded:
        return ""
    e = html.escape
    limits = f" ({e(', '.join(data.constraints.labels))})" if data.constraints is not None else ""
    n = data.latency_num_images
    head = "".join(f'<th class="{"num" if num else ""}">{e(h)}</th>' for h, num in (
        ("architecture", False), ("params", True), (f"latency (s for {n or 'N'} images)", True),
        ("latency (ms per image)", True), ("reason", False)))
    rows = "\n".join(
        f'<tr><td class="arch">{e(c.name)}</td><td class="num">{_format(c.params, ",.0f")}</td>'
        f'<td class="num">{_format(c.latency_s, ".4g")}</td>'
        f'<td class="num">{_format(c.latency_per_image_ms, ".4g")}</td>'
        f"<td>{e(c.reason)}</td></tr>"
        for c in data.excluded)
    speed = data.objectives[2].name if data.objectives else ""
    drawn = bool(data.plotted) and any(c.params is not None and c.value(speed) is not None for c in data.excluded)
    crosses = " Grey crosses on the params-latency plot." if drawn else ""
    return (f"<section>\n<h2>Outside the constraints (not trained)</h2>\n<p class=\"legend\">Measured before "
            f"training{limits}, never trained: they have no FID.{crosses}</p>\n"
            f'<table class="excluded">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n'
            "</section>")


def _improving_text(p: PointRecord) -> str:
    if p.still_improving is None:
        return "–"
    if p.n <= 1:
        return "yes" if p.still_improving > 0.5 else "no"
    return f"{round(p.still_improving * p.n)} of {p.n} seeds"


def _table_row(
    p: PointRecord, others: Sequence[Objective], formats: Mapping[str, str], names: Mapping[str, str]
) -> str:
    """One table row; `others` are the objectives besides params, which has its own column."""
    e = html.escape
    classes = " ".join(c for c, on in [("front", p.on_front), ("tied", p.tied)] if on)
    arch = e(p.name) + (' <span class="badge">design rule</span>' if p.is_proposed else "")
    details = _latency_details(p, formats)
    values = "".join(
        f'<td class="num">{e(format_interval(p.estimates[o.name], formats[o.name]))}'
        + (f'<br><span class="sub">{e(details)}</span>' if o.name == "latency_s" and details else "") + "</td>"
        for o in others)
    agreement = "–" if p.label_agreement is None else f"{p.label_agreement:.2f}"
    guidance = "–" if p.guidance is None else f"{p.guidance:g}"
    link = f'<a href="#{_anchor(p)}">grid</a>' if _png(p.samples_png) else "–"
    return (
        f'<tr class="{classes}"><td class="id">{e(p.candidate_id)}</td><td class="arch">{arch}</td>'
        f"<td>{e(p.setup)}</td><td>{e(p.loss)}</td><td>{e(p.variant)}</td>"
        f'<td class="num">{_format(p.steps, "d")}</td><td class="num">{guidance}</td><td class="num">{p.n}</td>'
        f"<td>{e(', '.join(map(str, p.seeds)) or '–')}</td>"
        f'<td class="num">{_format(p.params, formats["params"])}</td>{values}'
        f'<td class="num">{agreement}</td><td>{_improving_text(p)}</td>'
        f'<td class="status">{e(status_text(p, names))}</td>'
        f'<td class="num">{"–" if p.rank is None else p.rank}</td><td>{link}</td></tr>'
    )


_VERDICT_CLASS = {HOLDS: "holds", DOES_NOT_HOLD: "fails", CANNOT_TELL: "unsure"}


def _findings_html(data: ReportData) -> str:
    """The findings as a table: verdict, the question and the evidence (with details), the paper's figure."""
    if not data.findings:
        return ('<p class="empty">None of the paper\'s principles can be checked on these points (they need, e.g., '
                "two losses for one student, or several architectures trained the same way at one size).</p>")
    e = html.escape
    rows = []
    for f in data.findings:
        details = "".join(f"<li>{e(d)}</li>" for d in f.details)
        details = f'<ul class="details">{details}</ul>' if details else ""
        rows.append(
            f'<tr><td class="verdict {_VERDICT_CLASS.get(f.verdict, "")}">{e(f.verdict)}</td>'
            f"<td><b>{e(f.principle)}</b>: {e(f.question)}<br>{e(f.evidence)}{details}</td>"
            f'<td class="paper">{e(f.paper)}</td></tr>'
        )
    head = "<tr><th>verdict</th><th>principle and evidence</th><th>the paper</th></tr>"
    return f'<table class="findings">\n<thead>{head}</thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"


def _curves_html(data: ReportData, *, include_js: bool) -> str:
    """One plot of every stored training curve: loss against step, log scale."""
    curves = data.curves
    if not curves:
        return '<p class="empty">No trial stored a training curve.</p>'
    import plotly.graph_objects as go

    fig = go.Figure()
    for c in curves:
        fig.add_trace(go.Scatter(x=list(c.steps), y=list(c.losses), mode="lines", name=c.label,
                                 hovertext=c.trial_id, line={"width": 1.5}))
    fig.update_layout(
        template="plotly_white", height=420, title={"text": "training loss per reporting step", "x": 0.02},
        xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": "loss (log scale)"}, "type": "log"},
        margin={"l": 60, "r": 20, "t": 44, "b": 40},
    )
    return f'<div class="plot">{_figure_html(fig, include_js=include_js)}</div>'


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(path_text: str | None) -> bytes | None:
    """The bytes of a PNG file, or None when there is no such file or it is no PNG (only a picture is
    inlined, never another file's contents)."""
    path = Path(path_text) if path_text else None
    if path is None or not path.is_file():
        return None
    content = path.read_bytes()
    return content if content.startswith(PNG_SIGNATURE) else None


def png_size(content: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when the header is not there."""
    if len(content) < 24 or content[12:16] != b"IHDR":
        return None
    return int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")


def display_width(size: tuple[int, int] | None, rows: int, min_cell: int = MIN_CELL_PX) -> int | None:
    """The width in CSS pixels at which a grid of `rows` rows of samples shows each sample at least
    `min_cell` pixels tall: a whole multiple of its own width (pixels stay square), None when unknown."""
    if size is None or rows < 1:
        return None
    width, height = size
    cell = height / rows
    scale = max(1, math.ceil(min_cell / cell)) if cell > 0 else 1
    return width * scale


def _anchor(p: PointRecord) -> str:
    return "samples-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in p.candidate_id)


def _gallery_html(data: ReportData) -> str:
    """Each point's sample grid, inlined as a data URI (the page stays one self-contained file), drawn
    pixelated at a size where each sample is at least MIN_CELL_PX pixels."""
    import base64

    figures = []
    names = _point_names(data)
    for p in data.points:
        content = _png(p.samples_png)
        if content is None:
            continue
        width = display_width(png_size(content), p.num_classes)
        style = f' style="width: {width}px"' if width else ""
        uri = base64.b64encode(content).decode("ascii")
        title = html.escape(f"{p.name}: one row per class, fixed noise per column")
        seed = p.seeds[0] if p.seeds else "–"
        caption = html.escape(f"{names[p.candidate_id]} · {status_text(p, names)} · seed {seed}")
        figures.append(
            f'<figure id="{_anchor(p)}"><img class="samples" alt="samples of {html.escape(p.candidate_id)}" '
            f'title="{title}"{style} src="data:image/png;base64,{uri}"><figcaption>{caption}</figcaption></figure>'
        )
    if not figures:
        return '<p class="empty">No point has a sample grid.</p>'
    return ('<p class="legend">One row per class, the same noise in each column: a row that does not change '
            'with its label shows a student that ignores the label.</p>\n<div class="gallery">'
            + "".join(figures) + "</div>")


def _unfinished_html(data: ReportData) -> str:
    """The trials that failed or were stopped, with their errors."""
    trials = data.unfinished
    if not trials:
        return ""
    e = html.escape
    rows = "\n".join(
        f'<tr class="{e(t.status)}"><td class="id">{e(t.trial_id)}</td><td class="arch">{e(t.name)}</td>'
        f"<td>{e(t.setup)}</td><td>{e(t.loss)}</td><td>{e(t.variant)}</td>"
        f'<td class="num">{"–" if t.seed is None else t.seed}</td>'
        f'<td class="status">{e(t.status)}</td><td class="error">{_error_html(t.error)}</td></tr>'
        for t in trials
    )
    head = "".join(f"<th>{h}</th>" for h in ("trial", "architecture", "setup", "loss", "variant", "seed", "status",
                                             "error"))
    return (f"<section>\n<h2>Trials that did not complete</h2>\n<table class=\"trials\">\n<thead><tr>{head}</tr>"
            f"</thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n</section>")


def _error_html(error: str | None) -> str:
    """The error's first line; the whole text (a traceback, say) folds out below it."""
    if not error:
        return ""
    first, _, rest = error.strip().partition("\n")
    if not rest:
        return html.escape(first)
    return f"<details><summary>{html.escape(first)}</summary><pre>{html.escape(error)}</pre></details>"


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #212529;
       margin: 0 auto; max-width: 1500px; padding: 20px 28px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 24px 0 6px; }
.summary { color: #495057; margin: 0 0 6px; }
.confidence { color: #343a40; font-size: 13px; margin: 4px 0; max-width: 75em; }
.warning { color: #862e9c; margin: 4px 0; }
.rule { margin: 4px 0; }
.provenance { color: #495057; font-size: 13px; margin: 4px 0 14px; padding-left: 18px; }
.empty { padding: 20px; background: #f8f9fa; border: 1px solid #dee2e6; border-radius: 6px; color: #495057; }
.plot { border: 1px solid #e9ecef; border-radius: 6px; padding: 4px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
@media (max-width: 1000px) { .grid { grid-template-columns: minmax(0, 1fr); } }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e9ecef; text-align: left; vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.id, td.arch { font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: nowrap; }
tr.front td { background: #fff4e6; }
tr.tied td { background: repeating-linear-gradient(135deg, #fff4e6 0 6px, #ffffff 6px 12px); }
tr.failed td.status { color: #c92a2a; font-weight: 600; }
td.error { color: #c92a2a; max-width: 40em; overflow-wrap: anywhere; }
td.error summary { cursor: pointer; }
td.error pre { white-space: pre-wrap; font-size: 12px; margin: 4px 0 0; }
td.verdict { font-weight: 600; white-space: nowrap; }
td.verdict.holds { color: #2b8a3e; }
td.verdict.fails { color: #c92a2a; }
td.verdict.unsure { color: #e67700; }
td.paper { color: #495057; max-width: 30em; }
ul.details { margin: 2px 0 0; padding-left: 18px; color: #495057; }
.badge { font: 11px system-ui, sans-serif; color: #fff; background: #1864ab; border-radius: 3px; padding: 1px 5px;
         margin: 0 4px 0 14px; white-space: nowrap; }
td .badge { margin-left: 6px; }
.gallery { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.gallery figure { margin: 0; }
.gallery figcaption { font-size: 12px; color: #495057; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
img.samples { image-rendering: pixelated; max-width: 100%; height: auto;
              border: 1px solid #dee2e6; }
.legend { font-size: 12px; color: #495057; margin: 0 0 6px; }
.sub { font-size: 11px; color: #868e96; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin: 0 5px 0 12px;
          background: #fff4e6; border: 1px solid #e8590c; border-radius: 2px; }
.swatch:first-child { margin-left: 0; }
.swatch.tied { background: repeating-linear-gradient(135deg, #fff4e6 0 3px, #ffffff 3px 6px); }
"""


# ---------------------------------------------------------------------------------------------
# Writing


def write_report(df: pd.DataFrame, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Compute and render the report for `df` and write it to `path` atomically (a temporary file in
    the same folder, then `os.replace`), creating the folder; `kwargs` go to `compute_report_data`."""
    path = Path(path)
    atomic_write(path, render_html(compute_report_data(df, **kwargs)))
    return path
