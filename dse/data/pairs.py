"""Owns the teacher pair store: (noise z, label y, image x) triples in .npy shards with a JSON
manifest, written shard by shard and memory-mapped on read.

Layout of a store directory:
    manifest.json            format, teacher and sampler settings, seed, shapes, dtypes, shards
    z-00000.npy  (n, C, H, W) float32   unscaled N(0, I) noise (the sampler multiplies by sigma_max)
    y-00000.npy  (n,)         int64     class labels
    x-00000.npy  (n, C, H, W) float32 | float16   teacher images in [-1, 1]
Each shard's files carry a sha256 in the manifest; opening checks sizes and (by default) checksums,
and names the damaged file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dse.errors import DseError
from dse.fileio import atomic_write, atomic_writer

FORMAT = "dse-pairs-v1"
MANIFEST = "manifest.json"
ARRAYS = ("z", "y", "x")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.save(f, array, allow_pickle=False)


class PairWriter:
    """Appends shards to a store; the manifest is rewritten atomically after each shard, so an
    interrupted writer leaves a valid store holding every shard it finished."""

    def __init__(self, root: str | Path, meta: dict[str, Any]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        if path.exists():
            self.manifest = _read_manifest(self.root)
            for key in ("teacher", "sampler", "dataset", "seed", "image_dtype"):
                if self.manifest.get(key) != meta.get(key):
                    raise DseError(
                        f"{self.root} already holds pairs made with other settings ({key}: "
                        f"{self.manifest.get(key)!r} != {meta.get(key)!r}); choose another --out directory"
                    )
        else:
            self.manifest = {"format": FORMAT, **meta, "num_pairs": 0, "shards": []}

    @property
    def num_pairs(self) -> int:
        return int(self.manifest["num_pairs"])

    def append(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Write one shard holding pairs num_pairs .. num_pairs + len(y) - 1."""
        n = len(y)
        if not (len(z) == len(x) == n) or n == 0:
            raise ValueError("a shard needs equal, non-zero numbers of z, y and x")
        index = len(self.manifest["shards"])
        arrays = {
            "z": np.ascontiguousarray(z, dtype=np.float32),
            "y": np.ascontiguousarray(y, dtype=np.int64),
            "x": np.ascontiguousarray(x, dtype=self.manifest["image_dtype"]),
        }
        files = {}
        for key, array in arrays.items():
            name = f"{key}-{index:05d}.npy"
            _save_npy(self.root / name, array)
            files[key] = {"name": name, "sha256": _sha256(self.root / name), "bytes": (self.root / name).stat().st_size}
        self.manifest["shards"].append({"start": self.num_pairs, "count": n, "files": files})
        self.manifest["num_pairs"] = self.num_pairs + n
        self.manifest["shapes"] = {"z": list(arrays["z"].shape[1:]), "x": list(arrays["x"].shape[1:])}
        atomic_write(self.root / MANIFEST, json.dumps(self.manifest, indent=2))


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise DseError(f"no pair store at {root}: {MANIFEST} is missing (make pairs with `dse teacher generate`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DseError(f"{path} is not valid JSON ({exc}); regenerate the pairs") from None
    if manifest.get("format") != FORMAT:
        raise DseError(f"{path}: unknown pair-store format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


@dataclass
class PairStore:
    """Read-only view of a pair store; arrays are memory-mapped, never loaded whole."""

    root: Path
    manifest: dict[str, Any]
    shards: list[dict[str, np.ndarray]]
    starts: np.ndarray

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "PairStore":
        """Open and validate a store: every shard file present, of the recorded size and (with
        `verify`) checksum, with the shapes of the manifest; otherwise a DseError naming the file."""
        root = Path(root)
        manifest = _read_manifest(root)
        shards = []
        for shard in manifest["shards"]:
            arrays = {}
            for key in ARRAYS:
                info = shard["files"][key]
                path = root / info["name"]
                if not path.is_file():
                    raise DseError(f"pair shard {path} is missing; regenerate the pairs")
                if path.stat().st_size != info["bytes"] or (verify and _sha256(path) != info["sha256"]):
                    raise DseError(f"pair shard {path} is damaged (size or sha256 differs from {MANIFEST}); regenerate it")
                try:
                    arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
                except ValueError as exc:
                    raise DseError(f"pair shard {path} is unreadable ({exc}); regenerate it") from None
                if len(arrays[key]) != shard["count"]:
                    raise DseError(f"pair shard {path} holds {len(arrays[key])} rows, the manifest says {shard['count']}")
            shards.append(arrays)
        if not shards:
            raise DseError(f"the pair store at {root} is empty; run `dse teacher generate` again")
        starts = np.array([s["start"] for s in manifest["shards"]], dtype=np.int64)
        return cls(root, manifest, shards, starts)

    def __len__(self) -> int:
        return int(self.manifest["num_pairs"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shapes"]["x"])

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs at global `indices` as (z float32, y int64, x float32) arrays, read from the shards."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError("pair index out of range")
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        z = np.empty((len(indices), *self.manifest["shapes"]["z"]), np.float32)
        x = np.empty((len(indices), *self.image_shape), np.float32)
        y = np.empty(len(indices), np.int64)
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = indices[sel] - self.starts[s]
            order = np.argsort(local)  # sorted reads are kinder to memory maps
            rows = local[order]
            z[sel[order]] = self.shards[s]["z"][rows]
            y[sel[order]] = self.shards[s]["y"][rows]
            x[sel[order]] = self.shards[s]["x"][rows]
        return z, y, x
