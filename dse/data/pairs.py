"""Owns the teacher pair store: (noise z, label y, image x) triples in .npy shards with a JSON
manifest, written shard by shard and memory-mapped on read.

Layout of a store directory:
    manifest.json            format, teacher and sampler settings, seed, shapes, dtypes, shards
    z-00000.npy  (n, C, H, W) float32   unscaled N(0, I) noise (the sampler multiplies by sigma_max)
    y-00000.npy  (n,)         int64     class labels
    x-00000.npy  (n, C, H, W) float32 | float16   teacher images in [-1, 1]
Each shard's files carry a sha256 in the manifest; opening checks sizes and checksums and names the
damaged file. Checksums already verified are remembered in `.verified.json` (by size and mtime), so
re-opening a large store is fast while any rewrite of a file is checked again. Every file a manifest
names must lie inside the store, and a manifest that does not hold together (keys, types, counts,
shapes) is refused with a message naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dse.data.datasets import GEOMETRIES
from dse.errors import DseError
from dse.fileio import atomic_write, atomic_writer, load_weights_only
from dse.layout import inside

FORMAT = "dse-pairs-v1"
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
ARRAYS = ("z", "y", "x")
IMAGE_DTYPES = ("float32", "float16")
_REGENERATE = "regenerate the pairs (dse teacher generate) or import them again"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError raised while writing `path` (a full disk) names `path`: writes through a file
    object raise it without a file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _save_npy(path: Path, array: np.ndarray) -> None:
    """`array` (C-contiguous) as a .npy file, atomically. Written through Python's file object, not
    numpy's `tofile`, whose failure on a full disk carries no errno ("6400 requested and 4064 written")."""
    with _naming(path), atomic_writer(path) as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(memoryview(array).cast("B"))


