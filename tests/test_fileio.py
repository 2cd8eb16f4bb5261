"""Atomic writes: the temporary files of interrupted writes are removed by the next write to their
folder, never a live writer's; and whether a folder can be written is known before anything is."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dse.errors import DseError
from dse.fileio import STALE_TMP_S, atomic_write, atomic_writer, check_folder, remove_leftovers

ROOT = Path(__file__).resolve().parent.parent
# A writer that writes part of `path` through atomic_writer, says so, then waits (until killed or told to go on).
WRITER = """
import sys
from dse.fileio import atomic_writer
with atomic_writer(sys.argv[1]) as f:
    f.write(b"half of it")
    f.flush()
    print("writing", flush=True)
    sys.stdin.readline()
    f.write(b" and the rest")
"""


def _writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_a_killed_writers_temporary_file_is_removed_by_the_next_report_write(tmp_path):
    from dse.report import write_report
    from dse.store import schema

    reports = tmp_path / "reports"
    proc = _writer(reports / "demo.html")
    proc.kill()
    proc.wait()
    [left] = _temps(reports)
    assert left.name.startswith(".demo.html.") and not (reports / "demo.html").exists()
    write_report(schema().empty_table().to_pandas(), reports / "demo.html", title="demo")
    assert _temps(reports) == [] and (reports / "demo.html").read_text().startswith("<!DOCTYPE html>")


def test_a_live_writers_temporary_file_is_kept_and_its_write_completes(tmp_path):
    proc = _writer(tmp_path / "trials" / "a.parquet")
    try:
        [live] = _temps(tmp_path / "trials")
        atomic_write(tmp_path / "trials" / "b.parquet", b"other trial")  # a parallel trial writes the same folder
        assert _temps(tmp_path / "trials") == [live]
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert (tmp_path / "trials" / "a.parquet").read_bytes() == b"half of it and the rest"
    assert _temps(tmp_path / "trials") == []


def test_leftovers_of_other_hosts_go_only_when_a_day_old_and_other_files_stay(tmp_path):
    young = tmp_path / ".a.parquet.dse-otherhost-123-abcd1234.tmp"
    old = tmp_path / ".b.parquet.dse-otherhost-123-abcd1234.tmp"
    before = tmp_path / ".c.html.k2j4_9xq.tmp"  # written by a dse that did not name the writer yet
    mine = tmp_path / ".notes.tmp"  # not a temporary file of dse's
    for p in (young, old, before, mine):
        p.write_bytes(b"x")
    day_ago = time.time() - STALE_TMP_S - 60
    for p in (old, before, mine):
        os.utime(p, (day_ago, day_ago))
    assert sorted(remove_leftovers(tmp_path)) == sorted([old, before])
    assert sorted(_temps(tmp_path)) == sorted([young, mine])


def test_an_error_in_the_block_leaves_the_old_file_and_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "x.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(tmp_path / "x.json") as f:
            f.write(b"new")
            raise RuntimeError("interrupted")
    assert (tmp_path / "x.json").read_text() == "old" and _temps(tmp_path) == []


def test_check_folder_refuses_a_file_in_the_way_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DseError, match=r"results folder .*file is not a folder; choose another path"):
        check_folder(tmp_path / "file", "results folder")
    with pytest.raises(DseError, match=r"is not a folder \(.*file is a file\)"):
        check_folder(tmp_path / "file" / "sub" / "deeper", "results folder")
    assert check_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_folder_refuses_a_read_only_folder(read_only_dir):
    with pytest.raises(DseError, match=r"results folder .* cannot be written: .* is not writable \(read-only file system\)"):
        check_folder(read_only_dir / "results", "results folder")
    with pytest.raises(OSError):  # what a write there would have met
        (read_only_dir / "x").write_text("x")
