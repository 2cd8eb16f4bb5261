"""Tests for dse.report: the computed ReportData (points, the noise-aware front, findings), the offline
HTML page (error bars, ties, curves, sample grids) and the atomic write."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dse.errors import DseError
from dse.data.grid import save_png, spaced_grid
from dse.report import (
    TIED_LEGEND, compute_report_data, display_width, png_size, render_html, write_report,
)

NAN = float("nan")
ERROR = "RuntimeError: loss is NaN <script>alert('x')</script>"
PROPOSED = {"depth": 4, "width": 96, "heads": 4, "params": 420_000}


def _trial(trial_id, depth, width, heads, setup, loss, params, fd, latency_s, status="complete", error=None, **extra):
    complete = status == "complete"
    return {
        "trial_id": trial_id,
        "candidate_id": extra.pop("candidate_id", trial_id),  # one seed per candidate unless told
        "seed": extra.pop("seed", 0),
        "steps": 600,
        "guidance": 1.5,
        "variant": f"{setup}-{loss}",
        "status": status,
        "error": error,
        "depth": depth,
        "width": width,
        "heads": heads,
        "setup": setup,
        "loss": loss,
        "params": params,
        "fid": fd,
        "latency_s": latency_s,
        "fid_extractor": "clf-v1" if complete else None,
        "fid_reference": "digits:train:1797" if complete else None,
        "fid_num_samples": 2000 if complete else None,
        "latency_device": "cpu" if complete else None,
        "latency_batch": 64 if complete else None,
        "latency_num_images": 256 if complete else None,
        **extra,
    }


@pytest.fixture
def df() -> pd.DataFrame:
    """Six trials of one seed each, FID known to +-0.5 (its bootstrap SD 0.25), fronts worked out by hand
    over (params, fid, latency_s); params and one row's latency are exact."""
    return pd.DataFrame(
        [
            _trial("t-worse", 5, 96, 6, "get", "lpips", 480_000, 14.0, 0.60, fid_std=0.25),  # clearly dominated
            _trial("t-rule-b", 4, 96, 4, "dmd", "l1", 420_000, 11.2, 0.50, fid_std=0.25),  # rank 1, within noise of t-rule-a
            _trial("t-fast", 2, 128, 8, "mi1", "l2", 450_000, 13.0, 0.20, fid_std=0.25),  # fastest: front
            _trial("t-fail", 8, 48, 4, "get", "l2", 410_000, NAN, NAN, status="failed", error=ERROR),
            _trial("t-rule-a", 4, 96, 4, "get", "l2", 420_000, 11.0, 0.50, fid_std=0.25),  # best fid: front
            _trial("t-small", 3, 64, 4, "ta", "l2", 300_000, 15.0, 0.30, fid_std=0.25),  # smallest: front
        ]
    )


def _seeds(candidate, depth, width, heads, fids, *, params, latency, loss="l2", **extra) -> list[dict]:
    """The rows of one candidate trained with seeds 0, 1, ...: one FID each, latency one value or one per seed."""
    latencies = latency if isinstance(latency, list) else [latency] * len(fids)
    return [_trial(f"{candidate}-s{seed}", depth, width, heads, "get", loss, params, fid, lat,
                   candidate_id=candidate, seed=seed, **extra) for seed, (fid, lat) in enumerate(zip(fids, latencies))]


@pytest.fixture
def seeded() -> pd.DataFrame:
    """Three candidates of three seeds each: a is best in FID; b has a's size, and is worse in FID and
    latency on the means but not clearly (tied); c is bigger, slower and clearly worse (dominated)."""
    return pd.DataFrame(
        _seeds("a", 4, 48, 6, [30.0, 31.0, 32.0], params=200_000, latency=[0.10, 0.12, 0.14])
        + _seeds("b", 8, 24, 4, [28.0, 33.0, 38.0], params=200_000, latency=[0.11, 0.13, 0.15])
        + _seeds("c", 2, 64, 8, [50.0, 51.0, 52.0], params=220_000, latency=0.30)
    )



# ---------------------------------------------------------------------------------------------
# compute_report_data


