import os

import pytest

from dse.errors import DseError
from dse.store import COLUMN_NAMES, ResultsStore


def _row(tid, status="complete", **kw):
    return {"trial_id": tid, "status": status, "depth": 2, "params": 1000, "fid": 1.5, "proposed": False, **kw}


def test_rows_round_trip_with_the_declared_columns(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    assert store.read().empty and list(store.read().columns) == list(COLUMN_NAMES)
    store.write(_row("a"))
    store.write(_row("b", status="failed", error="boom", fid=None))
    df = store.read().set_index("trial_id")
    assert df.loc["a", "fid"] == 1.5 and df.loc["b", "error"] == "boom"
    assert store.completed_ids() == {"a"}
    assert sorted(os.listdir(tmp_path / "trials")) == ["a.parquet", "b.parquet"]  # no temporary files left


def test_rewriting_a_trial_replaces_its_row(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(_row("a", status="failed", error="x"))
    store.write(_row("a"))
    df = store.read()
    assert len(df) == 1 and df.loc[0, "status"] == "complete"


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="not in the store schema"):
        store.write(_row("a", surprise=1))
    with pytest.raises(ValueError, match="status"):
        store.write(_row("a", status="running"))
    assert store.files() == []


def test_a_damaged_file_is_reported_by_name(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(_row("a"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DseError, match="broken.parquet"):
        store.read()
