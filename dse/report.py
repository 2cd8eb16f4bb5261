"""Owns the study report: what the results say (`ReportData`, computed and tested without HTML) and
its rendering as one self-contained HTML page that works offline (plotly.js inlined).

`compute_report_data` turns the results table (one row per trial) into a `ReportData`;
`render_html` draws it: a 3-D scatter of the three objectives, its three 2-D projections and a
table of every trial; `write_report` does both and writes the page atomically. Imports neither
torch nor ray; pandas and plotly only inside functions, so `import dse.report` is cheap.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.errors import DseError
from dse.events import COMPLETE, FAILED
from dse.fileio import atomic_write
from dse.pareto import DEFAULT_OBJECTIVES, pareto_ranks
from dse.store import is_null

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

REQUIRED_COLUMNS = ("trial_id", "status", "depth", "width", "heads", "params")

_QUALITY_NAMES = {"fid": "FID"}

# Colours and marker symbols shared by every plot.
_OTHER = {"color": "#8a94a6", "symbol": "circle", "size": 8}
_FRONT = {"color": "#e8590c", "symbol": "diamond", "size": 12}
_RULE = {"color": "#1864ab", "symbol": "circle-open", "size": 24, "line": {"width": 2.5}}  # a ring around the point


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
    """One trial as the report shows it; `values` maps each objective's name to its value (None: missing)."""

    trial_id: str
    depth: int
    width: int
    heads: int
    setup: str
    loss: str
    params: int | None
    values: Mapping[str, float | None]
    status: str
    error: str | None
    rank: int | None
    on_front: bool
    is_proposed: bool
    samples_png: str | None = None  # the trial's PNG sample grid (one row per class), if it has one

    @property
    def name(self) -> str:
        return arch_name(self.depth, self.width, self.heads)


@dataclass(frozen=True)
class ReportData:
    """Everything the HTML page shows; trials and front ids are sorted by params."""

    title: str
    objectives: tuple[Objective, ...]
    trials: tuple[TrialRecord, ...]
    front_ids: tuple[str, ...]
    proposed: ProposedArch | None
    proposed_ids: tuple[str, ...]
    n_complete: int
    n_failed: int
    provenance: tuple[str, ...]

    @property
    def proposed_matched(self) -> bool:
        """True when some trial has the proposed architecture."""
        return bool(self.proposed_ids)

    @property
    def plotted(self) -> tuple[TrialRecord, ...]:
        """The trials that have a point in the plots: ranked (complete, every objective present)."""
        return tuple(t for t in self.trials if t.rank is not None)


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
) -> ReportData:
    """What the report shows for the results `df` (one row per trial).

    `objectives` are three minimised columns, in the order size, quality, speed;
    `proposed` is the design-rule architecture {"depth", "width", "heads", "params"}, or None.
    """
    if len(objectives) != 3:
        raise DseError(f"a report needs three objectives (size, quality, speed), got {list(objectives)}")
    arch = _proposed_arch(proposed)
    if len(df):
        _check_columns(df, objectives)
        ranks = pareto_ranks(df, objectives).tolist()
        rows = df.to_dict("records")
    else:
        ranks, rows = [], []
    trials = sorted(
        (_record(row, rank, objectives, arch) for row, rank in zip(rows, ranks)),
        key=lambda t: (t.params is None, t.params or 0, t.trial_id),
    )
    complete = df[df["status"] == COMPLETE] if len(df) else df
    return ReportData(
        title=title,
        objectives=tuple(_objective(name, complete) for name in objectives),
        trials=tuple(trials),
        front_ids=tuple(t.trial_id for t in trials if t.on_front),
        proposed=arch,
        proposed_ids=tuple(t.trial_id for t in trials if t.is_proposed),
        n_complete=sum(t.status == COMPLETE for t in trials),
        n_failed=sum(t.status == FAILED for t in trials),
        provenance=_provenance(complete, quality=objectives[1]),
    )


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


def _record(row: dict[str, Any], rank: Any, objectives: Sequence[str], arch: ProposedArch | None) -> TrialRecord:
    rank = None if is_null(rank) else int(rank)
    depth, width, heads = (int(row[k]) for k in ("depth", "width", "heads"))
    return TrialRecord(
        trial_id=str(row["trial_id"]),
        depth=depth,
        width=width,
        heads=heads,
        setup=_text(row.get("setup")) or "",
        loss=_text(row.get("loss")) or "",
        params=None if is_null(row["params"]) else int(row["params"]),
        values={name: _number(row[name]) for name in objectives},
        status=str(row["status"]),
        error=_text(row.get("error")),
        rank=rank,
        on_front=rank == 0,
        is_proposed=arch is not None and (depth, width, heads) == (arch.depth, arch.width, arch.heads),
        samples_png=_text(row.get("samples_png")),
    )


