import os
import random

import pytest

from dse.errors import DseError
from dse.events import STATUSES
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


def damage_data_page(path, column: str = "error") -> None:
    """Flip 16 bytes in the middle of `column`'s values in the Parquet file `path` (not in a page header, whose
    statistics a reader skips, nor in the footer)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path).row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    if chunk.dictionary_page_offset:  # the value itself is in the dictionary page, before the data page
        middle = (chunk.dictionary_page_offset + chunk.data_page_offset) // 2
    else:
        middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


LONG_TEXT = "".join(random.Random(0).choices("abcdefghij", k=4000))  # a long text cell: a big data page


def test_a_file_whose_data_page_is_damaged_is_one_line_naming_it(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    for tid in ("a", "b", "c"):
        store.write(_row(tid, error=LONG_TEXT))
    damage_data_page(store.path_for("b"))
    with pytest.raises(DseError) as err:
        store.read()
    assert str(err.value).startswith(f"damaged results file {store.path_for('b')}: ") and "\n" not in str(err.value)


def test_stopped_is_a_status_a_row_can_have(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    store.write(_row("s", status="stopped"))
    assert "stopped" in STATUSES and store.statuses() == {"s": "stopped"} and store.completed_ids() == set()
