"""Owns the results store: one Parquet file per finished trial under a schema declared once here,
written atomically (temporary name, then rename), read back as one pandas DataFrame. The claims that
keep two processes of one study from running the same trial live in `dse.claims`; the store finds
them beside its rows (no torch, no ray).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from dse.claims import CLAIM_REFRESH_S, CLAIM_TTL_S, Claim, ClaimSet, read_claims
from dse.errors import DseError
from dse.events import COMPLETE, STATUSES
from dse.fileio import atomic_writer
from dse.layout import CLAIMS_DIR

# The schema of a trial row: (column, pyarrow type name). Declared once; everything else reads it.
COLUMNS: tuple[tuple[str, str], ...] = (
    # identity
    ("trial_id", "string"), ("study", "string"), ("status", "string"), ("error", "string"),
    # the point a row belongs to: every row of one candidate x training that differs only in train.seed
    ("candidate_id", "string"),
    # configuration
    ("dataset", "string"), ("image_size", "int64"), ("channels", "int64"), ("num_classes", "int64"),
    ("patch_size", "int64"), ("depth", "int64"), ("width", "int64"), ("heads", "int64"),
    ("mlp_ratio", "float64"), ("setup", "string"), ("loss", "string"), ("variant", "string"), ("budget", "int64"),
    ("proposed", "bool_"), ("steps", "int64"), ("batch_size", "int64"), ("lr", "float64"),
    ("weight_decay", "float64"), ("ema_decay", "float64"), ("label_dropout", "float64"), ("seed", "int64"),
    ("pairs_dir", "string"), ("pairs_teacher", "string"), ("pairs_num", "int64"), ("config_json", "string"),
    # size
    ("params", "int64"),
    # image quality and how it was measured (docs/metrics.md)
    ("fid", "float64"), ("fid_extractor", "string"), ("fid_reference", "string"), ("fid_num_samples", "int64"),
    ("kid", "float64"), ("kid_std", "float64"), ("is_mean", "float64"), ("is_std", "float64"),
    ("quality_note", "string"), ("guidance", "float64"), ("quality_seconds", "float64"),
    # how precise that FID is: bootstrap over the generated samples' features (docs/metrics.md)
    ("fid_std", "float64"), ("fid_ci_low", "float64"), ("fid_ci_high", "float64"), ("fid_bootstrap", "int64"),
    # whether samples follow their labels: nearest-class-mean accuracy in the extractor's feature space
    ("label_agreement", "float64"), ("eval_seed", "int64"),
    # latency and how it was measured
    ("latency_s", "float64"), ("latency_per_image_ms", "float64"), ("latency_cpu_s", "float64"),
    ("latency_device", "string"), ("latency_batch", "int64"), ("latency_num_images", "int64"),
    ("latency_repeats", "int64"), ("latency_guidance", "float64"), ("latency_threads", "int64"), ("dtype", "string"),
    ("latency_compile", "bool_"), ("latency_seconds", "float64"),
    # latency first (measured before training, per architecture): runtime, noise over the repeats, contention,
    # the cache (docs/metrics.md); and, with eval.latency_recheck, the same protocol on the trained weights
    ("latency_runtime", "string"), ("latency_p90_s", "float64"), ("latency_min_s", "float64"),
    ("latency_s_std", "float64"), ("latency_spread", "float64"), ("latency_other_load", "float64"),
    ("latency_contended", "bool_"), ("latency_attempts", "int64"), ("latency_cached", "bool_"),
    ("latency_key", "string"), ("latency_measured_at", "string"), ("latency_fingerprint", "string"),
    ("latency_trained_s", "float64"), ("latency_trained_s_std", "float64"),
    # deployment proxy: the ONNX export timed with onnxruntime on CPU
    ("latency_onnx_cpu_s", "float64"), ("latency_onnx_threads", "int64"), ("latency_onnx_num_images", "int64"),
    ("latency_onnx_batch", "int64"), ("onnx_max_abs_diff", "float64"), ("onnx_bytes", "int64"), ("onnx_path", "string"),
    # artifacts of the trial
    ("checkpoint", "string"), ("samples_png", "string"),
    # training
    ("final_loss", "float64"), ("train_seconds", "float64"), ("train_images_per_s", "float64"),
    # the cohort the student trained in (issue 14): members stepped together as one batched model; the
    # first member's trial id (this trial's own when it trained alone) and how many there were
    ("cohort_id", "string"), ("cohort_size", "int64"),
    # the training curve, JSON [[step, loss], ...], and whether the loss was still falling at the end
    ("loss_curve", "string"), ("still_improving", "bool_"), ("loss_trend", "float64"),
    ("eval_seconds", "float64"),
    # provenance
    ("device", "string"), ("host", "string"), ("started_at", "string"), ("finished_at", "string"),
    ("dse_version", "string"), ("torch_version", "string"), ("python_version", "string"), ("git_sha", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
# A row's status is one of `dse.events.STATUSES`. STOPPED: ended early on purpose (successive halving);
# like COMPLETE, not run again unless asked


def is_null(value: Any) -> bool:
    """True for an empty cell as pandas gives it back: None, NaN, pandas' NA or NaT."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, NA and NaT are the values unequal to themselves
    except TypeError:  # pd.NA != pd.NA is NA, whose truth value is ambiguous
        return True
    except ValueError:  # an array: a value, not an empty cell
        return False