def _number(value: Any) -> float | None:
    return None if is_null(value) else float(value)


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
    short = _QUALITY_NAMES.get(name, name)
    return Objective(name, short, f"{short} (lower is better)")


def _provenance(complete: pd.DataFrame, quality: str) -> tuple[str, ...]:
    """How the complete trials were measured, one line per distinct setting."""
    quality_columns = [f"{quality}_extractor", f"{quality}_reference", f"{quality}_num_samples"]
    lines = [f"{quality}: {ext} vs {ref}, {n} samples" for ext, ref, n in _distinct(complete, quality_columns)]
    latency_columns = ["latency_device", "latency_batch", "latency_num_images"]
    lines += [f"latency: {dev}, batch {b}, {n} images" for dev, b, n in _distinct(complete, latency_columns)]
    return tuple(lines)


# ---------------------------------------------------------------------------------------------
# HTML


def render_html(data: ReportData) -> str:
    """One self-contained HTML page for `data`: plots (plotly.js inlined once) and the trials table."""
    e = html.escape
    formats = _formats(data)
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
{_design_rule_html(data)}
{_provenance_html(data)}
</header>
<main>
<section>
{_plots_html(data, formats)}
</section>
<section>
<h2>Trials</h2>
{_table_html(data, formats)}
</section>
</main>
</body>
</html>
"""


def _summary(data: ReportData) -> str:
    names = ", ".join(html.escape(o.short) for o in data.objectives)
    return (
        f"{_plural(len(data.trials), 'trial')}: {data.n_complete} complete, {data.n_failed} failed · "
        f"{len(data.front_ids)} on the Pareto front of {names} (all minimised)"
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _design_rule_html(data: ReportData) -> str:
    arch = data.proposed
    if arch is None:
        return ""
    head = f"<b>Design rule</b> (paper Sec. 3.2): {html.escape(arch.name)}, {arch.params:,} params"
    if data.proposed_matched:
        ids = ", ".join(html.escape(i) for i in data.proposed_ids)
        ringed = " (ringed in the plots)" if any(t.is_proposed for t in data.plotted) else ""
        return f'<p class="rule">{head}; trained as {ids}{ringed}.</p>'
    return f'<p class="rule">{head}; not among the trials.</p>'


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
            sizes = [abs(t.values[o.name]) for t in data.plotted if t.values[o.name]]
            decimals = 2 - math.floor(math.log10(min(sizes))) if sizes else 2
            formats[o.name] = f".{min(max(decimals, 0), 6)}f"
    return formats


def _format(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _hover(t: TrialRecord, objectives: Sequence[Objective], formats: Mapping[str, str]) -> str:
    e = html.escape
    lines = [f"<b>{e(t.name)}</b>  {e(t.setup)} · {e(t.loss)}", e(t.trial_id)]
    lines += [f"{e(o.short)}: {_format(t.values[o.name], formats[o.name])}" for o in objectives]
    lines.append("Pareto front" if t.on_front else f"Pareto rank {t.rank}")
    if t.is_proposed:
        lines.append("design rule")
    return "<br>".join(lines)


def _figure(data: ReportData, axes: tuple[int, ...], formats: Mapping[str, str]) -> go.Figure:
    """One plot of the trials on the objectives `axes` (three: 3-D): others, front, design rule."""
    import plotly.graph_objects as go

    fig = go.Figure()
    others = [t for t in data.plotted if not t.on_front]
    front = [t for t in data.plotted if t.on_front]
    rule = [t for t in data.plotted if t.is_proposed]
    groups = [("other trials", others, _OTHER), ("Pareto front", front, _FRONT), ("design rule", rule, _RULE)]
    for name, trials, marker in groups:
        if trials:
            fig.add_trace(_trace(data, axes, trials, formats, name=name, marker=marker))
    if data.proposed is not None and not rule and len(axes) == 2:
        _add_untrained_rule(fig, data, axes)
    fig.update_layout(_layout(data, axes))
    return fig


def _trace(
    data: ReportData,
    axes: tuple[int, ...],
    trials: Sequence[TrialRecord],
    formats: Mapping[str, str],
    *,
    name: str,
    marker: dict[str, Any],
) -> go.Scatter | go.Scatter3d:
    """A scatter trace of `trials`; the design-rule trace labels its first point "design rule"."""
    import plotly.graph_objects as go

    coords = {k: [t.values[data.objectives[a].name] for t in trials] for k, a in zip("xyz", axes)}
    labelled = marker is _RULE
    kwargs = dict(
        name=name,
        mode="markers+text" if labelled else "markers",
        hoverinfo="text",
        hovertext=[_hover(t, data.objectives, formats) for t in trials],
        text=["design rule"] + [""] * (len(trials) - 1) if labelled else None,
        textposition="top center",
        textfont={"color": _RULE["color"], "size": 12},
    )
    if len(axes) == 3:  # 3-D markers look bigger at the same size
        return go.Scatter3d(**coords, marker={**marker, "size": marker["size"] * 0.6}, **kwargs)
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
    """Every trial, sorted by params: front rows highlighted, failed ones with their error."""
    if not data.trials:
        return '<p class="empty">No trials yet.</p>'
    others = [o for o in data.objectives if o.name != "params"]
    columns = [("trial", ""), ("architecture", ""), ("setup", ""), ("loss", ""), ("params", "num")]
    columns += [(o.label, "num") for o in others] + [("rank", "num"), ("status", ""), ("samples", ""), ("error", "")]
    head = "".join(f'<th class="{cls}">{html.escape(name)}</th>' for name, cls in columns)
    rows = "\n".join(_table_row(t, others, formats) for t in data.trials)
    return (
        '<p class="legend"><span class="swatch front"></span>Pareto front'
        '<span class="badge">design rule</span> the design rule\'s architecture · sorted by params</p>\n'
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    )


def _table_row(t: TrialRecord, others: Sequence[Objective], formats: Mapping[str, str]) -> str:
    """One table row; `others` are the objectives besides params, which has its own column."""
    e = html.escape
    classes = " ".join(c for c, on in [("front", t.on_front), ("failed", t.status == FAILED)] if on)
    arch = e(t.name) + (' <span class="badge">design rule</span>' if t.is_proposed else "")
    values = "".join(f'<td class="num">{_format(t.values[o.name], formats[o.name])}</td>' for o in others)
    rank = "front" if t.on_front else ("–" if t.rank is None else str(t.rank))
    return (
        f'<tr class="{classes}"><td class="id">{e(t.trial_id)}</td><td class="arch">{arch}</td>'
        f'<td>{e(t.setup)}</td><td>{e(t.loss)}</td><td class="num">{_format(t.params, formats["params"])}</td>'
        f'{values}<td class="num">{rank}</td><td class="status">{e(t.status)}</td>'
        f'<td>{_samples_html(t)}</td><td class="error">{_error_html(t.error)}</td></tr>'
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _samples_html(t: TrialRecord) -> str:
    """The trial's sample grid inlined as a data URI (the page stays one self-contained file); "–"
    when the trial has none or its file is gone."""
    import base64

    path = Path(t.samples_png) if t.samples_png else None
    if path is None or not path.is_file():
        return "–"
    content = path.read_bytes()
    if not content.startswith(PNG_SIGNATURE):  # only a picture is inlined, never another file's contents
        return "–"
    data = base64.b64encode(content).decode("ascii")
    title = html.escape(f"{t.name}: one row per class, fixed noise per column")
    return f'<img class="samples" alt="samples of {html.escape(t.trial_id)}" title="{title}" src="data:image/png;base64,{data}">'



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
       margin: 0 auto; max-width: 1400px; padding: 20px 28px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 24px 0 6px; }
.summary { color: #495057; margin: 0 0 6px; }
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
td.id, td.arch { font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: nowrap; }
tr.front td { background: #fff4e6; }
tr.failed td.status { color: #c92a2a; font-weight: 600; }
td.error { color: #c92a2a; max-width: 40em; overflow-wrap: anywhere; }
td.error summary { cursor: pointer; }
td.error pre { white-space: pre-wrap; font-size: 12px; margin: 4px 0 0; }
.badge { font: 11px system-ui, sans-serif; color: #fff; background: #1864ab; border-radius: 3px; padding: 1px 5px;
         margin: 0 4px 0 14px; white-space: nowrap; }
td .badge { margin-left: 6px; }
img.samples { height: 64px; image-rendering: pixelated; transition: height 0.1s; }
img.samples:hover { height: 320px; }
.legend { font-size: 12px; color: #495057; margin: 0 0 6px; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 5px;
          background: #fff4e6; border: 1px solid #e8590c; border-radius: 2px; }
"""


# ---------------------------------------------------------------------------------------------
# Writing


def write_report(df: pd.DataFrame, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Compute and render the report for `df` and write it to `path` atomically (a temporary file in
    the same folder, then `os.replace`), creating the folder; `kwargs` go to `compute_report_data`."""
    path = Path(path)
    atomic_write(path, render_html(compute_report_data(df, **kwargs)))
    return path
