"""Owns writing files atomically: a temporary file in the same folder, then `os.replace`, so a
reader sees the old file or the new one, never half of one; the removal of the temporary files that
interrupted writes leave behind; and whether a folder can be written before anything is (no torch, no ray).

A temporary file is named `.<name>.dse-<host>-<pid>-<random>.tmp`: the next atomic write to its
folder removes it once its writer is gone (a process of this host that no longer runs), or when it
is older than STALE_TMP_S whoever wrote it. Several processes write one folder at once (parallel
trials write `trials/*.parquet`), so a live writer's file is never removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from dse.errors import DseError, first_sentence, one_line

HOST = socket.gethostname()
STALE_TMP_S = 24 * 3600.0  # a temporary file this old is a leftover, whoever wrote it
_HOST_TAG = re.sub(r"[^A-Za-z0-9_-]", "_", HOST)  # the host as it can stand in a file name
_TMP = re.compile(r"\.dse-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")  # after `.<name>`
_OLD_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # written before the writer was in the name


def pid_alive(pid: int) -> bool:
    """True when a process with id `pid` runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in `folder` (see the module
    docstring); returns those removed. A live writer's file is kept."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        own = _TMP.search(path.name)
        if own is None and not _OLD_TMP.match(path.name):
            continue  # not a file of ours
        try:
            old = time.time() - path.stat().st_mtime > STALE_TMP_S
            if old or (own is not None and own["host"] == _HOST_TAG and not pid_alive(int(own["pid"]))):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile by another writer
            continue
    return removed


def check_folder(path: str | Path, what: str = "folder") -> Path:
    """`path` when it is a folder this process can write in, or one it can create; nothing is
    created. Else a DseError naming `what`, the path and why (a file in the way, read-only)."""
    p = Path(path)
    for part in (p.absolute(), *p.absolute().parents):
        if part.is_dir():
            if not os.access(part, os.W_OK | os.X_OK):  # EROFS counts, for root too
                why = "read-only file system" if _read_only(part) else "permission denied"
                raise DseError(f"{what} {p} cannot be written: {part} is not writable ({why}); choose another folder")
            return p
        if part.exists() or part.is_symlink():
            where = "" if part == p.absolute() else f" ({part} is a file)"
            raise DseError(f"{what} {p} is not a folder{where}; choose another path or remove the file")
    return p


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces `path` when the block ends without an error; on an error
    the temporary file is removed and `path` is left as it was. Creates the parent folder, and
    removes the leftovers of interrupted writes in it first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
    prefix = f".{path.name}.dse-{_HOST_TAG}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, mode)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` atomically."""
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def load_format_file(path: Path, fmt: str, what: str, missing_hint: str) -> dict:
    """A dse checkpoint dict whose "format" is `fmt`, read with `torch.load(..., weights_only=True)`
    on CPU (nothing in the file is executed). A missing, unreadable or foreign file is a DseError
    naming `what` it should have been; `missing_hint` says how to get one."""
    if not path.is_file():
        raise DseError(f"{what} {path} not found; {missing_hint}")
    state = load_weights_only(path, what)
    if not isinstance(state, dict) or state.get("format") != fmt:
        hint = " (this is a trainer checkpoint)" if isinstance(state, dict) and "optimizer" in state else ""
        raise DseError(f"{path} is not a {what} ({fmt}){hint}")
    return state


def load_weights_only(path: str | Path, what: str, allowed: list | tuple = ()) -> object:
    """`torch.load(path, map_location="cpu", weights_only=True)` (with the extra `allowed` globals,
    e.g. numpy's array types): nothing in the file runs. An empty, truncated or foreign file, or one
    whose loading would run code, is a one-line DseError naming the file and `what` it should be."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")  # e.g. torch's note on an unusual pickle protocol
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused the file's contents
        detail = first_sentence(str(exc).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0])
        if "Unsupported global" in detail or _calls_code(Path(path)):
            raise DseError(f"{path} was refused: it holds more than tensors, numbers and strings, and loading it "
                           f"could run code from the file ({detail}); it is not a {what}") from None
        raise DseError(f"{path} is corrupt or not a {what} (UnpicklingError: {detail})") from None
    except IsADirectoryError:
        raise DseError(f"{path} is a folder, not a {what}") from None
    except OSError as exc:
        if exc.filename is not None:  # an OS failure on a named file (permission, I/O): the CLI's guard says so
            raise
        # torch's zip reader on a truncated archive: "[Errno 22] Invalid argument", naming no file
        raise DseError(f"{path} is corrupt or not a {what} ({one_line(exc)})") from None
    except (EOFError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        if Path(path).stat().st_size == 0:
            raise DseError(f"{path} is empty, not a {what}") from None
        raise DseError(f"{path} is corrupt or not a {what} ({one_line(exc)})") from None


def _calls_code(path: Path) -> bool:
    """True when `path` is a plain pickle that imports or calls something, found by reading its opcodes
    with pickletools (nothing in it runs); False for anything else, a damaged file included."""
    import pickletools

    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE") for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a pickle, or a damaged one: genops raises several types
        return False