def test_points_front_ties_and_plain_ranks(df):
    data = compute_report_data(df, proposed=PROPOSED)
    assert data.front_ids == ("t-small", "t-rule-a", "t-fast")  # sorted by params
    by_id = {p.candidate_id: p for p in data.points}
    assert set(by_id) == {"t-small", "t-rule-a", "t-rule-b", "t-fast", "t-worse"}  # the failed trial is no point
    assert {i: p.rank for i, p in by_id.items()} == {"t-small": 0, "t-rule-a": 0, "t-fast": 0, "t-rule-b": 1, "t-worse": 2}
    # 11.2 vs 11.0 with SDs 0.25: within noise, so t-rule-b is tied with the front, not dominated
    assert data.tied_ids == ("t-rule-b",) and by_id["t-rule-b"].tied_with == ("t-rule-a",)
    worse = by_id["t-worse"]
    assert worse.front_status == "dominated" and set(worse.dominated_by) == {"t-rule-a", "t-rule-b", "t-fast"}
    assert [p.candidate_id for p in data.points] == ["t-small", "t-rule-a", "t-rule-b", "t-fast", "t-worse"]


def test_seeds_group_into_points_with_intervals(seeded):
    data = compute_report_data(seeded)
    a, b, c = data.points
    assert (a.candidate_id, a.n, a.seeds, a.trial_ids) == ("a", 3, (0, 1, 2), ("a-s0", "a-s1", "a-s2"))
    fid = a.estimates["fid"]
    assert fid.mean == pytest.approx(31.0) and fid.known
    # t interval of the mean of 30, 31, 32: 31 +- t(0.975, 2) * 1 / sqrt(3) = 31 +- 2.484
    assert (fid.low, fid.high) == (pytest.approx(31 - 2.484, abs=1e-3), pytest.approx(31 + 2.484, abs=1e-3))
    assert [p.front_status for p in data.points] == ["front", "tied", "dominated"]
    assert b.tied_with == ("a",) and set(c.dominated_by) == {"a", "b"}
    assert (data.n_complete, len(data.points)) == (9, 3)


def test_proposed_marks_every_point_of_its_architecture(df):
    data = compute_report_data(df, proposed=PROPOSED)
    assert (data.proposed.depth, data.proposed.width, data.proposed.heads) == (4, 96, 4)
    assert data.proposed.params == 420_000 and data.proposed.name == "d4-w96-h4"
    assert data.proposed_ids == ("t-rule-a", "t-rule-b") and data.proposed_matched


def test_proposed_absent_or_untrained(df):
    assert compute_report_data(df).proposed is None
    untrained = compute_report_data(df, proposed={"depth": 6, "width": 80, "heads": 4, "params": 430_000})
    assert untrained.proposed_ids == () and not untrained.proposed_matched
    assert compute_report_data(df, proposed={**PROPOSED, "heads": 6}).proposed_ids == ()


def test_failed_trial_is_listed_not_plotted(df):
    data = compute_report_data(df)
    [failed] = data.unfinished
    assert failed.trial_id == "t-fail" and failed.status == "failed" and failed.error == ERROR
    assert failed.name == "d8-w48-h4" and failed.params == 410_000
    assert (data.n_complete, data.n_failed, data.n_stopped) == (5, 1, 0)


def test_objective_labels_and_provenance(df):
    data = compute_report_data(df, title="digits 0.42M")
    assert data.title == "digits 0.42M"
    assert [(o.name, o.label) for o in data.objectives] == [
        ("params", "params (count)"),
        ("fid", "FID (lower is better)"),
        ("latency_s", "latency (s for 256 images)"),
    ]
    assert data.provenance == ("fid: clf-v1 vs digits:train:1797, 2000 samples", "latency: cpu, batch 64, 256 images")


def test_provenance_lists_each_distinct_setting(df):
    df.loc[df["trial_id"] == "t-fast", "latency_device"] = "cuda:0"
    df["fid_bootstrap"] = 100
    data = compute_report_data(df)
    assert "latency: cpu, batch 64, 256 images" in data.provenance
    assert "latency: cuda:0, batch 64, 256 images" in data.provenance
    assert "fid interval of one trial: bootstrap of its generated samples, 100 resamplings" in data.provenance