class PairWriter:
    """Appends shards to a store; the manifest is rewritten atomically after each shard, so an
    interrupted writer leaves a valid store holding every shard it finished.

    Nothing is created before the first shard is written; a shard that fails to be written (a full
    disk) is removed again, and so is the store folder when that was the store's first shard."""

    def __init__(self, root: str | Path, meta: dict[str, Any]):
        if meta.get("image_dtype") not in IMAGE_DTYPES:
            raise DseError(f"image dtype must be one of {', '.join(IMAGE_DTYPES)}, not {meta.get('image_dtype')!r}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DseError(f"pair store {self.root} is a file, not a folder; choose another --out")
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
        # the folders this writer will create, the outermost first: removed if its first shard fails
        self._new_dirs = [d for d in (self.root, *self.root.parents) if not d.exists()][::-1]

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
        manifest = json.loads(json.dumps(self.manifest))  # committed only once the shard is whole
        files, written = {}, []
        try:
            for key, array in arrays.items():
                path = self.root / f"{key}-{index:05d}.npy"
                _save_npy(path, array)
                written.append(path)
                files[key] = {"name": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size}
            manifest["shards"].append({"start": self.num_pairs, "count": n, "files": files})
            manifest["num_pairs"] = self.num_pairs + n
            manifest["shapes"] = {"z": list(arrays["z"].shape[1:]), "x": list(arrays["x"].shape[1:])}
            with _naming(self.root / MANIFEST):
                atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=2))
        except BaseException:
            self._undo(written)
            raise
        self.manifest, self._new_dirs = manifest, []

    def _undo(self, written: list[Path]) -> None:
        """Remove the files of a shard that was not committed, and the folders this writer made
        if they hold nothing else (a store's first shard failed)."""
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(self._new_dirs):
            with contextlib.suppress(OSError):  # not empty (someone else's files) or already gone
                folder.rmdir()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise DseError(f"no pair store at {root}: {MANIFEST} is missing (make pairs with `dse teacher generate`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DseError(f"{path} is not valid JSON ({exc}); {_REGENERATE}") from None
    if not isinstance(manifest, dict):
        raise DseError(f"{path} holds a JSON {type(manifest).__name__}, not a pair-store manifest (an object); {_REGENERATE}")
    if manifest.get("format") != FORMAT:
        raise DseError(f"{path}: unknown pair-store format {manifest.get('format')!r} (expected {FORMAT})")
    problem = _manifest_problem(root, manifest)
    if problem:
        raise DseError(f"pair store {root} is damaged: {MANIFEST} {problem}; {_REGENERATE}")
    return manifest


def _count(value: object, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _manifest_problem(root: Path, m: dict[str, Any]) -> str | None:
    """What is wrong with the manifest `m` of the store at `root` (None if nothing): keys and types,
    shard counts that add up, shapes that agree with each other and the data set, file names inside the store."""
    if m.get("image_dtype") not in IMAGE_DTYPES:
        return f"has image_dtype {m.get('image_dtype')!r}, not one of {', '.join(IMAGE_DTYPES)}"
    if "num_classes" in m and not _count(m["num_classes"], 1):
        return f"has num_classes {m['num_classes']!r}, not a positive integer"
    if not _count(m.get("num_pairs")) or not isinstance(m.get("shards"), list):
        return "needs num_pairs (an integer >= 0) and shards (a list)"
    total = 0
    for i, shard in enumerate(m["shards"]):
        files = shard.get("files") if isinstance(shard, dict) else None
        if not (isinstance(files, dict) and _count(shard.get("start")) and _count(shard.get("count"), 1)):
            return f"shard {i} needs start, count (a positive integer) and files"
        if shard["start"] != total:
            return f"shard {i} starts at pair {shard['start']}, but the shards before it hold {total} pairs"
        total += shard["count"]
        for key in ARRAYS:
            info = files.get(key)
            if not (isinstance(info, dict) and isinstance(info.get("name"), str) and info["name"]
                    and isinstance(info.get("sha256"), str) and _count(info.get("bytes"))):
                return f"shard {i} needs files.{key} with a name, a sha256 and a size in bytes"
            inside(root, info["name"], what=f"{root / MANIFEST}: shard file")  # nothing outside the store is read
    if total != m["num_pairs"]:
        return f"says num_pairs {m['num_pairs']} but its shards hold {total}"
    if not m["shards"]:
        return None
    shapes = m.get("shapes")
    if not (isinstance(shapes, dict) and all(
            isinstance(shapes.get(k), list) and len(shapes[k]) == 3 and all(_count(d, 1) for d in shapes[k]) for k in ("z", "x"))):
        return "needs shapes.z and shapes.x, each [C, H, W] of positive integers"
    if shapes["z"] != shapes["x"]:
        return f"gives noise shape {shapes['z']} and image shape {shapes['x']}; a one-step student needs them equal"
    g = GEOMETRIES.get(m["dataset"]) if isinstance(m.get("dataset"), str) else None
    if g is not None and shapes["x"] != [g.channels, g.image_size, g.image_size]:
        return f"gives images of shape {shapes['x']}, but {m['dataset']} images are {[g.channels, g.image_size, g.image_size]}"
    return None


class _VerifiedCache:
    """Remembers which files were hashed, by (name, size, mtime_ns) -> sha256; best effort."""

    def __init__(self, root: Path):
        self.path = root / VERIFIED
        try:
            self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _key(path: Path) -> str:
        st = path.stat()
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"

    def check(self, path: Path, sha256: str) -> bool:
        key = self._key(path)
        if self.entries.get(key) == sha256:
            return True
        if _sha256(path) != sha256:
            return False
        self.entries[key] = sha256
        self.changed = True
        return True

    def save(self) -> None:
        if self.changed:
            try:
                atomic_write(self.path, json.dumps(self.entries))
            except OSError:  # a read-only store is still usable; it is just hashed again next time
                pass


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
        verified = _VerifiedCache(root)
        shards = []
        for shard in manifest["shards"]:
            arrays = {}
            for key in ARRAYS:
                info = shard["files"][key]
                path = root / info["name"]
                if not path.is_file():
                    raise DseError(f"pair shard {path} is missing; regenerate the pairs")
                if path.stat().st_size != info["bytes"] or (verify and not verified.check(path, info["sha256"])):
                    raise DseError(f"pair shard {path} is damaged (size or sha256 differs from {MANIFEST}); regenerate it")
                try:
                    arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (ValueError, EOFError, OSError) as exc:
                    raise DseError(f"pair shard {path} is unreadable ({exc}); regenerate it") from None
                shape = (shard["count"], *manifest["shapes"][key]) if key != "y" else (shard["count"],)
                dtype = {"z": "float32", "y": "int64", "x": manifest["image_dtype"]}[key]
                if not isinstance(arrays[key], np.ndarray) or arrays[key].shape != shape or arrays[key].dtype != dtype:
                    got = getattr(arrays[key], "dtype", type(arrays[key]).__name__), getattr(arrays[key], "shape", "")
                    raise DseError(f"pair shard {path} holds {got[0]} {got[1]}, the manifest says {dtype} {shape}; regenerate it")
            shards.append(arrays)
        if not shards:
            raise DseError(f"the pair store at {root} is empty; run `dse teacher generate` again")
        if verify and "num_classes" in manifest:
            labels = np.concatenate([np.asarray(s["y"]) for s in shards])
            if labels.min() < 0 or labels.max() >= manifest["num_classes"]:
                raise DseError(f"pair store {root} holds labels {labels.min()}..{labels.max()}, outside the "
                               f"{manifest['num_classes']} classes of its {MANIFEST}; {_REGENERATE}")
        verified.save()
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

    def labels(self) -> np.ndarray:
        """All labels (N,) int64 (small: 8 bytes a pair)."""
        return np.concatenate([np.asarray(s["y"]) for s in self.shards])


class PairBatches:
    """A map-style dataset whose item i is the i-th batch of a seeded shuffle of the store, as
    (z, y, x) numpy arrays: use it with `torch.utils.data.DataLoader(ds, batch_size=None,
    num_workers=K)`. Each worker opens its own memory maps (nothing large is pickled), and reading
    whole batches keeps the per-pair overhead low. The last short batch is dropped."""

    def __init__(self, root: str | Path, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True):
        self.root, self.batch_size = Path(root), batch_size
        self._store: PairStore | None = None
        n = len(PairStore.open(self.root))  # verifies once, in the main process
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        self.order = order[: (n // batch_size) * batch_size].reshape(-1, batch_size)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._store is None:
            self._store = PairStore.open(self.root, verify=False)
        return self._store.batch(self.order[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # memory maps are reopened in each worker


def summarize(store: PairStore, chunk: int = 65536) -> dict[str, Any]:
    """Counts, shapes, dtypes, value ranges and the label histogram of a store, read in chunks."""
    stats = {"z": [np.inf, -np.inf, 0.0, 0.0], "x": [np.inf, -np.inf, 0.0, 0.0]}
    n = len(store)
    for start in range(0, n, chunk):
        z, _, x = store.batch(np.arange(start, min(start + chunk, n)))
        for key, a in (("z", z), ("x", x)):
            s = stats[key]
            s[0], s[1] = min(s[0], float(a.min())), max(s[1], float(a.max()))
            s[2] += float(a.astype(np.float64).sum())
            s[3] += float(np.square(a, dtype=np.float64).sum())
    size = {k: n * int(np.prod(store.manifest["shapes"][k])) for k in ("z", "x")}

    def describe(key: str) -> dict[str, float]:
        lo, hi, total, sq = stats[key]
        mean = total / size[key]
        return {"min": lo, "max": hi, "mean": mean, "std": float(np.sqrt(max(sq / size[key] - mean**2, 0.0)))}

    m = store.manifest
    counts = np.bincount(store.labels(), minlength=m.get("num_classes", 0))
    return {
        "path": str(store.root), "num_pairs": n, "num_shards": len(store.shards), "dataset": m.get("dataset"),
        "teacher": m.get("teacher"), "sampler": m.get("sampler"), "seed": m.get("seed"),
        "shapes": m["shapes"], "image_dtype": m["image_dtype"], "z": describe("z"), "x": describe("x"),
        "label_counts": counts.tolist(),
    }


def inspect_grid(store: PairStore, path: str | Path, per_class: int = 8) -> Path:
    """A PNG with one row per class: `per_class` noise tiles (z / 3, clipped), then their teacher images."""
    from dse.data.datasets import to_uint8
    from dse.data.grid import image_grid, save_png

    labels = store.labels()
    rows = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0][:per_class]
        z, _, x = store.batch(idx)
        rows.append(np.concatenate([to_uint8(np.clip(z / 3, -1, 1)), to_uint8(np.clip(x, -1, 1))]))
    side = store.image_shape[-1]
    return save_png(path, image_grid(rows, scale=max(1, 64 // side)))


def _numpy_safe_globals() -> list:
    """What `torch.load(weights_only=True)` needs to rebuild plain numpy arrays (no other code)."""
    import numpy.dtypes

    dtypes = [getattr(numpy.dtypes, name) for name in dir(numpy.dtypes) if name.endswith("DType")]
    reconstruct = np._core.multiarray._reconstruct
    # numpy 1.x pickles name it numpy.core.multiarray._reconstruct, numpy 2.x numpy._core...
    return [np.ndarray, np.dtype, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), *dtypes]


def _load_get_file(path: Path):
    """One of GET's `.pkl` files (written with torch.save), loaded without executing code from it."""
    return load_weights_only(path, "GET pair file (tensors or numpy arrays saved with torch.save)", _numpy_safe_globals())


def _as_array(value, what: str, path: Path) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise DseError(f"{path}: expected {what} as a tensor or numpy array, found {type(value).__name__}")
    return value


def _get_files(folder: Path) -> list[Path]:
    """GET names each file by the last seed it holds (`000049999.pkl`); they are read in that order."""
    if not folder.is_dir():
        raise DseError(f"GET layout: {folder} is missing (expected latent/*.pkl and image/*.pkl)")
    files = [p for p in folder.glob("*.pkl") if p.stem.isdigit()]
    if not files:
        raise DseError(f"GET layout: no numbered .pkl files in {folder}")
    return sorted(files, key=lambda p: int(p.stem))


def import_get(src: str | Path, out: str | Path, *, image_dtype: str = "float32",
               progress: Callable[[int], None] | None = None) -> Path:
    """Convert GET's published pairs (Geng et al. 2024) into a dse pair store, one shard per file pair.

    GET's layout: `latent/N.pkl` holds [noise (n, C, H, W), one-hot labels (n, K)] and `image/N.pkl`
    the teacher images (n, C, H, W) in about [-1, 1], matched by file name. Re-running resumes
    after the files already imported.
    """
    src = Path(src)
    latents, images = _get_files(src / "latent"), _get_files(src / "image")
    if [p.name for p in latents] != [p.name for p in images]:
        raise DseError(f"GET layout: {src}/latent and {src}/image do not hold the same file names")
    writer = None
    for i, (lat, img) in enumerate(zip(latents, images)):
        pair = _load_get_file(lat)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DseError(f"{lat}: expected [noise, one-hot labels], found {type(pair).__name__}")
        z = _as_array(pair[0], "noise", lat).astype(np.float32)
        onehot = _as_array(pair[1], "one-hot labels", lat)
        if writer is None:
            meta = {"teacher": {"kind": "get-import", "source": str(src.resolve())},
                    "sampler": {"name": "edm-heun", "num_steps": 18, "note": "as published by GET"},
                    "dataset": "cifar10" if z.shape[1:] == (3, 32, 32) else "unknown",
                    "num_classes": int(onehot.shape[1]), "seed": None, "image_dtype": image_dtype}
            writer = PairWriter(out, meta)
        if i < len(writer.manifest["shards"]):
            continue  # imported by an earlier run
        x = _as_array(_load_get_file(img), "images", img)
        if z.ndim != 4 or onehot.ndim != 2 or not (len(z) == len(onehot) == len(x)) or x.shape != z.shape:
            raise DseError(f"{lat} / {img}: shapes do not match ({z.shape}, {onehot.shape}, {x.shape})")
        writer.append(z, onehot.argmax(1).astype(np.int64), x)
        if progress:
            progress(writer.num_pairs)
    return Path(out)
