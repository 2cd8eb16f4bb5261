"""Owns what a user sees while a study runs: a live table of trials and the closing summary.

Three parts, each usable on its own:

- `TrialBoard`: pure state. Feed it the executor's events, `on_event(trial_id, kind, data)`, and it
  keeps per trial its state, step, loss, metrics and ETA, and for the study the counts per state
  and an overall ETA. No terminal needed; a fake clock makes it deterministic in tests.
- `live_table(board, enabled=...)`: a context manager yielding the `on_event` callable to give to
  `run_study` (its `on_pairs` method takes the teacher-pair progress). On a terminal it shows a
  `rich` live table refreshed a few times a second, with the pair progress in its title; otherwise
  (logs, CI, `enabled=False`) it prints one plain line per significant event, with train lines
  throttled to about one per 10% of a trial's steps and pair lines to one per quarter.
  While the live table is up, everything written to sys.stdout / sys.stderr is printed above it
  (rich's redirection), and nothing of dse writes to the terminal behind its back: a line written
  past the table would leave a stale copy of the table's top on screen at every redraw.
- `summary_lines(...)`: the lines printed at the end (counts, the points of the noise-aware Pareto
  front with their FID intervals and which are tied, the study's warnings, where the results and
  the report are), from plain inputs.

Events (`dse.events`, from `dse.executor.Events` and `dse.study`):
START {} (or with latency_s, latency_contended: the latency measured before training), TRAIN {step, loss},
COMPLETE {status, params, fid, latency_s, latency_contended, ...}, FAILED {error}, STOPPED {error},
LATENCY {latency_s, latency_num_images, latency_onnx_cpu_s, ...} (the re-check after training) and
OUTSIDE {reason, latency_s, ...}: a trial not trained because its candidate is outside the study's
constraints (finished, state "outside"). A latency that was contended is shown as such: it is not ranked.

ETAs count training steps only. A running trial's rate is the steps it made between its first and
its last train event over the time between them (from its start event while it has only one); its
ETA is its remaining steps over that rate, counted down from its last event. The study's ETA is the
remaining steps of every unfinished trial (pending ones in full) over the aggregate step rate of the
last minute (the steps all trials made in it, over the minute, or over the time since the first
trial started when that is shorter); time spent on FID and latency is not modelled, but it lowers
that rate while it runs, so the estimate leans long rather than short. With no steps in the last
minute it falls back to the sum of the running trials' own rates.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dse.errors import first_line
from dse.events import COMPLETE, FAILED, LATENCY, OUTSIDE, START, STOPPED, TRAIN, OnEvent
from dse.stats import CONFIDENCE, CONTENDED_FIX, CONTENDED_STATUS

# A trial's state on the board: the row statuses COMPLETE, FAILED, STOPPED, OUTSIDE (never trained: outside
# the constraints; dse.events) and these.
PENDING, RUNNING, TRAINED, STORED = "pending", "running", "trained", "stored"
STATES = (RUNNING, PENDING, TRAINED, COMPLETE, FAILED, STOPPED, OUTSIDE, STORED)  # the order of the counts
FINISHED = frozenset({TRAINED, COMPLETE, FAILED, STOPPED, OUTSIDE, STORED})
CONTENDED = "contended"  # what the latency cell adds to a latency measured while other work ran
RATE_WINDOW_S = 60.0  # the study ETA's rate is measured over the last minute


def format_duration(seconds: float | None) -> str:
    """42s, 1m20s, 2h05m; "-" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _num(value: Any, fmt: str = ".3f") -> str:
    """A metric as text: `fmt`, or "-" when it was not measured (None, NaN, not a number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else format(v, fmt)


@dataclass
class TrialState:
    """What the board knows about one trial."""

    trial_id: str
    order: int  # position in the plan
    total_steps: int | None = None
    state: str = PENDING
    step: int = 0
    loss: float | None = None
    params: int | None = None
    fid: float | None = None
    latency_s: float | None = None
    latency_contended: bool = False  # measured while other work ran: not ranked
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    rate_ref: tuple[float, int] | None = None  # (time, step) the step rate is measured from
    last_train: tuple[float, int] | None = None  # (time, step) of the latest train event
    start_seq: int = 0  # the how-many-th start this was, for ordering
    train_events: int = 0  # since its start

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def rate(self) -> float | None:
        """Steps per second since the first train event (or the start, with one train event only)."""
        if self.rate_ref is None or self.last_train is None:
            return None
        (t0, s0), (t1, s1) = self.rate_ref, self.last_train
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def remaining_steps(self) -> int | None:
        if self.finished:
            return 0
        return None if self.total_steps is None else max(0, self.total_steps - self.step)

    def eta(self, now: float) -> float | None:
        """Seconds until its training ends, counted down from its last train event; None if unknown."""
        if self.state != RUNNING:
            return None
        rate, remaining = self.rate(), self.remaining_steps()
        if rate is None or remaining is None or self.last_train is None:
            return None
        return max(0.0, remaining / rate - (now - self.last_train[0]))

    def activity(self) -> str:
        """The state as shown: a running trial is starting, training or evaluating (steps all done)."""
        if self.state != RUNNING:
            return self.state
        if self.last_train is None:
            return "starting"
        return "evaluating" if self.total_steps and self.step >= self.total_steps else "training"


@dataclass
class TrialBoard:
    """Per-trial state of a study, updated from executor events; thread-safe, terminal-free.

    `total_steps` is one number for every trial or a dict per trial id (missing or 0: unknown, shown
    without a total and without an ETA). `stored` names trials already complete in the store: those
    of `trial_ids` are shown as "stored" and not waited for; the others are ignored.
    """

    trial_ids: Sequence[str]
    total_steps: dict[str, int] | int | None = None
    clock: Callable[[], float] = time.monotonic
    stored: Sequence[str] = ()
    trials: dict[str, TrialState] = field(init=False)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._starts = 0
        self._first_start: float | None = None
        self._created = self.clock()
        self._increments: deque[tuple[float, int]] = deque()  # (time, steps made) of every train event
        self.pairs: tuple[int, int, float] | None = None  # (done, total, pairs/s) of the teacher pairs
        self.trials = {}
        for tid in self.trial_ids:
            self._add(tid)
        for tid in self.stored:
            if tid in self.trials:  # the store may hold trials of other plans
                self.trials[tid].state = STORED

    # -- updates -------------------------------------------------------------------------------
    def _steps_of(self, trial_id: str) -> int | None:
        total = self.total_steps.get(trial_id) if isinstance(self.total_steps, dict) else self.total_steps
        return int(total) if total else None

    def _add(self, trial_id: str) -> TrialState:
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialState(trial_id, len(self.trials), self._steps_of(trial_id))
        return self.trials[trial_id]

    def on_event(self, trial_id: str, kind: str, data: dict | None = None) -> None:
        """Take one executor event; unknown kinds are ignored, unknown trials are added."""
        data = data or {}
        now = self.clock()
        with self._lock:
            t = self._add(trial_id)
            if kind == START:
                self._starts += 1
                if self._first_start is None:
                    self._first_start = now
                t.state, t.step, t.loss, t.error = RUNNING, 0, None, ""
                t.started_at, t.finished_at, t.rate_ref, t.last_train = now, None, None, None
                t.start_seq, t.train_events = self._starts, 0
                self._latency(t, data)  # measured before training, when the event says it
            elif kind == TRAIN:
                self._train(t, now, int(data.get("step", t.step)), data.get("loss"))
            elif kind == COMPLETE:
                self._finish(t, now, COMPLETE if _num(data.get("latency_s")) != "-" else TRAINED)
                t.params = data.get("params", t.params)
                t.fid = data.get("fid", t.fid)
                self._latency(t, data)
                if t.total_steps and t.step < t.total_steps and t.last_train is not None:
                    t.step = t.total_steps  # trained to the end; the last train event may be a few steps short
            elif kind == LATENCY:
                self._latency(t, data)
                t.params = data.get("params", t.params)
                t.fid = data.get("fid", t.fid)
                self._finish(t, now, COMPLETE)
            elif kind == OUTSIDE:
                self._latency(t, data)
                t.params = data.get("params", t.params)
                t.error = first_line(data.get("reason")) or "outside the constraints"
                self._finish(t, now, OUTSIDE)
            elif kind in (FAILED, STOPPED):
                t.error = first_line(data.get("error")) or kind  # FAILED or STOPPED: the status names itself
                self._finish(t, now, kind)

    def on_pairs(self, done: int, total: int, rate: float) -> None:
        """Take the progress of the teacher pairs made before the trials start."""
        with self._lock:
            self.pairs = (done, total, rate)

    def _train(self, t: TrialState, now: float, step: int, loss: Any) -> None:
        if t.state == PENDING:  # a train event without a start (e.g. a missed callback)
            t.state, t.started_at = RUNNING, now
        made = max(0, step - t.step)
        if made:
            self._increments.append((now, made))
        t.train_events += 1
        if t.train_events == 1:  # one train event: the rate is measured from the start
            t.rate_ref = (t.started_at, 0) if t.started_at is not None and t.started_at < now else None
        elif t.train_events == 2:  # from then on: from the first train event
            t.rate_ref = t.last_train
        t.last_train = (now, step)
        t.step = step
        if t.total_steps is not None and step > t.total_steps:
            t.total_steps = step
        try:
            t.loss = float(loss) if loss is not None else t.loss
        except (TypeError, ValueError):
            pass

    @staticmethod
    def _latency(t: TrialState, data: dict) -> None:
        if data.get("latency_s") is not None:
            t.latency_s = data["latency_s"]
            t.latency_contended = bool(data.get("latency_contended"))

    @staticmethod
    def _finish(t: TrialState, now: float, state: str) -> None:
        t.state = state
        t.finished_at = now

    # -- queries -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trials per state, every state present (0 when none)."""
        with self._lock:
            out = dict.fromkeys(STATES, 0)
            for t in self.trials.values():
                out[t.state] += 1
            return out

    def aggregate_rate(self, now: float | None = None) -> float | None:
        """Steps per second over all trials in the last minute (see the module docstring)."""
        now = self.clock() if now is None else now
        with self._lock:
            cutoff = now - RATE_WINDOW_S
            while self._increments and self._increments[0][0] <= cutoff:
                self._increments.popleft()
            steps = sum(n for _, n in self._increments)
            since = max(cutoff, self._first_start if self._first_start is not None else now)
            if steps and now > since:
                return steps / (now - since)
            rates = [r for t in self.trials.values() if t.state == RUNNING and (r := t.rate())]
            return sum(rates) if rates else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until every unfinished trial has trained; 0 when all are finished, None if unknown."""
        now = self.clock() if now is None else now
        with self._lock:
            remaining = [t.remaining_steps() for t in self.trials.values()]
            if any(r is None for r in remaining):
                return None
            left = sum(remaining)
            if left == 0:
                return 0.0
            rate = self.aggregate_rate(now)
            return left / rate if rate else None

    def elapsed(self) -> float:
        """Seconds since the board was made."""
        return self.clock() - self._created

    def ordered(self) -> list[TrialState]:
        """Running (in start order), then pending (plan order), then finished (latest first)."""
        with self._lock:
            ts = list(self.trials.values())
        running = sorted((t for t in ts if t.state == RUNNING), key=lambda t: t.start_seq)
        pending = sorted((t for t in ts if t.state == PENDING), key=lambda t: t.order)
        done = sorted((t for t in ts if t.finished),
                      key=lambda t: (-(t.finished_at if t.finished_at is not None else -math.inf), t.order))
        return running + pending + done

    def row(self, t: TrialState, now: float | None = None) -> dict[str, str]:
        """What the table shows of one trial, as text."""
        now = self.clock() if now is None else now
        step = f"{t.step}/{t.total_steps}" if t.total_steps else (str(t.step) if t.step else "-")
        if t.state in (PENDING, STORED):
            step = "-" if t.state == STORED or not t.total_steps else f"0/{t.total_steps}"
        return {
            "trial": t.trial_id, "state": t.activity(), "step": step,
            "loss": _num(t.loss, ".4f"), "fid": _num(t.fid, ".3f"),
            "latency": _latency_text(t.latency_s, t.latency_contended),
            "eta": format_duration(t.eta(now)) if t.state == RUNNING else "-",
            "error": t.error,
        }

    def rows(self) -> list[dict[str, str]]:
        """Every trial's row, in `ordered()` order."""
        now = self.clock()
        with self._lock:
            return [self.row(t, now) for t in self.ordered()]

    def headline(self) -> str:
        """One line: counts per non-empty state, elapsed time and the study's ETA."""
        counts = self.counts()
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        eta = self.eta()
        text = ", ".join(parts) or "no trials"
        if self.pairs is not None and self.pairs[0] < self.pairs[1]:
            done, total, rate = self.pairs
            text = f"teacher pairs {done:,}/{total:,} ({rate:,.0f}/s); {text}"
        text += f"; elapsed {format_duration(self.elapsed())}"
        if counts[RUNNING] or counts[PENDING]:
            text += f"; ETA {format_duration(eta)}"
        return text

    def visible(self, max_rows: int = 20) -> tuple[list[dict[str, str]], int]:
        """The rows a screenful shows and how many are left out: every running trial first, then a
        few pending ones, then the latest finished, then more pending ones; shown in `ordered()` order."""
        now = self.clock()
        with self._lock:
            ts = self.ordered()
            running = [t for t in ts if t.state == RUNNING]
            pending = [t for t in ts if t.state == PENDING]
            done = [t for t in ts if t.finished]
            room = max_rows
            shown_running = running[:room]
            room -= len(shown_running)
            few_pending = min(3, len(pending), room)
            room -= few_pending
            shown_done = done[:room]
            room -= len(shown_done)
            shown_pending = pending[:few_pending + room]
            chosen = shown_running + shown_pending + shown_done
            return [self.row(t, now) for t in chosen], len(ts) - len(chosen)


