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
