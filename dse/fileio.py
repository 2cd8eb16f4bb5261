"""Owns writing files atomically: a temporary file in the same folder, then `os.replace`, so a
reader sees the old file or the new one, never half of one (no torch, no ray)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces `path` when the block ends without an error; on an error
    the temporary file is removed and `path` is left as it was. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    import torch

    from dse.errors import DseError

    if not path.is_file():
        raise DseError(f"{what} {path} not found; {missing_hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated, foreign or unsafe file
        raise DseError(f"{path} is corrupt or not a {what} ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        hint = " (this is a trainer checkpoint)" if isinstance(state, dict) and "optimizer" in state else ""
        raise DseError(f"{path} is not a {what} ({fmt}){hint}")
    return state
