import json
import os
import random
import subprocess
import sys
import time

import pytest

from dse.errors import DseError
from dse.store import COLUMN_NAMES, HOST, STATUSES, ResultsStore, read_claim


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


# --- claims: one process per trial -------------------------------------------------------------


def test_stopped_is_a_status_a_row_can_have(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    store.write(_row("s", status="stopped"))
    assert "stopped" in STATUSES and store.statuses() == {"s": "stopped"} and store.completed_ids() == set()


def test_two_claim_sets_never_hold_the_same_trial(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    assert store.claims_dir == tmp_path / "claims"
    with store.claim(["a", "b"]) as first:
        with store.claim(["b", "c"]) as second:
            assert first.got == ["a", "b"] and first.busy == []
            assert second.got == ["c"] and second.busy == ["b"]  # ours-by-pid is live: no takeover
            assert sorted(store.live_claims()) == ["a", "b", "c"]
            data = json.loads((store.claims_dir / "a.claim").read_text())
            assert data["host"] == HOST and data["pid"] == os.getpid() and data["started_at"]
        assert sorted(p.name for p in store.claims_dir.glob("*.claim")) == ["a.claim", "b.claim"]
    assert list(store.claims_dir.glob("*.claim")) == []  # released on exit


def test_claims_are_released_on_an_exception_and_one_by_one(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    with pytest.raises(RuntimeError):
        with store.claim(["a", "b"]) as claims:
            claims.release(["a"])
            assert "a" not in claims and claims.got == ["b"] and not (store.claims_dir / "a.claim").exists()
            raise RuntimeError("boom")
    assert list(store.claims_dir.glob("*.claim")) == []


def _fake_claim(store, tid, **data):
    store.claims_dir.mkdir(parents=True, exist_ok=True)
    path = store.claims_dir / f"{tid}.claim"
    path.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "started_at": "2024-01-01T00:00:00+00:00",
                                "token": "theirs", **data}))
    return path


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # exited and reaped: no such process now
    store = ResultsStore(tmp_path / "trials")
    path = _fake_claim(store, "a", pid=pid)
    alive = _fake_claim(store, "b", pid=os.getppid())  # the process that started pytest: alive
    assert not read_claim(path).is_live() and read_claim(alive).is_live()
    assert sorted(store.live_claims()) == ["b"]
    with store.claim(["a", "b"]) as claims:
        assert claims.got == ["a"] and claims.busy == ["b"]
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and alive.exists()  # theirs is left alone


def test_a_claim_of_a_reused_pid_is_stale(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    path = _fake_claim(store, "a", pid=os.getpid(), proc_start=1)  # our pid, but an earlier process
    if read_claim(path).is_live():
        pytest.skip("no /proc here to tell processes apart by start time")
    with store.claim(["a"]) as claims:
        assert claims.got == ["a"]


def test_a_claim_from_another_host_is_live_until_its_ttl(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    fresh = _fake_claim(store, "a", host="elsewhere", pid=1)
    old = _fake_claim(store, "b", host="elsewhere", pid=1)
    past = time.time() - 3600
    os.utime(old, (past, past))
    with store.claim(["a", "b"], ttl=600) as claims:
        assert claims.got == ["b"] and claims.busy == ["a"]
    assert json.loads(fresh.read_text())["host"] == "elsewhere" and not old.exists()


def test_an_empty_claim_being_written_is_live_while_young(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    store.claims_dir.mkdir(parents=True)
    (store.claims_dir / "a.claim").write_text("")
    with store.claim(["a"]) as claims:
        assert claims.busy == ["a"]


def test_refresh_touches_our_claims_and_notices_a_takeover(tmp_path):
    store = ResultsStore(tmp_path / "trials")
    with store.claim(["a", "b"], refresh_every=0.05) as claims:
        path = store.claims_dir / "a.claim"
        past = time.time() - 3600
        os.utime(path, (past, past))
        deadline = time.monotonic() + 5
        while path.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > time.time() - 60  # the daemon thread refreshed it
        other = store.claims_dir / "b.claim"
        other.unlink()
        _fake_claim(store, "b", host="elsewhere")  # taken over by someone else
        claims.refresh()
        assert claims.got == ["a"] and claims.lost == ["b"]
    assert json.loads(other.read_text())["host"] == "elsewhere"  # not released by us: not ours any more


def test_a_claim_set_can_be_pickled(tmp_path):
    import pickle

    store = ResultsStore(tmp_path / "trials")
    with store.claim(["a"]) as claims:
        copy = pickle.loads(pickle.dumps(claims))
        assert copy.got == ["a"] and copy.token == claims.token
