"""Tests for dse.report: the computed ReportData, the offline HTML page, and the atomic write."""

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
from dse.report import compute_report_data, render_html, write_report

NAN = float("nan")
ERROR = "RuntimeError: loss is NaN <script>alert('x')</script>"
PROPOSED = {"depth": 4, "width": 96, "heads": 4, "params": 420_000}


def _trial(trial_id, depth, width, heads, setup, loss, params, fd, latency_s, status="complete", error=None):
    complete = status == "complete"
    return {
        "trial_id": trial_id,
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
    }


@pytest.fixture
def df() -> pd.DataFrame:
    """Six trials, fronts worked out by hand over (params, fd, latency_s)."""
    return pd.DataFrame(
        [
            _trial("t-worse", 5, 96, 6, "get", "lpips", 480_000, 14.0, 0.60),  # dominated by t-rule-b -> rank 2
            _trial("t-rule-b", 4, 96, 4, "dmd", "l1", 420_000, 12.0, 0.50),  # dominated by t-rule-a -> rank 1
            _trial("t-fast", 2, 128, 8, "mi1", "l2", 450_000, 13.0, 0.20),  # fastest: front
            _trial("t-fail", 8, 48, 4, "get", "l2", 410_000, NAN, NAN, status="failed", error=ERROR),
            _trial("t-rule-a", 4, 96, 4, "get", "l2", 420_000, 11.0, 0.50),  # best fd: front
            _trial("t-small", 3, 64, 4, "ta", "l2", 300_000, 15.0, 0.30),  # smallest: front
        ]
    )


# ---------------------------------------------------------------------------------------------
# compute_report_data


def test_front_ranks_and_order(df):
    data = compute_report_data(df, proposed=PROPOSED)
    assert data.front_ids == ("t-small", "t-rule-a", "t-fast")  # sorted by params
    by_id = {t.trial_id: t for t in data.trials}
    assert {i: t.rank for i, t in by_id.items()} == {
        "t-small": 0,
        "t-rule-a": 0,
        "t-fast": 0,
        "t-rule-b": 1,
        "t-worse": 2,
        "t-fail": None,
    }
    assert [t.trial_id for t in data.trials] == ["t-small", "t-fail", "t-rule-a", "t-rule-b", "t-fast", "t-worse"]
    assert [t.on_front for t in data.trials] == [True, False, True, False, True, False]


def test_proposed_marks_every_trial_of_its_architecture(df):
    data = compute_report_data(df, proposed=PROPOSED)
    assert (data.proposed.depth, data.proposed.width, data.proposed.heads) == (4, 96, 4)
    assert data.proposed.params == 420_000 and data.proposed.name == "d4-w96-h4"
    assert data.proposed_ids == ("t-rule-a", "t-rule-b")
    assert data.proposed_matched
    assert [t.trial_id for t in data.trials if t.is_proposed] == ["t-rule-a", "t-rule-b"]


def test_proposed_absent_or_untrained(df):
    assert compute_report_data(df).proposed is None
    untrained = compute_report_data(df, proposed={"depth": 6, "width": 80, "heads": 4, "params": 430_000})
    assert untrained.proposed_ids == () and not untrained.proposed_matched
    assert not any(t.is_proposed for t in untrained.trials)
    other_heads = compute_report_data(df, proposed={**PROPOSED, "heads": 6})  # depth and width match t-rule-*
    assert other_heads.proposed_ids == ()


def test_failed_trial_record(df):
    data = compute_report_data(df)
    failed = next(t for t in data.trials if t.trial_id == "t-fail")
    assert failed.status == "failed" and failed.error == ERROR
    assert failed.values == {"params": 410_000, "fid": None, "latency_s": None}
    assert failed.params == 410_000 and failed.name == "d8-w48-h4"
    assert (data.n_complete, data.n_failed) == (5, 1)


def test_record_fields(df):
    rule_a = next(t for t in compute_report_data(df).trials if t.trial_id == "t-rule-a")
    assert (rule_a.depth, rule_a.width, rule_a.heads, rule_a.setup, rule_a.loss) == (4, 96, 4, "get", "l2")
    assert rule_a.values == {"params": 420_000, "fid": 11.0, "latency_s": 0.5}
    assert rule_a.error is None