def test_an_old_store_without_the_new_columns_says_no_interval(df):
    old = df[["trial_id", "status", "error", "depth", "width", "heads", "setup", "loss", "params", "fid", "latency_s"]]
    data = compute_report_data(old)
    assert data.provenance == () and data.objectives[2].label == "latency (s for N images)"
    assert len(data.points) == 5 and all(p.n == 1 and not p.estimates["fid"].known for p in data.points)
    # rows without a candidate_id group by what they trained; with no FID interval no FID is clearly
    # better or worse than another, so the points off the front of the means are tied, none dominated
    tied = {(p.name, p.setup) for p in data.points if p.tied}
    assert {("d4-w96-h4", "dmd"), ("d5-w96-h6", "get")} <= tied
    assert not any(p.front_status == "dominated" for p in data.points)
    page = render_html(data)
    assert "11.0 (no interval)" in page and "Trials that did not complete" in page


def test_empty_frames():
    for empty in (pd.DataFrame(), pd.DataFrame(columns=["trial_id", "status", "params", "fid", "latency_s"])):
        data = compute_report_data(empty, proposed=PROPOSED)
        assert data.points == () and data.trials == () and data.front_ids == () and data.proposed_ids == ()
        assert (data.n_complete, data.n_failed) == (0, 0) and data.findings == ()


def test_single_trial_is_the_front(df):
    data = compute_report_data(df[df["trial_id"] == "t-worse"])
    assert data.front_ids == ("t-worse",)


def test_user_mistakes_raise_dse_error(df):
    with pytest.raises(DseError, match="heads"):
        compute_report_data(df.drop(columns=["heads"]))
    with pytest.raises(DseError, match="three objectives"):
        compute_report_data(df, objectives=("params", "fid"))
    with pytest.raises(DseError, match="params"):
        compute_report_data(df, proposed={"depth": 4, "width": 96, "heads": 4})


# ---------------------------------------------------------------------------------------------
# render_html

BUNDLE = re.compile(r"<script[^>]*>(?:(?!</script>).)*?plotly\.js v\d(?:(?!</script>).)*</script>", re.S)


@pytest.fixture
def page(df) -> str:
    return render_html(compute_report_data(df, proposed=PROPOSED, title="digits <0.42M>"))


def _plots(page: str) -> list[tuple[list[dict], dict]]:
    """The (traces, layout) of each Plotly.newPlot call in the page."""
    decoder, plots = json.JSONDecoder(), []
    markup = BUNDLE.sub("", page)
    for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', markup):
        traces, end = decoder.raw_decode(markup, call.end())
        layout, _ = decoder.raw_decode(markup, end + re.match(r"\s*,\s*", markup[end:]).end())
        plots.append((traces, layout))
    return plots


def _points_table(page: str) -> str:
    start = page.index("<h2>Points</h2>")
    return page[start : page.index("</table>", start)]


def test_plotly_is_inlined_once_and_there_are_four_plots(page):
    assert len(BUNDLE.findall(page)) == 1
    assert page.count('class="plotly-graph-div"') == 4  # no trial stored a curve: no fifth plot
    assert page.count("Plotly.newPlot(") == 4


def test_page_loads_nothing_from_the_network(page):
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link\b", page)
    outside_bundle = BUNDLE.sub("", page)
    assert "http://" not in outside_bundle and "https://" not in outside_bundle


def test_the_confidence_and_what_tied_means_are_stated_once_at_the_top(page):
    header = page[page.index("<header>") : page.index("</header>")]
    assert "95% confidence interval" in header and "tied with the front" in header
    assert page.count('class="confidence"') == 1


def test_table_has_one_line_per_point_with_interval_status_and_plain_rank(page):
    table = _points_table(page)
    rows = re.findall(r'<tr class="([^"]*)"><td class="id">([^<]*)</td>', table)
    assert [i for _, i in rows] == ["t-small", "t-rule-a", "t-rule-b", "t-fast", "t-worse"]
    assert [i for c, i in rows if "front" in c.split()] == ["t-small", "t-rule-a", "t-fast"]
    assert [i for c, i in rows if "tied" in c.split()] == ["t-rule-b"]
    # FID 11.0 +- 1.96 * 0.25 (one seed, its bootstrap SD); the latency of one row is exact
    assert '<td class="num">420,000</td><td class="num">11.0 [10.5, 11.5]</td><td class="num">0.500</td>' in table
    row = lambda i: table[table.index(f">{i}<") :].split("</tr>")[0]  # noqa: E731
    assert '<td class="status">tied with d4-w96-h4 get·l2</td><td class="num">1</td>' in row("t-rule-b")
    assert '<td class="status">dominated by ' in row("t-worse") and '<td class="num">2</td>' in row("t-worse")
    assert '<td class="status">front</td><td class="num">0</td>' in row("t-small")
    assert "<td>get</td><td>l2</td><td>get-l2</td>" in row("t-rule-a")  # setup, loss, variant
    assert '<td class="num">600</td><td class="num">1.5</td><td class="num">1</td><td>0</td>' in row("t-rule-a")


