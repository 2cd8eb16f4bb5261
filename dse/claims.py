"""Owns the cross-process claims that keep two processes of one study from running the same trial:
`claims/<trial_id>.claim` files, made with O_CREAT | O_EXCL, refreshed while held, taken over when
stale under a lock (no torch, no ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from dse.fileio import HOST, pid_alive

CLAIM_SUFFIX = ".claim"
CLAIM_TTL_S = 600.0  # a claim from another host not refreshed for this long is stale
CLAIM_REFRESH_S = 60.0  # how often a holder touches its claims

# A claim: `claims/<trial_id>.claim`, made with O_CREAT | O_EXCL, holding JSON {host, pid, started_at,
# token, proc_start}. Live if (same host, ours included) its process is alive, the same process
# (start time) and not a later one that reused its pid, or (another host) its mtime, refreshed by
# the holder every CLAIM_REFRESH_S, is younger than CLAIM_TTL_S. A stale claim is taken over under
# a lock file, so two processes cannot both take over the same one.


def _proc_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), so a pid reused by another
    process is not mistaken for the claimer; None where /proc does not tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Claim:
    """One claim file as read back; `host` is "" for a file that is not (yet) valid JSON."""

    trial_id: str
    path: Path
    host: str
    pid: int
    started_at: str
    token: str
    proc_start: int | None
    mtime: float

    @property
    def age_s(self) -> float:
        """Seconds since the holder last refreshed it."""
        return time.time() - self.mtime

    def is_ours(self) -> bool:
        return self.host == HOST and self.pid == os.getpid()

    def is_live(self, ttl: float = CLAIM_TTL_S) -> bool:
        if self.host == HOST:  # ours, or another process here: live while that process runs
            if not pid_alive(self.pid):
                return False
            now = _proc_start(self.pid)
            return self.proc_start is None or now is None or now == self.proc_start
        return self.age_s < ttl  # another host, or a file still being written: by its age

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "age_s": round(self.age_s, 1)}


def read_claim(path: Path) -> Claim | None:
    """The claim at `path`, or None if it is gone."""
    try:
        st = path.stat()
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(text)
        host, pid = str(data["host"]), int(data["pid"])
        started, token, start = str(data.get("started_at", "")), str(data.get("token", "")), data.get("proc_start")
    except (ValueError, KeyError, TypeError):  # empty (just created) or damaged: judged by age alone
        host, pid, started, token, start = "", -1, "", "", None
    return Claim(path.name[: -len(CLAIM_SUFFIX)], path, host, pid, started, token,
                 start if isinstance(start, int) else None, st.st_mtime)


def read_claims(claims_dir: Path) -> dict[str, Claim]:
    """Every claim file in `claims_dir`, live or stale, by trial id (none when the folder does not exist)."""
    d = Path(claims_dir)
    found = (read_claim(p) for p in sorted(d.glob(f"*{CLAIM_SUFFIX}"))) if d.is_dir() else ()
    return {c.trial_id: c for c in found if c is not None}


@contextlib.contextmanager
def _takeover_lock(claims_dir: Path) -> Iterator[None]:
    """Serialise takeovers of stale claims between processes (flock; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(claims_dir / ".takeover.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ClaimSet:
    """This process's claims on some trials of a store; see `ResultsStore.claim`."""

    def __init__(self, claims_dir: Path, trial_ids: list[str], *, ttl: float = CLAIM_TTL_S,
                 refresh_every: float = CLAIM_REFRESH_S):
        self.dir = Path(claims_dir)
        self.wanted = list(dict.fromkeys(trial_ids))
        self.ttl, self.refresh_every = ttl, refresh_every
        self.token = uuid.uuid4().hex
        self.busy: list[str] = []  # held by another live process
        self.lost: list[str] = []  # taken over by another process while we held them
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:  # picklable (Ray Tune pickles the callbacks that release claims)
        with self._lock:
            state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_stop", "_thread")}
            state["_held"] = set(self._held)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _stop=threading.Event(), _thread=None)

    @property
    def got(self) -> list[str]:
        """The ids this set holds, in the order they were asked for."""
        with self._lock:
            return [t for t in self.wanted if t in self._held]

    def __contains__(self, trial_id: str) -> bool:
        with self._lock:
            return trial_id in self._held

    def __enter__(self) -> ClaimSet:
        if self.wanted:
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            for tid in self.wanted:
                if self._acquire(tid):
                    continue
                self.busy.append(tid)
        except BaseException:
            self.release()
            raise
        if self._held and self.refresh_every > 0:
            self._thread = threading.Thread(target=self._refresh_loop, name="dse-claims", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release()

    def _path(self, trial_id: str) -> Path:
        return self.dir / f"{trial_id}{CLAIM_SUFFIX}"

    def _create(self, trial_id: str) -> bool:
        """O_EXCL-create our claim file; False if one exists."""
        path = self._path(trial_id)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        data = {"host": HOST, "pid": os.getpid(), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "token": self.token, "proc_start": _proc_start(os.getpid())}
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        with self._lock:
            self._held.add(trial_id)
        return True

    def _still_ours(self, trial_id: str) -> bool:
        current = read_claim(self._path(trial_id))
        return current is not None and current.token == self.token

    def _acquire(self, trial_id: str) -> bool:
        if self._create(trial_id):
            return True
        with _takeover_lock(self.dir):
            current = read_claim(self._path(trial_id))
            if current is not None and current.is_live(self.ttl):
                return False
            if current is not None:  # stale: taken over (no one else can be doing it: we hold the lock)
                self._path(trial_id).unlink(missing_ok=True)
            if self._create(trial_id):
                return True
        current = read_claim(self._path(trial_id))  # made meanwhile by a plain create: theirs now
        return False if current is None or current.is_live(self.ttl) else self._acquire(trial_id)

    def refresh(self) -> None:
        """Touch our claim files (so other hosts see them live); a claim found replaced is `lost`."""
        with self._lock:
            for tid in sorted(self._held):
                try:
                    if not self._still_ours(tid):
                        raise FileNotFoundError
                    os.utime(self._path(tid))
                except FileNotFoundError:
                    self._held.discard(tid)
                    self.lost.append(tid)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_every):
            with contextlib.suppress(OSError):
                self.refresh()

    def release(self, trial_ids: Iterable[str] | None = None) -> None:
        """Remove our claims (on `trial_ids` only, if given); a claim taken over meanwhile is left alone."""
        with self._lock:
            for tid in sorted(self._held) if trial_ids is None else list(trial_ids):
                if tid not in self._held:
                    continue
                self._held.discard(tid)
                if self._still_ours(tid):
                    self._path(tid).unlink(missing_ok=True)
