"""The study's live table and summary: board state from synthetic events with a fake clock, the
plain fallback printer's throttling, the rich rendering and the closing lines."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from dse.progress import (
    LinePrinter,
    TrialBoard,
    format_duration,
    live_table,
    outcome_summary,
    render_table,
    summary_lines,
)


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def board_of(ids, steps=600, **kw) -> tuple[TrialBoard, Clock]:
    clock = Clock()
    return TrialBoard(list(ids), steps, clock=clock, **kw), clock


def test_format_duration():
    assert [format_duration(s) for s in (None, float("nan"), 0, 42.4, 80, 3599, 7500)] == \
        ["-", "-", "0s", "42s", "1m20s", "59m59s", "2h05m"]


def test_states_step_text_and_metrics():
    b, clock = board_of(["a", "b", "c", "d"])
    assert {r["state"] for r in b.rows()} == {"pending"}
    b.on_event("a", "start", {})
    assert b.trials["a"].state == "running" and b.rows()[0]["state"] == "starting"
    clock.t = 5
    b.on_event("a", "train", {"step": 120, "loss": 0.123456})
    row = b.rows()[0]
    assert (row["trial"], row["state"], row["step"], row["loss"]) == ("a", "training", "120/600", "0.1235")
    clock.t = 60
    b.on_event("a", "train", {"step": 600, "loss": 0.1})
    assert b.rows()[0]["state"] == "evaluating"
    b.on_event("a", "complete", {"status": "complete", "params": 420_000, "fid": 12.3456, "latency_s": None})
    assert b.trials["a"].state == "trained"  # latency deferred to the latency pass
    b.on_event("a", "latency", {"latency_s": 0.01234, "latency_num_images": 1000, "latency_onnx_cpu_s": 0.02})
    a = next(r for r in b.rows() if r["trial"] == "a")
    assert (a["state"], a["fid"], a["latency"], a["eta"]) == ("complete", "12.346", "0.01234 s", "-")
    b.on_event("b", "start", {})
    b.on_event("b", "failed", {"error": "CUDA out of memory\nTraceback ..."})
    assert b.trials["b"].state == "failed" and b.trials["b"].error == "CUDA out of memory"
    b.on_event("c", "start", {})
    b.on_event("c", "stopped", {"error": "halted at rung 1"})
    assert b.trials["c"].state == "stopped"
    b.on_event("zz", "start", {})  # not in the plan: added
    assert b.counts() == {"running": 1, "pending": 1, "trained": 0, "complete": 1, "failed": 1, "stopped": 1,
                          "outside": 0, "stored": 0}


def test_complete_with_latency_is_complete_and_stored_trials():
    b, _ = board_of(["a", "s"], steps={"a": 10}, stored=["s", "other-study-trial"])
    b.on_event("a", "start", {})
    b.on_event("a", "complete", {"params": 5, "fid": 1.0, "latency_s": 0.5})
    assert b.trials["a"].state == "complete"
    assert b.trials["s"].state == "stored"
    assert b.counts()["stored"] == 1 and len(b.trials) == 2 and b.eta() == 0.0


def test_trial_eta_from_its_step_rate():
    b, clock = board_of(["a"], steps=450)
    b.on_event("a", "start", {})
    clock.t = 5
    b.on_event("a", "train", {"step": 50, "loss": 1.0})  # one event: rate from the start, 10 steps/s
    assert b.trials["a"].eta(5) == pytest.approx(40)
    clock.t = 15
    b.on_event("a", "train", {"step": 150, "loss": 1.0})  # 100 steps in 10 s, 300 left -> 30 s
    assert b.trials["a"].rate() == pytest.approx(10)
    assert b.trials["a"].eta(15) == pytest.approx(30)
    assert b.rows()[0]["eta"] == "30s"
    clock.t = 25  # counts down between events
    assert b.rows()[0]["eta"] == "20s"


def test_study_eta_over_unfinished_trials():
    b, clock = board_of(["a", "b", "c"], steps=400)
    b.on_event("a", "start", {})
    clock.t = 10
    b.on_event("a", "train", {"step": 100, "loss": 1.0})
    # 100 steps in the 10 s since the first start; 300 + 400 + 400 left -> 110 s
    assert b.aggregate_rate() == pytest.approx(10)
    assert b.eta() == pytest.approx(110)
    b.on_event("a", "complete", {"params": 1, "fid": 1.0})
    assert b.eta() == pytest.approx(80)  # a is done: 800 steps left at 10 steps/s
    clock.t = 200  # nothing trained in the last minute and nothing running: unknown
    assert b.eta() is None
    assert "ETA -" in b.headline()


def test_study_eta_unknown_total_and_all_done():
    b, clock = board_of(["a", "b"], steps={"a": 100})
    b.on_event("a", "start", {})
    clock.t = 1
    b.on_event("a", "train", {"step": 10, "loss": 1.0})
    assert b.eta() is None  # b's length is unknown
    assert b.rows()[1]["step"] == "-"


def test_ordering_running_pending_then_latest_finished():
    b, clock = board_of(["p1", "p2", "r1", "r2", "f1", "f2"])
    for i, tid in enumerate(["f1", "f2", "r2", "r1"]):
        clock.t = i
        b.on_event(tid, "start", {})
    clock.t = 10
    b.on_event("f1", "complete", {"params": 1})
    clock.t = 11
    b.on_event("f2", "failed", {"error": "x"})
    assert [r["trial"] for r in b.rows()] == ["r2", "r1", "p1", "p2", "f2", "f1"]


def test_visible_rows_limited_to_a_screenful():
    ids = [f"t{i:02d}" for i in range(40)]
    b, clock = board_of(ids)
    for i, tid in enumerate(ids[:30]):
        clock.t = i
        b.on_event(tid, "start", {})
        if i < 28:
            b.on_event(tid, "complete", {"params": 1})
    rows, hidden = b.visible(20)
    names = [r["trial"] for r in rows]
    assert len(rows) == 20 and hidden == 20
    assert names[:2] == ["t28", "t29"]  # running first
    assert names[2:5] == ["t30", "t31", "t32"]  # a few pending
    assert names[5] == "t27"  # then the latest finished


def test_line_printer_lines_and_throttling():
    b, clock = board_of(["a", "b"], steps={"a": 1000, "b": 100})
    lines: list[str] = []
    p = LinePrinter(b, lines.append)
    p("a", "start", {})
    for step in range(10, 1001, 10):
        clock.t += 0.1
        p("a", "train", {"step": step, "loss": 0.5})
    train_lines = [line for line in lines if " step " in line]
    assert 9 <= len(train_lines) <= 11
    assert any("step 1000/1000" in line for line in train_lines)
    assert any("ETA" in line for line in train_lines)
    p("a", "complete", {"status": "complete", "params": 420_000, "fid": 9.5})
    p("a", "latency", {"latency_s": 0.25, "latency_num_images": 500})
    p("b", "start", {})
    p("b", "failed", {"error": "boom\nmore"})
    text = "\n".join(lines)
    assert "[1/2] a started" in text and "[2/2] b started" in text
    assert "a trained: 420,000 params, fid 9.500" in text
    assert "a latency 0.25 s for 500 images" in text
    assert "b FAILED: boom" in text and "more" not in text
    assert b.trials["a"].state == "complete"  # the printer keeps the board up to date


def test_line_printer_heartbeat_for_slow_or_unknown_trials():
    b, clock = board_of(["a"], steps=None)
    lines: list[str] = []
    p = LinePrinter(b, lines.append, heartbeat_s=30)
    p("a", "start", {})
    for step in range(1, 101):
        clock.t += 1
        p("a", "train", {"step": step, "loss": 0.5})
    train_lines = [line for line in lines if " step " in line]
    assert 3 <= len(train_lines) <= 5  # the first one, then one every 30 s


def test_live_table_falls_back_to_lines_off_a_terminal():
    b, _ = board_of(["a"])
    lines: list[str] = []
    with live_table(b, enabled=True, console=Console(file=io.StringIO()), echo=lines.append) as on_event:
        on_event("a", "start", {})
    assert lines == ["[1/1] a started"]
    with live_table(b, enabled=False, echo=lines.append) as on_event:
        on_event("a", "stopped", {"error": "early stop"})
    assert lines[-1].startswith("    a stopped: early stop")


def test_rich_render_contains_trials_and_states():
    b, clock = board_of(["dit-d4-w96-h4-get-l2", "dit-d3-w64-h2-dmd-l1", "dit-d2-w48-h2-ta-lpips"])
    b.on_event("dit-d4-w96-h4-get-l2", "start", {})
    clock.t = 3
    b.on_event("dit-d4-w96-h4-get-l2", "train", {"step": 120, "loss": 0.2})
    b.on_event("dit-d3-w64-h2-dmd-l1", "start", {})
    b.on_event("dit-d3-w64-h2-dmd-l1", "failed", {"error": "NaN loss"})
    console = Console(file=io.StringIO(), width=120)
    console.print(render_table(b))
    out = console.file.getvalue()
    for text in ("dit-d4-w96-h4-get-l2", "dit-d3-w64-h2-dmd-l1", "dit-d2-w48-h2-ta-lpips",
                 "training", "failed", "pending", "120/600", "NaN loss", "1 running"):
        assert text in out
    console = Console(file=io.StringIO(), width=120)
    console.print(render_table(b, max_rows=1))
    assert "+2 more" in console.file.getvalue()


def test_live_table_on_a_terminal():
    b, _ = board_of(["a", "b"])
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    with live_table(b, enabled=True, console=console, refresh_per_second=20) as on_event:
        on_event("a", "start", {})
        on_event("a", "failed", {"error": "worker died"})
    out = console.file.getvalue()
    assert "a failed: worker died" in out and "pending" in out
    assert b.trials["a"].state == "failed"


FRONT = [
    {"trial_id": "dit-d2-w48-h2-get-l2", "candidate_id": "d2", "depth": 2, "width": 48, "heads": 2, "params": 410_123,
     "n": 3, "fid": 30.5, "fid_low": 28.7, "fid_high": 32.3, "latency_s": 0.0123, "front_status": "front",
     "tied_with": []},
    {"trial_id": "dit-d4-w96-h4-get-l2", "candidate_id": "d4", "depth": 4, "width": 96, "heads": 4,
     "params": 4_987_654, "n": 1, "fid": 8.5, "fid_low": 8.5, "fid_high": 8.5, "latency_s": float("nan"),
     "front_status": "tied", "tied_with": ["d2"]},
]


def test_summary_lines():
    lines = summary_lines(num_complete=5, num_failed=1, num_stopped=2, skipped=3, front=FRONT,
                          results="results/demo/trials/*.parquet", report="reports/demo.html", elapsed_s=125,
                          warnings=["4 of 5 trials were still improving"])
    text = "\n".join(lines)
    assert lines[0] == "5 complete, 1 failed, 2 stopped, 3 already in the store in 2m05s"
    assert "dit-d2-w48-h2-get-l2" in text and "dit-d4-w96-h4-get-l2" in text
    assert "410,123" in text and "0.0123 s" in text
    assert "30.5 ± 1.8" in text  # the mean and half the interval's width
    assert "95%" in lines[1] and "tied" in lines[1]
    assert "report:  reports/demo.html" in text and "results: results/demo/trials/*.parquet" in text
    table = [line for line in lines if line.startswith("  ")]
    assert len(table) == 3
    header, first, second = table
    # aligned: the status column starts, and the latency and fid columns end, at one place on each line
    assert header.index("status") == first.index("front") == second.index("tied")
    assert header.index("latency") + len("latency") == first.index("0.0123 s") + len("0.0123 s") \
        == second.index(" -  ") + 2
    assert first.index("30.5 ±") + len("30.5") == second.index("8.5") + len("8.5")  # no interval: the mean alone
    assert header.split() == ["trial", "n", "params", "fid", "latency", "status"]
    assert first.split()[1] == "3" and first.endswith("front")
    assert second.split()[1] == "1" and second.endswith("tied") and "±" not in second
    assert "warning: 4 of 5 trials were still improving" in lines
    assert lines.index("warning: 4 of 5 trials were still improving") > lines.index(table[-1])
    empty = summary_lines(num_complete=0, num_failed=2, front=[], report="r.html")
    assert empty[0] == "0 complete, 2 failed" and "empty" in empty[1]


def test_outcome_summary_reads_a_study_outcome_like_object():
    class Store:
        root = "results/demo/trials"

    class Plan:
        store = Store()

    class Outcome:
        plan, report_path, num_complete, num_failed, skipped, front = Plan(), "reports/demo.html", 2, 0, 0, FRONT
        warnings = ["most trials were still improving"]

    text = "\n".join(outcome_summary(Outcome()))
    assert "results: results/demo/trials/*.parquet" in text and "reports/demo.html" in text
    assert "warning: most trials were still improving" in text and "30.5 ± 1.8" in text


def test_imports_no_torch_or_ray():
    code = "import sys, dse.progress; sys.exit(any(m in sys.modules for m in ('torch', 'ray')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_on_a_narrow_terminal_only_the_trial_id_gives_way():
    import io

    from rich.console import Console

    from dse.progress import TrialBoard, render_table

    ids = ["d10-w32-h4-get-l2-d0832a04", "d2-w64-h8-get-l2-9f1e2e2a"]
    board = TrialBoard(ids, 600, clock=lambda: 0.0)
    board.on_event(ids[0], "start", {})
    board.on_event(ids[0], "train", {"step": 300, "loss": 0.1354})
    board.on_event(ids[1], "start", {})
    board.on_event(ids[1], "complete", {"status": "complete", "fid": 35.815, "params": 3})
    board.on_event(ids[1], "latency", {"latency_s": 0.2653})
    out = io.StringIO()
    Console(file=out, width=80).print(render_table(board))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("ETA", "latency", "training", "complete", "300/600", "35.815", "0.2653 s"):
        assert cell in text, cell  # whole, not cut to "comple…"


def terminal_screen(raw: str, width: int) -> list[str]:
    """The lines a terminal `width` columns wide shows (scrollback included) after `raw`: text, CR, LF,
    and the CSI sequences rich's Live uses (cursor up/down, erase line; styles ignored)."""
    lines: list[list[str]] = [[]]
    row = col = i = 0
    while i < len(raw):
        csi = re.compile(r"\x1b\[([?\d;]*)([A-Za-z])").match(raw, i)
        if csi:
            arg, op = csi.groups()
            n = int(arg) if arg.isdigit() else 1
            row = max(0, row - n) if op == "A" else row + n if op == "B" else row
            lines.extend([] for _ in range(row + 1 - len(lines)))
            if op == "K":
                lines[row] = [] if arg == "2" else lines[row][:col]
            i = csi.end()
            continue
        ch, i = raw[i], i + 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch >= " ":
            if col >= width:  # the terminal wraps a long line
                row, col = row + 1, 0
            lines.extend([] for _ in range(row + 1 - len(lines)))
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        lines.extend([] for _ in range(row + 1 - len(lines)))
    return ["".join(line).rstrip() for line in lines]