def test_objective_labels_and_provenance(df):
    data = compute_report_data(df, title="digits 0.42M")
    assert data.title == "digits 0.42M"
    assert [(o.name, o.label) for o in data.objectives] == [
        ("params", "params (count)"),
        ("fid", "FID (lower is better)"),
        ("latency_s", "latency (s for 256 images)"),
    ]
    # The failed row leaves the count columns empty (float); the lines still print whole numbers.
    assert data.provenance == ("fid: clf-v1 vs digits:train:1797, 2000 samples", "latency: cpu, batch 64, 256 images")


def test_provenance_lists_each_distinct_setting(df):
    df.loc[df["trial_id"] == "t-fast", "latency_device"] = "cuda:0"
    data = compute_report_data(df)
    assert "latency: cpu, batch 64, 256 images" in data.provenance
    assert "latency: cuda:0, batch 64, 256 images" in data.provenance


def test_missing_provenance_columns_give_no_lines(df):
    data = compute_report_data(df[["trial_id", "status", "depth", "width", "heads", "params", "fid", "latency_s"]])
    assert data.provenance == ()
    assert data.objectives[2].label == "latency (s for N images)"


def test_empty_frames():
    for empty in (pd.DataFrame(), pd.DataFrame(columns=["trial_id", "status", "params", "fid", "latency_s"])):
        data = compute_report_data(empty, proposed=PROPOSED)
        assert data.trials == () and data.front_ids == () and data.proposed_ids == ()
        assert (data.n_complete, data.n_failed) == (0, 0)


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


def test_plotly_is_inlined_once_and_there_are_four_plots(page):
    assert len(BUNDLE.findall(page)) == 1
    assert page.count('class="plotly-graph-div"') == 4
    assert page.count("Plotly.newPlot(") == 4


def test_page_loads_nothing_from_the_network(page):
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link\b", page)
    # The inlined bundle mentions URLs in strings it never fetches for scatter plots; the rest of the
    # page (markup, styles, plot data and calls) must name none.
    outside_bundle = BUNDLE.sub("", page)
    assert "http://" not in outside_bundle and "https://" not in outside_bundle


def test_table_lists_every_trial_sorted_by_params_with_front_rows_marked(page):
    table = page[page.index("<table") :]
    rows = re.findall(r'<tr class="([^"]*)"><td class="id">([^<]*)</td>', table)
    assert [trial_id for _, trial_id in rows] == ["t-small", "t-fail", "t-rule-a", "t-rule-b", "t-fast", "t-worse"]
    assert [trial_id for classes, trial_id in rows if "front" in classes.split()] == ["t-small", "t-rule-a", "t-fast"]
    assert [trial_id for classes, trial_id in rows if "failed" in classes.split()] == ["t-fail"]
    # Counts with separators; each metric column with the decimals that give its smallest value 3 digits.
    assert '<td class="num">420,000</td><td class="num">11.0</td><td class="num">0.500</td>' in table
    assert '<td class="num">410,000</td><td class="num">–</td><td class="num">–</td>' in table  # failed


def test_error_text_and_title_are_escaped(page):
    assert "<script>alert(" not in page
    assert html.escape(ERROR) in page
    assert "digits <0.42M>" not in page and "digits &lt;0.42M&gt;" in page


def _plots(page: str) -> list[tuple[list[dict], dict]]:
    """The (traces, layout) of each Plotly.newPlot call in the page."""
    decoder, plots = json.JSONDecoder(), []
    markup = BUNDLE.sub("", page)
    for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', markup):
        traces, end = decoder.raw_decode(markup, call.end())
        layout, _ = decoder.raw_decode(markup, end + re.match(r"\s*,\s*", markup[end:]).end())
        plots.append((traces, layout))
    return plots


def test_trial_ids_and_names_are_escaped(df):
    df.loc[df["trial_id"] == "t-small", ["trial_id", "setup"]] = ["t&<small>", "get<i>"]
    page = render_html(compute_report_data(df))
    assert "t&<small>" not in page and "get<i>" not in page
    assert '<td class="id">t&amp;&lt;small&gt;</td>' in page and "<td>get&lt;i&gt;</td>" in page