def damaged_file_error(path: Path, why: object) -> DseError:
    """The one message for a results file that cannot be read (on one line: the first of `why`)."""
    lines = [" ".join(line.split()) for line in str(why).strip().splitlines()]
    return DseError(f"damaged results file {path}: {(lines or [type(why).__name__])[0]}; delete it to run that trial again")


def schema():
    """The pyarrow schema of a trial row."""
    import pyarrow as pa

    return pa.schema([pa.field(name, getattr(pa, kind)()) for name, kind in COLUMNS])


class ResultsStore:
    """A directory of `<trial_id>.parquet` files, one row each."""

    def __init__(self, root: str | Path, claims_dir: str | Path | None = None):
        self.root = Path(root)
        self._claims_dir = Path(claims_dir) if claims_dir is not None else None

    @property
    def claims_dir(self) -> Path:
        """Where the claims of running trials live: beside the rows (`results/<study>/claims`)."""
        return self._claims_dir if self._claims_dir is not None else self.root.parent / CLAIMS_DIR

    def path_for(self, trial_id: str) -> Path:
        return self.root / f"{trial_id}.parquet"

    def write(self, row: dict[str, Any]) -> Path:
        """Write one trial's row atomically; a row with unknown columns or no id is refused."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        unknown = sorted(set(row) - set(COLUMN_NAMES))
        if unknown:
            raise ValueError(f"columns not in the store schema: {', '.join(unknown)}")
        if not row.get("trial_id") or row.get("status") not in STATUSES:
            raise ValueError("a row needs a trial_id and a status in " + ", ".join(STATUSES))
        table = pa.Table.from_pylist([{name: row.get(name) for name in COLUMN_NAMES}], schema=schema())
        path = self.path_for(row["trial_id"])
        with atomic_writer(path) as f:
            pq.write_table(table, f, write_page_checksum=True)  # so that a damaged data page is noticed
        return path

    def files(self) -> list[Path]:
        return sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []

    def read(self):
        """All rows as a DataFrame with the schema's columns (empty if there are none); a damaged
        file is a DseError naming it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for path in self.files():
            try:
                tables.append(pq.read_table(path, schema=schema(), page_checksum_verification=True))
            except (pa.ArrowException, OSError) as exc:
                raise damaged_file_error(path, exc) from None
        table = pa.concat_tables(tables) if tables else schema().empty_table()
        return table.to_pandas()

    def completed_ids(self) -> set[str]:
        return {tid for tid, status in self.statuses().items() if status == COMPLETE}

    def statuses(self, trial_ids: Iterable[str] | None = None) -> dict[str, str]:
        """{trial_id: status} of the stored rows (only `trial_ids`, if given), reading two columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths = self.files() if trial_ids is None else [p for p in map(self.path_for, trial_ids) if p.is_file()]
        out = {}
        for path in paths:
            try:
                t = pq.read_table(path, columns=["trial_id", "status"]).to_pylist()
            except (pa.ArrowException, OSError) as exc:
                raise damaged_file_error(path, exc) from None
            out.update({r["trial_id"]: r["status"] for r in t})
        return out

    def claims(self) -> dict[str, Claim]:
        """Every claim file of the store, live or stale, by trial id."""
        return read_claims(self.claims_dir)

    def live_claims(self, ttl: float = CLAIM_TTL_S) -> dict[str, Claim]:
        """The claims held by a running process (this one included)."""
        return {tid: c for tid, c in self.claims().items() if c.is_live(ttl)}

    def claim(self, trial_ids: Iterable[str], *, ttl: float = CLAIM_TTL_S,
              refresh_every: float = CLAIM_REFRESH_S) -> ClaimSet:
        """A context manager that claims `trial_ids` for this process on entry: `.got` the ids it
        holds, `.busy` those another live process holds. It keeps its claims fresh while open and
        releases them on exit (on an exception too; after a kill they stay, stale by pid)."""
        return ClaimSet(self.claims_dir, list(trial_ids), ttl=ttl, refresh_every=refresh_every)