def test_seeded_points_show_n_seeds_intervals_and_error_bars(seeded):
    seeded["label_agreement"] = 0.9
    seeded["still_improving"] = [True, True, False] * 3
    page = render_html(compute_report_data(seeded))
    table = _points_table(page)
    row = table[table.index('<td class="id">a</td>') :].split("</tr>")[0]
    assert '<td class="num">3</td><td>0, 1, 2</td>' in row and '<td class="num">31.0 [28.5, 33.5]</td>' in row
    assert '<td class="num">0.90</td><td>2 of 3 seeds</td>' in row
    assert "6 of 9 trials were still improving when training stopped" in page  # dse.convergence's warning
    for traces, _ in _plots(page)[1:2]:  # params vs FID
        by_name = {t["name"]: t for t in traces}
        front = by_name["Pareto front"]
        assert front["error_y"]["array"] == [pytest.approx(2.484, abs=1e-3)]
        assert front["error_y"]["arrayminus"] == [pytest.approx(2.484, abs=1e-3)] and front["error_y"]["symmetric"] is False
        assert "error_x" not in front  # params is exact
        tied = by_name[TIED_LEGEND]
        assert tied["marker"]["symbol"] != front["marker"]["symbol"] and len(tied["x"]) == 1
        assert "tied with d4-w48-h6 · plain rank 1" in tied["hovertext"][0]


def test_error_text_and_title_are_escaped(page):
    assert "<script>alert(" not in page
    assert html.escape(ERROR) in page
    assert "digits <0.42M>" not in page and "digits &lt;0.42M&gt;" in page


def test_ids_and_names_are_escaped(df):
    df.loc[df["trial_id"] == "t-small", ["trial_id", "candidate_id", "setup"]] = ["t&<small>", "t&<small>", "get<i>"]
    page = render_html(compute_report_data(df))
    assert "t&<small>" not in page and "get<i>" not in page
    assert '<td class="id">t&amp;&lt;small&gt;</td>' in page and "<td>get&lt;i&gt;</td>" in page


def test_plots_show_front_tied_design_rule_and_hover_names(page):
    plots = _plots(page)
    assert len(plots) == 4
    for traces, _ in plots:
        by_name = {t["name"]: t for t in traces}
        assert set(by_name) == {"other points", TIED_LEGEND, "Pareto front", "design rule"}
        assert by_name["Pareto front"]["marker"]["symbol"] != by_name["other points"]["marker"]["symbol"]
        assert by_name[TIED_LEGEND]["marker"]["symbol"] != by_name["Pareto front"]["marker"]["symbol"]
        assert len(by_name["Pareto front"]["hovertext"]) == 3 and len(by_name["other points"]["hovertext"]) == 1
        rule = by_name["design rule"]
        assert "design rule" in rule["text"]
        assert [h.split("<br>")[0] for h in rule["hovertext"]] == ["<b>d4-w96-h4</b>  get·l2", "<b>d4-w96-h4</b>  dmd·l1"]
    scatter3d, params_fd, params_latency, latency_fd = plots
    front = {t["name"]: t for t in params_fd[0]}["Pareto front"]
    assert sorted(zip(front["x"], front["y"])) == [(300_000, 15.0), (420_000, 11.0), (450_000, 13.0)]
    assert front["error_y"]["array"] == [pytest.approx(1.96 * 0.25, abs=1e-3)] * 3
    front3d = {t["name"]: t for t in scatter3d[0]}["Pareto front"]
    assert sorted(zip(front3d["x"], front3d["y"], front3d["z"])) == [
        (300_000, 15.0, 0.3), (420_000, 11.0, 0.5), (450_000, 13.0, 0.2),
    ]
    assert scatter3d[0][0]["type"] == "scatter3d" and "error_y" in front3d
    axis_titles = [
        [scatter3d[1]["scene"][f"{k}axis"]["title"]["text"] for k in "xyz"],
        *([layout[f"{k}axis"]["title"]["text"] for k in "xy"] for _, layout in (params_fd, params_latency, latency_fd)),
    ]
    params, fd, latency = "params (count)", "FID (lower is better)", "latency (s for 256 images)"
    assert axis_titles == [[params, fd, latency], [params, fd], [params, latency], [latency, fd]]


