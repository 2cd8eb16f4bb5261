import io
import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dse.errors import DseError
from dse.query import DEFAULT_COLUMNS, format_table, query, study_results
from dse.store import COLUMN_NAMES, ResultsStore

BEST_UNDER_2MS = ("SELECT trial_id, fid, latency_per_image_ms FROM trials "
                  "WHERE status='complete' AND latency_per_image_ms < 2 ORDER BY fid LIMIT 1")
PARETO_POINTS = "SELECT study, trial_id, params, fid, latency_s FROM pareto ORDER BY study, params"
PARETO_EXTRA = ["pareto_rank", "front_status", "tied_with", "n", "fid_low", "fid_high", "latency_s_low",
                "latency_s_high"]
COUNTS = "SELECT study, status, count(*) AS n FROM trials GROUP BY study, status ORDER BY study, status"


def _row(tid, params=None, fid=None, latency_s=None, status="complete", **kw):
    per_image_ms = None if latency_s is None else latency_s * 100  # as if timed over 1000 images at batch 10
    return {"trial_id": tid, "status": status, "depth": 2, "width": 64, "heads": 2, "params": params, "fid": fid,
            "latency_s": latency_s, "latency_per_image_ms": per_image_ms,
            "fid_std": None if fid is None else 0.2, **kw}  # a precise FID: 1 apart is a clear difference


# (trial, params, fid, latency_s): latency_per_image_ms = 100 * latency_s.
ALPHA = [
    ("a1", 100_000, 30.0, 0.010),  # front: the smallest and fastest
    ("a2", 200_000, 20.0, 0.015),  # front in alpha; beta's b2 dominates it, so a global front would drop it
    ("a3", 300_000, 10.0, 0.030),  # front: alpha's best FID, but 3 ms per image
    ("a4", 250_000, 25.0, 0.020),  # dominated by a2
]
BETA = [
    ("b1", 150_000, 5.0, 0.050),   # front: the best FID of all, 5 ms per image
    ("b2", 120_000, 18.0, 0.012),  # front: the best FID under 2 ms per image (1.2 ms)
    ("b3", 160_000, 6.0, 0.060),   # dominated by b1
    ("b4", 130_000, None, 0.001),  # no FID: on no front, however fast
]


@pytest.fixture
def results(tmp_path):
    """Two studies of five trials each (one failed), and a study that has not finished a trial yet."""
    root = tmp_path / "results"
    for study, rows in (("alpha", ALPHA), ("beta", BETA)):
        store = ResultsStore(root / study / "trials")
        for tid, params, fid, latency_s in rows:
            store.write(_row(tid, params, fid, latency_s, setup="GET", loss="l2"))
        store.write(_row(study[0] + "9", status="failed", error="CUDA out of memory\nat step 3"))
    (root / "gamma").mkdir()
    (root / "gamma" / "study.json").write_text("{}")
    return root


def test_the_best_fid_under_2_ms_per_image_is_the_one_designed(results):
    df = query(BEST_UNDER_2MS, results)
    assert df.to_dict("records") == [{"trial_id": "b2", "fid": 18.0, "latency_per_image_ms": pytest.approx(1.2)}]
    assert query("SELECT trial_id FROM trials ORDER BY fid LIMIT 1", results)["trial_id"].tolist() == ["b1"]


def test_pareto_is_each_studys_own_front(results):
    df = query(PARETO_POINTS, results)
    assert list(zip(df["study"], df["trial_id"])) == [("alpha", "a1"), ("alpha", "a2"), ("alpha", "a3"),
                                                      ("beta", "b2"), ("beta", "b1")]
    full = query("SELECT * FROM pareto", results)
    assert list(full.columns) == [*COLUMN_NAMES, *PARETO_EXTRA] and set(full["pareto_rank"]) == {0}
    assert set(full["front_status"]) == {"front"} and set(full["n"]) == {1}
    assert sorted(query("SELECT trial_id FROM pareto", results, study="beta")["trial_id"]) == ["b1", "b2"]


def test_counts_by_status_per_study(results):
    df = query(COUNTS, results)
    assert df.values.tolist() == [["alpha", "complete", 4], ["alpha", "failed", 1],
                                  ["beta", "complete", 4], ["beta", "failed", 1]]
    assert query("SELECT count(*) AS n FROM trials", results, study="alpha")["n"].tolist() == [5]


