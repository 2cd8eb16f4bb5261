"""Claims: one process per trial (`claims/<trial_id>.claim`), live by pid on this host and by age
from another, taken over when stale, refreshed while held, released on exit."""

import json
import os
import subprocess
import sys
import time

import pytest

from dse.claims import read_claim
from dse.fileio import HOST
from dse.store import ResultsStore


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


def test_the_store_lists_and_makes_its_claims_through_dse_claims(tmp_path):
    from dse.claims import ClaimSet, read_claims

    store = ResultsStore(tmp_path / "trials")
    with store.claim(["a"]) as claims:
        assert isinstance(claims, ClaimSet)
        assert store.claims() == read_claims(store.claims_dir) and sorted(store.claims()) == ["a"]