def test_header_gives_counts_design_rule_and_provenance(page):
    assert "6 trials: 5 complete, 1 failed · 5 points" in page
    assert "3 on the Pareto front of params, FID, latency (all minimised), 1 tied with it" in page
    assert "d4-w96-h4, 420,000 params; trained as t-rule-a, t-rule-b" in page
    assert "fid: clf-v1 vs digits:train:1797, 2000 samples" in page


def test_untrained_design_rule_is_named_and_drawn_at_its_params(df):
    page = render_html(compute_report_data(df, proposed={"depth": 6, "width": 80, "heads": 4, "params": 430_000}))
    assert "d6-w80-h4, 430,000 params; not among the trials" in page
    plots = _plots(page)
    assert not any(t["name"] == "design rule" for traces, _ in plots for t in traces)
    notes = [[a["text"] for a in layout.get("annotations", ())] for _, layout in plots]
    assert ["design rule (not trained)" in texts for texts in notes] == [False, True, True, False]


def test_failed_and_stopped_rows_only_render_a_note_and_their_errors(df):
    rows = df[df["status"] == "failed"].copy()
    stopped = rows.assign(trial_id="t-stop", status="stopped", error=None)
    page = render_html(compute_report_data(pd.concat([rows, stopped])))
    assert "nothing to plot" in page and "No trial completed: no points yet" in page
    assert "plotly-graph-div" not in page and not BUNDLE.search(page)
    assert "Trials that did not complete" in page and ">t-fail<" in page and ">t-stop<" in page
    assert html.escape(ERROR) in page and "1 failed, 1 stopped" in page


def test_empty_report_renders():
    page = render_html(compute_report_data(pd.DataFrame(), title="empty study"))
    assert "No trials in the results yet" in page and "empty study" in page
    assert "plotly-graph-div" not in page


def test_training_curves_are_one_log_scale_plot(df):
    df["loss_curve"] = None
    df.loc[df["trial_id"] == "t-rule-a", "loss_curve"] = "[[0, 1.0], [50, 0.4], [100, 0.2]]"
    df.loc[df["trial_id"] == "t-fail", "loss_curve"] = "[[0, 1.0], [50, 2.0]]"  # a failed trial's curve is shown too
    df.loc[df["trial_id"] == "t-fast", "loss_curve"] = "garbage"
    page = render_html(compute_report_data(df))
    traces, layout = _plots(page)[4]
    assert layout["yaxis"]["type"] == "log" and layout["xaxis"]["title"]["text"] == "step"
    assert sorted((t["hovertext"], t["x"], t["y"]) for t in traces) == [
        ("t-fail", [0, 50], [1.0, 2.0]), ("t-rule-a", [0, 50, 100], [1.0, 0.4, 0.2]),
    ]
    assert len(BUNDLE.findall(page)) == 1


def test_curves_alone_still_inline_plotly(df):
    rows = df[df["status"] == "failed"].assign(loss_curve="[[0, 1.0], [10, 0.5]]")
    page = render_html(compute_report_data(rows))
    assert len(BUNDLE.findall(page)) == 1 and page.count("Plotly.newPlot(") == 1


def test_findings_are_a_section_of_the_report(seeded):
    rows = pd.DataFrame(
        _seeds("l", 4, 48, 6, [18.0, 18.5, 19.0], params=200_000, latency=0.1, loss="lpips")
        + _seeds("m", 4, 48, 6, [42.0, 42.5, 43.0], params=200_000, latency=0.1, loss="l2")
    )
    page = render_html(compute_report_data(rows))
    section = page[page.index("<h2>Findings") :]
    assert '<td class="verdict holds">holds</td>' in section and "<b>losses</b>" in section
    assert "lpips &lt; l2: holds" in section and "paper Table 1" in section
    assert "None of the paper's principles can be checked" in render_html(compute_report_data(seeded.iloc[:3]))


# ---------------------------------------------------------------------------------------------
# sample grids