def test_trials_has_every_column_with_its_declared_type(results):
    df = query("SELECT * FROM trials WHERE trial_id = 'a2'", results)
    assert list(df.columns) == list(COLUMN_NAMES)
    row = df.iloc[0]
    assert row["study"] == "alpha" and row["params"] == 200_000 and row["setup"] == "GET" and pd.isna(row["kid"])
    types = dict(query("SELECT column_name, column_type FROM (DESCRIBE trials)", results).values.tolist())
    assert [types[c] for c in ("params", "fid", "trial_id", "proposed")] == ["BIGINT", "DOUBLE", "VARCHAR", "BOOLEAN"]


def test_an_empty_results_dir_and_a_study_without_trials_give_empty_views_with_every_column(tmp_path, results):
    (tmp_path / "empty").mkdir()
    for results_dir, study in ((tmp_path / "empty", None), (results, "gamma")):
        trials = query("SELECT * FROM trials", results_dir, study=study)
        assert trials.empty and list(trials.columns) == list(COLUMN_NAMES)
        front = query("SELECT * FROM pareto", results_dir, study=study)
        assert front.empty and list(front.columns) == [*COLUMN_NAMES, *PARETO_EXTRA]
        assert query("SELECT * FROM points", results_dir, study=study).empty


def test_missing_results_dir_and_unknown_study_are_dse_errors(tmp_path, results):
    with pytest.raises(DseError, match="no results directory"):
        query("SELECT 1", tmp_path / "nowhere")
    with pytest.raises(DseError, match="known studies: alpha, beta, gamma"):
        query("SELECT 1", results, study="delta")
    with pytest.raises(DseError, match="known studies: alpha, beta, gamma"):
        study_results("delta", results)


def test_a_file_with_an_older_schema_still_gives_every_column(results):
    # written before `kid` and the ONNX columns existed, with a column since renamed (fd -> fid)
    old = pa.table({"trial_id": ["o1"], "status": ["complete"], "params": [50_000], "fd": [9.0], "fid": [40.0]})
    pq.write_table(old, results / "alpha" / "trials" / "o1.parquet")
    df = query("SELECT * FROM trials WHERE trial_id = 'o1'", results)
    assert list(df.columns) == list(COLUMN_NAMES)
    assert (df.loc[0, "study"], df.loc[0, "params"], df.loc[0, "fid"]) == ("alpha", 50_000, 40.0)
    assert pd.isna(df.loc[0, "latency_onnx_cpu_s"])


def test_a_damaged_file_is_a_dse_error_naming_it(results):
    (results / "beta" / "trials" / "broken.parquet").write_bytes(b"PAR1 not really a parquet file")
    with pytest.raises(DseError, match=r"broken\.parquet"):
        query("SELECT count(*) FROM trials", results)
    assert len(query("SELECT * FROM trials", results, study="alpha")) == 5  # the other study still answers


@pytest.mark.parametrize("sql", ["SELECT * FROM trials", "SELECT trial_id, error FROM trials", "SELECT * FROM pareto"])
def test_a_file_whose_data_page_is_damaged_is_named_on_one_line(results, sql):
    from tests.test_store import LONG_TEXT, damage_data_page

    store = ResultsStore(results / "alpha" / "trials")
    store.write(_row("a5", 10, 10.0, 0.01, error=LONG_TEXT))
    damage_data_page(store.path_for("a5"))
    with pytest.raises(DseError) as err:
        query(sql, results)
    assert str(err.value).startswith(f"damaged results file {store.path_for('a5')}: ") and "\n" not in str(err.value)


def test_a_study_name_that_is_not_one_folder_is_refused(results):
    for name in ("../alpha", "..", "alpha/trials", str(results / "alpha")):
        with pytest.raises(DseError, match="is not allowed"):
            query("SELECT 1", results, study=name)
        with pytest.raises(DseError, match="is not allowed"):
            study_results(name, results)


@pytest.mark.parametrize("sql, match", [
    ("SELEC trial_id FROM trials", "Parser Error"),
    ("SELECT nope FROM trials", r"Binder Error.*the view is `trials`; columns: trial_id, study"),
    ("SELECT * FROM trails", r"Catalog Error.*the views are `trials`"),
    ("", "one SELECT statement"),
    ("SELECT 1; SELECT 2", "one SELECT statement"),
    ("DELETE FROM trials", "got DELETE"),
])
def test_bad_sql_is_a_one_line_dse_error(results, sql, match):
    with pytest.raises(DseError, match=match) as info:
        query(sql, results)
    assert "\n" not in str(info.value)