# -- rendering ---------------------------------------------------------------------------------
COLUMNS = (("trial", "left"), ("state", "left"), ("step", "right"), ("loss", "right"),
           ("fid", "right"), ("latency", "right"), ("eta", "right"))
_STYLE = {"training": "cyan", "starting": "cyan", "evaluating": "cyan", COMPLETE: "green", TRAINED: "green",
          FAILED: "red", STOPPED: "yellow", OUTSIDE: "dim", STORED: "dim", PENDING: "dim"}


TABLE_CHROME_LINES = 7  # lines of the live table besides its rows (title, borders, header, "+N more", one spare)
_MIN_WIDTHS = {"state": 8, "step": 7, "loss": 6, "fid": 6, "latency": 8, "eta": 5}


def render_table(board: TrialBoard, max_rows: int = 20):
    """The board as a `rich.table.Table` of at most `max_rows` trials plus a "+N more" line."""
    from rich.table import Table
    from rich.text import Text

    rows, hidden = board.visible(max_rows)
    table = Table(title=board.headline(), title_justify="left", expand=False)
    for name, justify in COLUMNS:  # on a narrow terminal only the trial id is shortened
        trial = name == "trial"  # folds onto a second line when the terminal is narrow
        table.add_column("ETA" if name == "eta" else name, justify=justify, no_wrap=not trial,
                         overflow="fold" if trial else "ellipsis", max_width=48 if trial else None,
                         min_width=_MIN_WIDTHS.get(name, 12))
    for r in rows:
        state = Text(r["state"], style=_STYLE.get(r["state"], ""))
        if r["error"]:
            state.append(f" {r['error'][:40]}", style="dim")
        table.add_row(r["trial"], state, r["step"], r["loss"], r["fid"], r["latency"], r["eta"])
    if hidden:
        table.add_row(Text(f"+{hidden} more", style="dim"), "", "", "", "", "", "")
    return table