def test_display_width_makes_each_sample_at_least_32_pixels():
    assert display_width((102, 102), rows=10) == 408  # 10 rows of 8x8 plus 2-pixel gaps: cells ~10 px -> 4x
    assert display_width((340, 340), rows=10) == 340  # already 34 px a cell
    assert display_width(None, rows=10) is None


def test_png_size_reads_the_header(tmp_path):
    pic = spaced_grid(__import__("numpy").zeros((80, 48, 1), "uint8"), 8, gap=2)
    path = save_png(tmp_path / "g.png", pic)
    assert png_size(path.read_bytes()) == (pic.shape[1], pic.shape[0]) and png_size(b"\x89PNG") is None


def test_sample_grids_are_shown_large_pixelated_and_a_missing_one_is_a_dash(df, tmp_path):
    import base64

    import numpy as np

    grid = spaced_grid(np.random.default_rng(0).integers(0, 255, (80, 48, 1), dtype=np.uint8), 8, gap=2)
    png = save_png(tmp_path / "samples.png", grid)  # 10 classes x 6 columns of 8x8, unscaled
    df["samples_png"] = None
    df.loc[df["trial_id"] == "t-small", "samples_png"] = str(png)
    df.loc[df["trial_id"] == "t-fast", "samples_png"] = str(tmp_path / "gone.png")
    df["num_classes"] = 10
    page = render_html(compute_report_data(df, proposed=PROPOSED))
    imgs = re.findall(r'<img class="samples"[^>]*style="width: (\d+)px"[^>]* src="data:image/png;base64,([^"]+)"', page)
    assert [(int(w), base64.b64decode(u)) for w, u in imgs] == [(grid.shape[1] * 4, png.read_bytes())]
    assert "image-rendering: pixelated" in page
    table = _points_table(page)
    assert table.count('<a href="#samples-t-small">grid</a>') == 1 and 'id="samples-t-small"' in page