def test_a_query_reads_the_results_and_nothing_else(results, tmp_path):
    before = {p: p.read_bytes() for p in results.rglob("*.parquet")}
    target = results / "alpha" / "trials" / "a1.parquet"
    for sql in (f"COPY trials TO '{target}' (FORMAT parquet, USE_TMP_FILE false)",
                f"COPY (SELECT * FROM trials) TO '{tmp_path / 'out.csv'}'",
                f"SELECT * FROM read_csv('{tmp_path / 'out.csv'}')",
                f"SELECT * FROM read_text('{results / 'gamma' / 'study.json'}')",
                "ATTACH 'x.db'", "SET enable_external_access = true"):
        with pytest.raises(DseError):
            query(sql, results)
    assert {p: p.read_bytes() for p in results.rglob("*.parquet")} == before
    assert not (tmp_path / "out.csv").exists()


def test_study_results_default_all_and_chosen_columns(results):
    df = study_results("alpha", results)
    assert list(df.columns) == list(DEFAULT_COLUMNS)
    assert df["trial_id"].tolist() == ["a1", "a2", "a4", "a3", "a9"]  # by params, the failed one (no params) last
    assert list(study_results("alpha", results, columns=["*"]).columns) == list(COLUMN_NAMES)
    assert list(study_results("alpha", results, columns=["fid", "trial_id"]).columns) == ["fid", "trial_id"]
    with pytest.raises(DseError, match="no column 'fd'"):
        study_results("alpha", results, columns=["fd"])
    assert study_results("gamma", results).empty


def _plain(values: pd.Series) -> list:
    """The values as Python objects, every kind of missing value as None: to compare across dtypes."""
    return [None if pd.isna(v) else v for v in values.astype(object)]


def test_csv_and_json_round_trip(results):
    df = study_results("beta", results, columns=["trial_id", "status", "params", "fid", "latency_s", "error"])
    back = pd.read_csv(io.StringIO(format_table(df, "csv")))
    assert list(back.columns) == list(df.columns)
    for col in df.columns:
        assert _plain(back[col]) == _plain(df[col]), col
    assert back["error"].iloc[-1] == "CUDA out of memory\nat step 3"

    records = json.loads(format_table(df, "json"))
    assert records[0] == {"trial_id": "b2", "status": "complete", "params": 120_000, "fid": 18.0,
                          "latency_s": 0.012, "error": None}
    assert [r["trial_id"] for r in records] == ["b2", "b4", "b1", "b3", "b9"]
    assert records[1]["fid"] is None and records[-1]["params"] is None  # b4 has no FID; the failed trial no params
    assert [_plain(pd.Series([r[c] for r in records])) for c in df.columns] == [_plain(df[c]) for c in df.columns]
    assert json.loads(format_table(df.iloc[:0], "json")) == []


def test_table_is_aligned_with_dashes_for_missing_values(results):
    text = format_table(study_results("beta", results, columns=["trial_id", "params", "fid", "error"]), "table")
    lines = text.splitlines()
    assert lines[0].split() == ["trial_id", "params", "fid", "error"]
    b4 = next(line for line in lines if line.startswith("b4"))
    assert b4.split() == ["b4", "130000", "-", "-"]
    assert "CUDA out of memory at step 3" in text  # one line per row
    assert len({len(line) for line in lines[2:] if not line.startswith("b9")}) == 1  # numbers right-aligned
    assert "(no rows)" in format_table(query("SELECT * FROM trials WHERE false", results), "table")


def test_an_unknown_format_names_the_three():
    with pytest.raises(DseError, match="table, csv, json"):
        format_table(pd.DataFrame({"a": [1]}), "yaml")