def test_terminal_screen_reads_cursor_moves_like_a_terminal():
    assert terminal_screen("one\ntwo\r\x1b[2K\x1b[1A\x1b[2Kthree\nfour", 80) == ["three", "four"]
    assert terminal_screen("abcdef", 4) == ["abcd", "ef"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_table_stays_one_copy_while_pairs_progress_and_others_write(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    console = Console(file=terminal, force_terminal=True, width=100, height=30)
    b = TrialBoard(["a", "b"], 10)
    with live_table(b, enabled=True, console=console, refresh_per_second=50) as on_event:
        time.sleep(0.1)
        for done in (16, 32, 48, 64):  # what `run_study` reports while it makes the teacher pairs
            on_event.on_pairs(done, 64, 100.0)
            time.sleep(0.05)
        print("a line from someone else")  # e.g. a library printing while Ray starts
        sys.stderr.write("a warning on stderr\n")
        time.sleep(0.1)
        on_event("a", "start", {})
        on_event("a", "train", {"step": 10, "loss": 0.5})
        on_event("a", "complete", {"latency_s": 0.1})
        time.sleep(0.1)
    screen = terminal_screen(terminal.getvalue(), 100)
    text = "\n".join(screen)
    assert sum(line.startswith("┃ trial") for line in screen) == 1, text  # the header, once
    assert sum("elapsed" in line for line in screen) == 1, text  # the title, once
    others = [screen.index("a line from someone else"), screen.index("a warning on stderr")]
    assert max(others) < min(i for i, line in enumerate(screen) if "elapsed" in line)  # above the table
    assert "teacher pairs 32/64" in terminal.getvalue()  # the pair progress was in the title meanwhile
    assert not any("teacher pairs" in line for line in screen)  # and is gone once the pairs are made


def test_live_table_is_never_taller_than_the_terminal():
    b = TrialBoard([f"trial-{n}" for n in range(60)], 10)
    for n in range(25):
        b.on_event(f"trial-{n}", "start", {})
    terminal = FakeTerminal()
    console = Console(file=terminal, force_terminal=True, width=100, height=24)
    with live_table(b, enabled=True, console=console, refresh_per_second=50) as on_event:
        on_event("trial-0", "start", {})
        time.sleep(0.1)
    screen = [line for line in terminal_screen(terminal.getvalue(), 100) if line]
    assert len(screen) <= 24 and any("more" in line for line in screen), "\n".join(screen)


def test_live_table_starts_with_the_first_event_so_earlier_lines_stay_plain():
    b = TrialBoard(["trial-0"], 10)
    terminal = FakeTerminal()
    console = Console(file=terminal, force_terminal=True, width=100, height=24)
    with live_table(b, enabled=True, console=console, refresh_per_second=50) as on_event:
        console.print("latency [1/1] d1-w16-h2 measured")  # the latency pass, before any trial
        time.sleep(0.1)
        assert "trial" not in terminal.getvalue()  # no table yet
        on_event("trial-0", "start", {})
        time.sleep(0.1)
    screen = [line for line in terminal_screen(terminal.getvalue(), 100) if line]
    assert screen[0] == "latency [1/1] d1-w16-h2 measured" and sum("┃ trial" in line for line in screen) == 1


def test_line_printer_prints_pairs_progress_per_quarter():
    b, _ = board_of(["a"])
    lines: list[str] = []
    printer = LinePrinter(b, lines.append)
    for done in range(0, 4097, 256):
        printer.on_pairs(done, 4096, 500.0)
    assert lines == [f"teacher pairs: {n}/4096 (500 pairs/s)" for n in (0, 1024, 2048, 3072, 4096)]


def test_trials_outside_the_constraints_are_finished_not_pending():
    b, clock = board_of(["a", "b"], steps=400)
    lines: list[str] = []
    p = LinePrinter(b, lines.append)
    p("b", "outside", {"reason": "over max latency 2ms/image\n(4.7 ms)", "latency_s": 1.2})
    assert b.trials["b"].state == "outside" and b.trials["b"].finished
    assert b.counts()["outside"] == 1 and b.counts()["pending"] == 1
    p("a", "start", {})
    clock.t = 10
    p("a", "train", {"step": 100, "loss": 1.0})
    assert b.eta() == pytest.approx(30)  # a's 300 steps left at 10 steps/s; b will never train
    row = {r["trial"]: r for r in b.rows()}["b"]
    assert (row["state"], row["latency"], row["error"]) == ("outside", "1.2 s", "over max latency 2ms/image")
    assert "    b not trained, outside the constraints: over max latency 2ms/image  [1/2 done]" in lines


def test_a_latency_known_before_training_and_a_contended_one_are_shown():
    b, _ = board_of(["a", "b"])
    b.on_event("a", "start", {"latency_s": 0.25, "latency_contended": False})
    assert {r["trial"]: r for r in b.rows()}["a"]["latency"] == "0.25 s"  # while it trains
    b.on_event("b", "start", {})
    b.on_event("b", "complete", {"params": 1, "fid": 2.0, "latency_s": 9.5, "latency_contended": True})
    assert b.trials["b"].state == "complete"
    assert {r["trial"]: r for r in b.rows()}["b"]["latency"] == "9.5 s contended"
    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    console.print(render_table(b))
    assert "9.5 s contended" in console.file.getvalue()


def test_summary_lines_say_what_was_outside_and_which_latencies_were_contended():
    contended = [{"trial_id": "dit-d2-w32-h4-get-l2", "candidate_id": "c"}]
    lines = summary_lines(num_complete=3, num_failed=0, front=FRONT, outside=2, contended=contended)
    assert lines[0] == "3 complete, 0 failed, 2 outside the constraints (not trained)"
    [line] = [line for line in lines if "contended" in line]
    assert line == ("latency contended: not ranked: dit-d2-w32-h4-get-l2 (latency measured while other work ran); "
                    "re-run `dse run` on a quiet machine; dse re-measures latencies it could not trust")
    assert "dit-d2-w32-h4-get-l2" not in "\n".join(line for line in lines if line.startswith("  "))  # not on the front
    empty = summary_lines(num_complete=1, num_failed=0, front=[], contended=contended)
    assert empty[1] == "Pareto front: empty (no trial has all of params, fid and an uncontended latency)"
    assert not any("contended" in line for line in summary_lines(num_complete=3, num_failed=0, front=FRONT))

    class Outcome:
        plan, report_path, num_complete, num_failed, skipped, front = None, "r.html", 3, 0, 0, FRONT
        outside = 2

    assert outcome_summary(Outcome())[0] == "3 complete, 0 failed, 2 outside the constraints (not trained)"
    Outcome.contended = contended
    assert any(line.startswith("latency contended: not ranked: dit-d2") for line in outcome_summary(Outcome()))