def test_a_row_naming_a_file_that_is_not_a_png_inlines_nothing(df, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a private file a tampered row points at")
    df["samples_png"] = None
    df.loc[df.index[0], "samples_png"] = str(secret)
    page = render_html(compute_report_data(df, proposed=PROPOSED))
    assert '<img class="samples"' not in page and "a tampered row points at" not in page


# ---------------------------------------------------------------------------------------------
# write_report


def test_write_report_creates_folders_and_leaves_no_temporary_file(df, tmp_path):
    path = tmp_path / "reports" / "study" / "report.html"
    written = write_report(df, path, proposed=PROPOSED, title="study")
    assert written == path
    assert os.listdir(path.parent) == ["report.html"]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and ">t-rule-a<" in text
    assert path.stat().st_mode & 0o444 == 0o444  # readable by everyone, like any other output


def test_write_report_replaces_atomically(df, tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("old report")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("dse.report.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(df, path)
    assert path.read_text() == "old report"  # never half-written
    assert os.listdir(tmp_path) == ["report.html"]  # the temporary file is gone

    monkeypatch.undo()
    write_report(df, str(path))
    assert ">t-small<" in path.read_text(encoding="utf-8")


def test_write_report_of_an_empty_store_frame(tmp_path):
    from dse.store import schema

    path = write_report(schema().empty_table().to_pandas(), tmp_path / "empty.html")
    assert "No trials in the results yet" in path.read_text(encoding="utf-8")


def test_importing_the_modules_loads_no_heavy_library():
    code = ("import sys, dse.report, dse.pareto, dse.findings, dse.stats; "
            "print(sorted({'plotly', 'pandas', 'torch', 'ray', 'scipy'} & set(sys.modules)))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# latency first: constraints, candidates outside them, contended latencies

CONSTRAINTS = {"max_params": 450_000, "max_latency": "2ms", "max_latency_per_image_s": 0.002}
EXCLUDED = [
    {"depth": 8, "width": 128, "heads": 8, "params": 900_000, "latency_s": 1.2, "latency_per_image_ms": 4.6875,
     "latency_num_images": 256, "reason": "over max params 450k and max latency 2ms/image"},
    {"depth": 6, "width": 96, "heads": 6, "params": 440_000, "latency_s": 0.8, "latency_per_image_ms": 3.125,
     "latency_num_images": 256, "reason": "over max latency 2ms/image"},
]


def _lines(layout: dict) -> list[tuple[str, float, str]]:
    """The constraint lines of a 2-D plot's layout: (axis, position, dash)."""
    out = []
    for s in layout.get("shapes", ()):
        if s.get("x0") == s.get("x1") and s.get("xref") == "x":
            out.append(("x", s["x0"], s["line"]["dash"]))
        elif s.get("y0") == s.get("y1") and s.get("yref") == "y":
            out.append(("y", s["y0"], s["line"]["dash"]))
    return out


def _notes(layout: dict) -> list[str]:
    return [a["text"] for a in layout.get("annotations", ())]


def test_constraints_are_dashed_lines_at_their_values_on_each_params_or_latency_axis(df):
    page = render_html(compute_report_data(df, constraints=CONSTRAINTS, excluded=EXCLUDED))
    scatter3d, params_fd, params_latency, latency_fd = _plots(page)
    # 2 ms per image on an axis of seconds for 256 images: 0.002 * 256 = 0.512 s
    assert _lines(params_fd[1]) == [("x", 450_000, "dash")] and _notes(params_fd[1]) == ["max params 450k"]
    assert sorted(_lines(params_latency[1])) == [("x", 450_000, "dash"), ("y", pytest.approx(0.512), "dash")]
    assert sorted(_notes(params_latency[1])) == ["max latency 2ms/image", "max params 450k"]
    assert _lines(latency_fd[1]) == [("x", pytest.approx(0.512), "dash")]
    assert _notes(latency_fd[1]) == ["max latency 2ms/image"]
    assert not scatter3d[1].get("shapes")  # a 3-D scene has no lines to draw
    assert "constraints: max params 450k, max latency 2ms/image (2 candidates outside, not trained)" in page
    # without constraints: no line
    assert all(not _lines(layout) for _, layout in _plots(render_html(compute_report_data(df)))[1:])


def test_a_latency_limit_per_n_images_and_a_per_image_axis(df):
    # 30 s for 50000 images = 0.6 ms per image: 0.1536 s for the axis' 256 images
    data = compute_report_data(df, constraints={"max_latency": "30s/50000"})
    assert data.constraints.max_latency_per_image_s == pytest.approx(0.0006)  # parsed from the text alone
    assert data.limit("latency_s") == pytest.approx(0.1536) and data.limit("params") is None
    _, _, params_latency, _ = _plots(render_html(data))
    assert _lines(params_latency[1]) == [("y", pytest.approx(0.1536), "dash")]
    assert _notes(params_latency[1]) == ["max latency 30s/50000"]
    # an axis of ms per image: the limit in ms
    df["latency_per_image_ms"] = df["latency_s"] * 1000 / 256
    per_image = compute_report_data(df, objectives=("params", "fid", "latency_per_image_ms"), constraints=CONSTRAINTS)
    assert per_image.objectives[2].label == "latency (ms per image)" and per_image.limit("latency_per_image_ms") == 2.0
    _, _, params_latency, _ = _plots(render_html(per_image))
    assert ("y", 2.0, "dash") in _lines(params_latency[1])


def test_candidates_outside_the_constraints_are_a_table_and_grey_crosses(df):
    page = render_html(compute_report_data(df, constraints=CONSTRAINTS, excluded=EXCLUDED))
    section = page[page.index("<h2>Outside the constraints (not trained)</h2>"):]
    section = section[: section.index("</table>")]
    rows = re.findall(r"<tr><td class=\"arch\">([^<]*)</td>(.*?)</tr>", section)
    assert [name for name, _ in rows] == ["d8-w128-h8", "d6-w96-h6"]
    assert ('<td class="num">900,000</td><td class="num">1.2</td><td class="num">4.688</td>'
            "<td>over max params 450k and max latency 2ms/image</td>") == rows[0][1]
    assert "latency (s for 256 images)" in section and "Grey crosses on the params-latency plot" in section
    _, params_fd, params_latency, latency_fd = _plots(page)
    crosses = {t["name"]: t for t in params_latency[0]}["outside the constraints (not trained)"]
    assert (crosses["x"], crosses["y"], crosses["marker"]["symbol"]) == ([900_000, 440_000], [1.2, 0.8], "x")
    assert "over max latency 2ms/image" in crosses["hovertext"][1]
    # they have no FID: on no plot with an FID axis
    for traces, _ in (params_fd, latency_fd):
        assert "outside the constraints (not trained)" not in {t["name"] for t in traces}
    assert "Outside the constraints" not in render_html(compute_report_data(df, constraints=CONSTRAINTS))


def _latency_rows() -> pd.DataFrame:
    """Two candidates with one latency measurement each (its SD, p90, whether it was cached) and one
    whose latency stayed contended: it would beat both on every objective."""
    common = {"latency_num_images": 256, "fid_std": 0.25}
    return pd.DataFrame(
        _seeds("a", 4, 48, 6, [30.0, 31.0, 32.0], params=200_000, latency=0.50, latency_s_std=0.01,
               latency_p90_s=0.52, latency_cached=True, latency_key="ka", **common)
        + _seeds("b", 2, 64, 8, [20.0], params=300_000, latency=0.30, latency_s_std=0.01, latency_p90_s=0.31,
                 latency_cached=False, latency_key="kb", **common)
        + _seeds("c", 2, 32, 4, [10.0], params=100_000, latency=0.10, latency_s_std=0.05, latency_contended=True,
                 latency_key="kc", **common)
    )


def test_a_contended_latency_is_not_ranked_and_the_page_says_how_to_fix_it():
    data = compute_report_data(_latency_rows())
    by_id = {p.candidate_id: p for p in data.points}
    c = by_id["c"]
    assert c.latency_contended and c.front_status is None and c.rank is None
    assert data.contended == (c,) and set(data.front_ids) == {"a", "b"}  # c would dominate both if ranked
    page = render_html(data)
    header = page[page.index("<header>") : page.index("</header>")]
    assert "1 point had a contended latency" in header and "not ranked: d2-w32-h4" in header
    assert "re-run `dse run` on a quiet machine; dse re-measures latencies it could not trust" in header
    table = _points_table(page)
    row = table[table.index('<td class="id">c</td>') :].split("</tr>")[0]
    assert '<td class="status">latency contended: not ranked</td><td class="num">–</td>' in row
    assert all("<b>d2-w32-h4</b>" not in h for traces, _ in _plots(page) for t in traces for h in t["hovertext"])
    assert "contended latency" not in render_html(compute_report_data(_latency_rows().query("candidate_id != 'c'")))


def test_latency_shows_its_interval_p90_and_whether_it_was_cached():
    page = render_html(compute_report_data(_latency_rows()))
    table = _points_table(page)
    row = lambda i: table[table.index(f'<td class="id">{i}</td>') :].split("</tr>")[0]  # noqa: E731
    # three seeds share one measurement: its interval is that of one measurement, 0.50 +- 1.96 * 0.01
    assert ('<td class="num">0.500 [0.480, 0.520]<br><span class="sub">latency p90 0.520 s · from the cache</span>'
            in row("a"))
    assert "latency p90 0.310 s · measured in this study" in row("b")
    _, params_fd, params_latency, _ = _plots(page)
    front = {t["name"]: t for t in params_latency[0]}["Pareto front"]
    hover = dict(zip(front["x"], front["hovertext"]))
    assert "latency: 0.500 [0.480, 0.520]" in hover[200_000]
    assert "latency p90 0.520 s · from the cache" in hover[200_000]
    assert front["error_y"]["array"] == [pytest.approx(1.959964 * 0.01, rel=1e-4)] * 2  # latency has error bars now


def test_bad_constraints_and_excluded_candidates_are_dse_errors(df):
    for bad, words in [({"max_params": -5}, "max_params"), ({"max_latency": "fast"}, "max_latency"),
                       ({"max_latency_per_image_s": "2ms"}, "max_latency_per_image_s"), ({"max_flops": 1}, "max_flops"),
                       ("2ms", "mapping")]:
        with pytest.raises(DseError, match=words):
            compute_report_data(df, constraints=bad)
    with pytest.raises(DseError, match="depth, width and heads"):
        compute_report_data(df, excluded=[{"depth": 2, "params": 1}])
    assert compute_report_data(df, constraints={"max_params": None, "max_latency": ""}).constraints is None


def test_write_report_passes_constraints_and_excluded(df, tmp_path):
    path = write_report(df, tmp_path / "r.html", constraints=CONSTRAINTS, excluded=EXCLUDED[:1])
    text = path.read_text(encoding="utf-8")
    assert "Outside the constraints (not trained)" in text and ">d8-w128-h8<" in text
    assert "(1 candidate outside, not trained)" in text
