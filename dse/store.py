"""Owns the results store: one Parquet file per finished trial under a schema declared once here,
written atomically (temporary name, then rename), read back as one pandas DataFrame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dse.errors import DseError
from dse.fileio import atomic_writer

# The schema of a trial row: (column, pyarrow type name). Declared once; everything else reads it.
COLUMNS: tuple[tuple[str, str], ...] = (
    # identity
    ("trial_id", "string"), ("study", "string"), ("status", "string"), ("error", "string"),
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
    # latency and how it was measured
    ("latency_s", "float64"), ("latency_per_image_ms", "float64"), ("latency_cpu_s", "float64"),
    ("latency_device", "string"), ("latency_batch", "int64"), ("latency_num_images", "int64"),
    ("latency_repeats", "int64"), ("latency_guidance", "float64"), ("latency_threads", "int64"), ("dtype", "string"),
    ("latency_compile", "bool_"), ("latency_seconds", "float64"),
    # deployment proxy: the ONNX export timed with onnxruntime on CPU
    ("latency_onnx_cpu_s", "float64"), ("latency_onnx_threads", "int64"), ("latency_onnx_num_images", "int64"),
    ("latency_onnx_batch", "int64"), ("onnx_max_abs_diff", "float64"), ("onnx_bytes", "int64"), ("onnx_path", "string"),
    # artifacts of the trial
    ("checkpoint", "string"), ("samples_png", "string"),
    # training
    ("final_loss", "float64"), ("train_seconds", "float64"), ("train_images_per_s", "float64"),
    ("eval_seconds", "float64"),
    # provenance
    ("device", "string"), ("host", "string"), ("started_at", "string"), ("finished_at", "string"),
    ("dse_version", "string"), ("torch_version", "string"), ("python_version", "string"), ("git_sha", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
STATUSES = ("complete", "failed")


def schema():
    """The pyarrow schema of a trial row."""
    import pyarrow as pa

    return pa.schema([pa.field(name, getattr(pa, kind)()) for name, kind in COLUMNS])


class ResultsStore:
    """A directory of `<trial_id>.parquet` files, one row each."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

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
            pq.write_table(table, f)
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
                tables.append(pq.read_table(path, schema=schema()))
            except (pa.ArrowException, OSError) as exc:
                raise DseError(f"damaged results file {path}: {exc}; delete it to run that trial again") from None
        table = pa.concat_tables(tables) if tables else schema().empty_table()
        return table.to_pandas()

    def completed_ids(self) -> set[str]:
        df = self.read()
        return set(df.loc[df["status"] == "complete", "trial_id"])