def test_importing_the_module_loads_no_heavy_library():
    code = ("import sys, dse.query; heavy = {'torch', 'ray', 'pandas', 'duckdb', 'pyarrow'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def seeded(tmp_path):
    """One study of three candidates with three training seeds each (params, latency exact per point):
    A: FID 20/21/22; B, same size and speed: 21/23/22 (worse on the means, within noise: tied with A);
    C, same size and speed: 40/41/42 (clearly worse: dominated)."""
    root = tmp_path / "results"
    store = ResultsStore(root / "seeded" / "trials")
    for cid, fids in (("A", (20.0, 21.0, 22.0)), ("B", (21.0, 23.0, 22.0)), ("C", (40.0, 41.0, 42.0))):
        for seed, fid in enumerate(fids):
            store.write(_row(f"{cid.lower()}{seed}", 100_000, fid, 0.01, candidate_id=cid, seed=seed))
    return root


def test_points_has_one_row_per_candidate_with_the_interval_of_its_seeds(seeded):
    df = query("SELECT * FROM points ORDER BY candidate_id", seeded)
    assert list(df["candidate_id"]) == ["A", "B", "C"] and list(df["n"]) == [3, 3, 3]
    a = df.iloc[0]
    assert (a["study"], a["seeds"], a["trial_ids"], a["fid"], a["fid_sd"]) == ("seeded", "0, 1, 2", "a0, a1, a2", 21.0, 1.0)
    assert a["fid_high"] - 21.0 == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2 df) * sd / sqrt(n)
    assert list(df["front_status"]) == ["front", "tied", "dominated"]
    assert list(df["pareto_rank"]) == [0, 1, 2]
    assert df.iloc[1]["tied_with"] == "A" and pd.isna(df.iloc[2]["tied_with"])


def test_pareto_holds_the_rows_of_front_and_tied_points(seeded):
    df = query("SELECT trial_id, front_status, tied_with, n, fid_low, fid_high, pareto_rank FROM pareto "
               "ORDER BY trial_id", seeded)
    assert list(df["trial_id"]) == ["a0", "a1", "a2", "b0", "b1", "b2"]  # C is clearly dominated: not there
    assert list(df["front_status"]) == ["front"] * 3 + ["tied"] * 3
    assert list(df["tied_with"].fillna("")) == [""] * 3 + ["A"] * 3
    assert set(df["n"]) == {3} and list(df["pareto_rank"]) == [0] * 3 + [1] * 3
    assert (df["fid_low"] < 21.0).all() and (df["fid_high"] > 21.0).all()


def test_an_unknown_view_names_all_three(results):
    with pytest.raises(DseError, match="`points`"):
        query("SELECT * FROM nothing", results)


@pytest.fixture
def timed(tmp_path):
    """One study measured latency first: A (3 seeds) shares one cached measurement 10 +- 0.5 ms; B (1 seed),
    measured in the study, is 10.4 +- 0.5 ms with a worse FID (within the latency noise: tied); C's latency
    stayed contended (it would beat both)."""
    root = tmp_path / "results"
    store = ResultsStore(root / "timed" / "trials")
    measured = {"latency_s_std": 0.0005, "latency_measured_at": "2025-01-01T00:00:00"}
    for seed, fid in enumerate((20.0, 20.5, 21.0)):
        store.write(_row(f"a{seed}", 100_000, fid, 0.010, candidate_id="A", seed=seed, latency_key="kA",
                         latency_p90_s=0.011, latency_cached=True, latency_contended=False, **measured))
    store.write(_row("b0", 100_000, 30.0, 0.0104, candidate_id="B", seed=0, depth=3, latency_key="kB",
                     latency_p90_s=0.012, latency_cached=False, latency_contended=False, **measured))
    store.write(_row("c0", 50_000, 10.0, 0.005, candidate_id="C", seed=0, depth=4, latency_key="kC",
                     latency_cached=False, latency_contended=True, **measured))
    return root


def test_points_carry_the_latency_interval_p90_cache_and_contention(timed):
    df = query("SELECT candidate_id, n, latency_s, latency_s_sd, latency_s_low, latency_s_high, latency_p90_s, "
               "latency_cached, latency_contended, front_status FROM points ORDER BY candidate_id", timed)
    a, b, c = df.to_dict("records")
    # three seeds, one measurement: the interval of one (10 ms +- 1.96 * 0.5 ms), not narrowed by sqrt(3)
    assert a["n"] == 3 and a["latency_s_sd"] == pytest.approx(0.0005)
    assert a["latency_s_high"] - a["latency_s"] == pytest.approx(1.959964 * 0.0005, rel=1e-5)
    assert (a["latency_p90_s"], a["latency_cached"], a["latency_contended"]) == (pytest.approx(0.011), True, False)
    assert (b["latency_cached"], b["front_status"]) == (False, "tied")  # 0.4 ms slower: within the noise
    assert c["latency_contended"] is True and pd.isna(c["latency_s"]) and pd.isna(c["front_status"])
    front = query("SELECT trial_id, latency_s_low, latency_s_high FROM pareto ORDER BY trial_id", timed)
    assert list(front["trial_id"]) == ["a0", "a1", "a2", "b0"]  # the contended C is on no front
    assert front["latency_s_low"].iloc[0] == pytest.approx(a["latency_s_low"])