class LinePrinter:
    """The plain fallback: one line per start, finish, failure, stop and latency, and train lines
    throttled per trial to one per 10% of its steps (plus the last step), or one per `heartbeat_s`
    at most while a trial's total is unknown or its next 10% is far off."""

    def __init__(self, board: TrialBoard, echo: Callable[[str], None] = print, heartbeat_s: float = 60.0):
        self.board, self.echo, self.heartbeat_s = board, echo, heartbeat_s
        self._last: dict[str, tuple[float, int]] = {}  # trial -> (time, decile) of its last train line
        self._pairs_quarter = -1  # the quarter of the pairs last printed

    def on_pairs(self, done: int, total: int, rate: float) -> None:
        """A line per quarter of the teacher pairs made, and one at the end."""
        self.board.on_pairs(done, total, rate)
        quarter = 4 * done // max(1, total)
        if quarter != self._pairs_quarter or done == total:
            self._pairs_quarter = quarter
            self.echo(f"teacher pairs: {done}/{total} ({rate:,.0f} pairs/s)")

    def __call__(self, trial_id: str, kind: str, data: dict | None = None) -> None:
        data = data or {}
        b = self.board
        b.on_event(trial_id, kind, data)
        t = b.trials[trial_id]
        n = len(b.trials)
        if kind == START:
            self._last.pop(trial_id, None)
            self.echo(f"[{t.start_seq}/{n}] {trial_id} started")
        elif kind == TRAIN:
            line = self._train_line(t)
            if line:
                self.echo(line)
        elif kind == COMPLETE:
            self.echo(f"    {trial_id} trained: {_count(t.params)} params, fid {_num(t.fid)}"
                      + (f", latency {_latency_text(t.latency_s, t.latency_contended)}" if t.state == COMPLETE else "")
                      + f"  [{_done(b)}/{n} done]")
        elif kind == OUTSIDE:
            self.echo(f"    {trial_id} not trained, outside the constraints: {t.error}  [{_done(b)}/{n} done]")
        elif kind == LATENCY:
            onnx = data.get("latency_onnx_cpu_s")
            self.echo(f"    {trial_id} latency {_num(t.latency_s, '.4g')} s for {data.get('latency_num_images', '?')} images"
                      + (f", onnxruntime {_num(onnx, '.4g')} s" if _num(onnx) != "-" else ""))
        elif kind == FAILED:
            self.echo(f"    {trial_id} FAILED: {t.error}  [{_done(b)}/{n} done]")
        elif kind == STOPPED:
            self.echo(f"    {trial_id} stopped: {t.error}  [{_done(b)}/{n} done]")

    def _train_line(self, t: TrialState) -> str | None:
        now = self.board.clock()
        last = self._last.get(t.trial_id)  # (time, decile) of the trial's last train line
        if t.total_steps:
            decile = min(10, 10 * t.step // t.total_steps)
            due = decile > (last[1] if last else 0)
        else:
            decile, due = 0, last is None
        since = last[0] if last else t.started_at
        if not due and since is not None and now - since >= self.heartbeat_s:
            due = True
        if not due:
            return None
        self._last[t.trial_id] = (now, max(decile, last[1] if last else 0))
        step = f"{t.step}/{t.total_steps}" if t.total_steps else str(t.step)
        eta = t.eta(now)
        return (f"    {t.trial_id} step {step} loss {_num(t.loss, '.4f')}"
                + (f", ETA {format_duration(eta)}" if eta is not None else ""))


def _latency_text(latency_s: Any, contended: bool = False) -> str:
    """'0.512 s', '0.512 s contended' (measured while other work ran: not ranked), '-' when unknown."""
    text = _num(latency_s, ".4g")
    return "-" if text == "-" else f"{text} s" + (f" {CONTENDED}" if contended else "")


def _count(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "-"


def _done(board: TrialBoard) -> int:
    counts = board.counts()
    return sum(counts[s] for s in FINISHED)


@contextlib.contextmanager
def live_table(board: TrialBoard, *, enabled: bool = True, console=None, echo: Callable[[str], None] | None = None,
               max_rows: int = 20, refresh_per_second: float = 4.0) -> Iterator[OnEvent]:
    """Show the board while the block runs; yields the `on_event` to hand to `run_study`, whose
    `on_pairs` method takes the teacher-pair progress (`run_study`'s `on_pairs`).

    Live (a `rich` table, redrawn `refresh_per_second` times a second, kept on screen at the end; it
    starts with the first event or pair progress, so the lines printed before, such as the latency pass,
    stay plain lines above it) when `enabled` and the output is a terminal (`console.is_terminal` if a console is given, else
    `sys.stdout.isatty()`); failures and stops are also printed above it, so they stay in the
    scrollback, and so is whatever is written to sys.stdout / sys.stderr meanwhile. The table is
    never taller than the terminal (rows beyond it are counted in "+N more"). Otherwise every
    event goes through a `LinePrinter` writing with `echo` (default: print to stdout).
    """
    is_terminal = console.is_terminal if console is not None else sys.stdout.isatty()
    if not (enabled and is_terminal):
        yield LinePrinter(board, echo or (lambda line: print(line, flush=True)))
        return
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    rows = max(1, min(max_rows, console.height - TABLE_CHROME_LINES))

    with contextlib.ExitStack() as stack:
        shown: list = []  # the Live display, once started

        def live():
            """The Live display, started at the first event: what is printed before (the latency pass,
            measured before any trial) stays plain lines above it, never under a table being redrawn."""
            if not shown:
                shown.append(stack.enter_context(Live(
                    console=console, get_renderable=lambda: render_table(board, rows),
                    refresh_per_second=refresh_per_second, transient=False, redirect_stdout=True,
                    redirect_stderr=True)))
            return shown[0]

        def on_event(trial_id: str, kind: str, data: dict | None = None) -> None:
            board.on_event(trial_id, kind, data)
            display = live()
            if kind in (FAILED, STOPPED):
                style = "red" if kind == FAILED else "yellow"
                display.console.print(f"{trial_id} {kind}: {board.trials[trial_id].error}", style=style,
                                      markup=False, highlight=False)

        def on_pairs(done: int, total: int, rate: float) -> None:
            board.on_pairs(done, total, rate)  # shown in the table's title
            live()

        on_event.on_pairs = on_pairs
        yield on_event


# -- the end -----------------------------------------------------------------------------------
def _fid_parts(row: dict) -> tuple[str, str]:
    """A point's FID and the half-width of its interval ("36.1", "1.8"); "" for the latter when no
    interval is known."""
    fid = _num(row.get("fid"), ".1f")
    try:
        half = (float(row["fid_high"]) - float(row["fid_low"])) / 2
    except (KeyError, TypeError, ValueError):
        return fid, ""
    return fid, (f"{half:.1f}" if fid != "-" and math.isfinite(half) and half > 0 else "")


def _fid_cells(rows: Sequence[dict]) -> list[str]:
    """The FIDs of `rows` as "36.1 ± 1.8", "36.1" where no interval is known, aligned on the mean."""
    parts = [_fid_parts(r) for r in rows]
    wm = max((len(m) for m, _ in parts), default=0)
    wh = max((len(h) for _, h in parts), default=0)
    return [m.rjust(wm) + (f" ± {h.rjust(wh)}" if h else " " * (wh + 3) if wh else "") for m, h in parts]


def summary_lines(
    *, num_complete: int, num_failed: int, num_stopped: int = 0, skipped: int = 0, elsewhere: int = 0,
    front: Sequence[dict] = (), results: str | Path | None = None, report: str | Path | None = None,
    elapsed_s: float | None = None, warnings: Sequence[str] = (), outside: int = 0, contended: Sequence[dict] = (),
) -> list[str]:
    """The closing lines: counts (`outside`: trials not trained, their candidate outside the
    constraints), the points of the noise-aware Pareto front as an aligned table (trial, n, params,
    fid ± the half-width of its CONFIDENCE interval, latency, status front/tied; rows as
    `StudyOutcome.front` has them), the points whose latency was contended (`contended`: rows with
    trial_id or candidate_id; not ranked) and how to measure them again, the warnings
    (`StudyOutcome.warnings`), where the results and the report are."""
    counts = [f"{num_complete} complete", f"{num_failed} failed"]
    if num_stopped:
        counts.append(f"{num_stopped} stopped")
    if outside:
        counts.append(f"{outside} outside the constraints (not trained)")
    if skipped:
        counts.append(f"{skipped} already in the store")
    if elsewhere:
        counts.append(f"{elsewhere} running elsewhere (skipped)")
    lines = [", ".join(counts) + (f" in {format_duration(elapsed_s)}" if elapsed_s is not None else "")]
    if front:
        pct = f"{100 * CONFIDENCE:g}%"
        lines.append(f"Pareto front ({len(front)} point{'s' if len(front) != 1 else ''}; params, fid, latency all "
                     f"minimised; fid: mean ± half its {pct} interval; tied: the data cannot separate it from a "
                     f"front point at {pct}):")
        table = [("trial", "n", "params", "fid", "latency", "status")] + [
            (str(r.get("trial_id", "?")), _count(r.get("n")), _count(r.get("params")), fid,
             _latency_text(r.get("latency_s")),
             CONTENDED_STATUS if r.get("latency_contended") in (True, 1) else str(r.get("front_status") or "-"))
            for r, fid in zip(front, _fid_cells(front))
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  " + "  ".join(
                cell.ljust(w) if i in (0, 5) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    else:
        lines.append("Pareto front: empty (no trial has all of params, fid and "
                     + ("an uncontended latency)" if contended else "latency)"))
    if contended:
        names = ", ".join(str(r.get("trial_id") or r.get("candidate_id") or "?") for r in contended)
        lines.append(f"{CONTENDED_STATUS}: {names} (latency measured while other work ran); {CONTENDED_FIX}")
    lines += [f"warning: {w}" for w in warnings]
    if results is not None:
        lines.append(f"results: {results}")
    if report is not None:
        lines.append(f"report:  {report}")
    return lines


def outcome_summary(outcome: Any, elapsed_s: float | None = None) -> list[str]:
    """`summary_lines` of a `dse.study.StudyOutcome` (read by attribute, so this module imports no study code)."""
    plan = getattr(outcome, "plan", None)
    store = getattr(plan, "store", None)
    return summary_lines(
        num_complete=outcome.num_complete, num_failed=outcome.num_failed,
        num_stopped=getattr(outcome, "num_stopped", 0), skipped=getattr(outcome, "skipped", 0),
        elsewhere=getattr(outcome, "elsewhere", 0),
        front=outcome.front, results=f"{store.root}/*.parquet" if store is not None else None,
        report=getattr(outcome, "report_path", None), elapsed_s=elapsed_s,
        warnings=getattr(outcome, "warnings", ()), outside=getattr(outcome, "outside", 0),
        contended=getattr(outcome, "contended", ()),
    )