def test_plots_show_front_design_rule_and_hover_names(page):
    plots = _plots(page)
    assert len(plots) == 4
    for traces, _ in plots:
        by_name = {t["name"]: t for t in traces}
        assert set(by_name) == {"other trials", "Pareto front", "design rule"}
        assert by_name["Pareto front"]["marker"]["symbol"] != by_name["other trials"]["marker"]["symbol"]
        assert by_name["Pareto front"]["marker"]["color"] != by_name["other trials"]["marker"]["color"]
        assert len(by_name["Pareto front"]["hovertext"]) == 3 and len(by_name["other trials"]["hovertext"]) == 2
        rule = by_name["design rule"]
        assert "design rule" in rule["text"]
        assert [h.split("<br>")[:2] for h in rule["hovertext"]] == [
            ["<b>d4-w96-h4</b>  get · l2", "t-rule-a"],
            ["<b>d4-w96-h4</b>  dmd · l1", "t-rule-b"],
        ]
    scatter3d, params_fd, params_latency, latency_fd = plots
    front = {t["name"]: t for t in params_fd[0]}["Pareto front"]
    assert sorted(zip(front["x"], front["y"])) == [(300_000, 15.0), (420_000, 11.0), (450_000, 13.0)]
    front = {t["name"]: t for t in scatter3d[0]}["Pareto front"]
    assert sorted(zip(front["x"], front["y"], front["z"])) == [
        (300_000, 15.0, 0.3),
        (420_000, 11.0, 0.5),
        (450_000, 13.0, 0.2),
    ]
    assert scatter3d[0][0]["type"] == "scatter3d"
    axis_titles = [
        [scatter3d[1]["scene"][f"{k}axis"]["title"]["text"] for k in "xyz"],
        *([layout[f"{k}axis"]["title"]["text"] for k in "xy"] for _, layout in (params_fd, params_latency, latency_fd)),
    ]
    params, fd, latency = "params (count)", "FID (lower is better)", "latency (s for 256 images)"
    assert axis_titles == [[params, fd, latency], [params, fd], [params, latency], [latency, fd]]


def test_header_gives_counts_design_rule_and_provenance(page):
    assert "6 trials: 5 complete, 1 failed · 3 on the Pareto front" in page
    assert "d4-w96-h4, 420,000 params; trained as t-rule-a, t-rule-b" in page
    assert "fid: clf-v1 vs digits:train:1797, 2000 samples" in page


def test_untrained_design_rule_is_named_and_drawn_at_its_params(df):
    page = render_html(compute_report_data(df, proposed={"depth": 6, "width": 80, "heads": 4, "params": 430_000}))
    assert "d6-w80-h4, 430,000 params; not among the trials" in page
    plots = _plots(page)
    assert not any(t["name"] == "design rule" for traces, _ in plots for t in traces)
    notes = [[a["text"] for a in layout.get("annotations", ())] for _, layout in plots]
    marked = ["design rule (not trained)" in texts for texts in notes]
    assert marked == [False, True, True, False]  # the two 2-D plots with a params axis


def test_no_complete_trial_renders_a_note_and_the_table(df):
    page = render_html(compute_report_data(df[df["status"] == "failed"]))
    assert "nothing to plot" in page
    assert "plotly-graph-div" not in page and not BUNDLE.search(page)
    assert ">t-fail<" in page and html.escape(ERROR) in page


def test_empty_report_renders():
    page = render_html(compute_report_data(pd.DataFrame(), title="empty study"))
    assert "No trials in the results yet" in page and "empty study" in page
    assert "plotly-graph-div" not in page


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


def test_write_report_of_an_empty_frame(tmp_path):
    path = write_report(pd.DataFrame(), tmp_path / "empty.html")
    assert "No trials in the results yet" in path.read_text(encoding="utf-8")


def test_importing_the_modules_loads_no_heavy_library():
    code = "import sys, dse.report, dse.pareto; print(sorted({'plotly', 'pandas', 'torch', 'ray'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sample_grids_are_inlined_and_a_missing_one_is_a_dash(df, tmp_path):
    import base64

    png = tmp_path / "samples.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot-really-an-image")
    df = df.copy()
    df["samples_png"] = None
    df.loc[df.index[0], "samples_png"] = str(png)
    df.loc[df.index[1], "samples_png"] = str(tmp_path / "gone.png")
    page = render_html(compute_report_data(df, proposed=PROPOSED))
    uris = re.findall(r'<img class="samples"[^>]* src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(u) for u in uris] == [png.read_bytes()]  # only the grid that exists, unchanged
    rows = re.findall(r"<tr class=[^>]*>(.*?)</tr>", page, re.S)
    assert len(rows) == len(df) and sum("data:image/png" in r for r in rows) == 1


def test_a_row_naming_a_file_that_is_not_a_png_inlines_nothing(df, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a private file a tampered row points at")
    df = df.copy()
    df["samples_png"] = None
    df.loc[df.index[0], "samples_png"] = str(secret)
    page = render_html(compute_report_data(df, proposed=PROPOSED))
    assert "<img class=\"samples\"" not in page and "a tampered row points at" not in page
