"""Owns the latency cache: a candidate's latency measured once on a device is not measured again by
any later study on that device.

An entry is one JSON file `<results_dir>/latency_cache/<key>.json` (dse.layout), written atomically,
so studies running side by side share the cache without a lock (the same key measured twice at once
is written twice with equivalent content). The key is a sha256 over what the latency depends on:

- the architecture (depth, width, heads, mlp_ratio, patch_size) and the geometry (image size,
  channels, classes): not the trained weights, which do not change the time (bench/latency_weights.py);
- the protocol (`dse.metrics.runtimes.Protocol`: runtime, images, batch, guidance, repeats, warm-up,
  dtype, torch.compile, the command template, the device name given for it);
- the device fingerprint (`dse.metrics.runtimes.fingerprint`: device model, driver and runtime
  versions, threads).

Only quiet measurements are cached (`latency_contended` false). A file that is not a valid entry
(damaged, edited, foreign) is ignored — measured again and overwritten — and never executed: entries
are plain JSON. Imports neither torch nor ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dse.fileio import atomic_write
from dse.layout import latency_cache_dir

CACHE_FORMAT = "dse-latency-v1"
KEY_LENGTH = 24  # hex digits of the sha256 kept in the file name


def cache_key(arch: dict[str, Any], geometry: dict[str, Any], protocol: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The key of one measurement: a sha256 (hex, KEY_LENGTH digits) of its canonical JSON."""
    text = json.dumps({"arch": arch, "geometry": geometry, "protocol": protocol, "fingerprint": fingerprint},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _valid_result(result: Any) -> bool:
    if not isinstance(result, dict):
        return False
    value = result.get("latency_s")
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            and result.get("latency_contended") is not True)


class LatencyCache:
    """The entries under `root` (a folder; created on the first `put`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of_results(cls, results_dir: str | Path) -> LatencyCache:
        return cls(latency_cache_dir(results_dir))

    def path(self, key: str) -> Path:
        if len(key) != KEY_LENGTH or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a latency cache key: {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry of `key` ({"key", "arch", "geometry", "protocol", "fingerprint", "result",
        "measured_at"}), or None when there is none or its file is not a valid entry for that key."""
        try:
            entry = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return entry if self._valid(entry, key) else None

    @staticmethod
    def _valid(entry: Any, key: str) -> bool:
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or not _valid_result(entry.get("result")):
            return False
        parts = [entry.get(k) for k in ("arch", "geometry", "protocol", "fingerprint")]
        # the content must be what the key says: an entry copied or edited to another name is not used
        return all(isinstance(p, dict) for p in parts) and cache_key(*parts) == key

    def put(self, key: str, *, arch: dict, geometry: dict, protocol: dict, fingerprint: dict,
            result: dict[str, Any], measured_at: str = "") -> dict[str, Any] | None:
        """Store a quiet measurement (a contended or invalid one is not stored: None); the entry written.
        `measured_at`: when it was measured (ISO time; default now)."""
        if not _valid_result(result) or cache_key(arch, geometry, protocol, fingerprint) != key:
            return None
        entry = {"format": CACHE_FORMAT, "key": key, "arch": arch, "geometry": geometry, "protocol": protocol,
                 "fingerprint": fingerprint, "result": result,
                 "measured_at": measured_at or datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(self.path(key), json.dumps(entry, sort_keys=True, indent=1, default=str))
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every valid entry, oldest first; files that are not valid entries are left out."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.glob("*.json")):
            entry = self.get(p.stem) if len(p.stem) == KEY_LENGTH else None
            if entry is not None:
                out.append(entry)
        return sorted(out, key=lambda e: (str(e.get("measured_at")), e["key"]))

    def clear(self) -> int:
        """Remove every entry file (valid or not; nothing else in the folder); how many were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for p in self.root.glob("*.json"):
            if p.is_file() and not p.is_symlink():
                try:
                    os.remove(p)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed
