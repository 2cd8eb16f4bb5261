"""Owns answering questions over results stores: DuckDB SQL over the Parquet files, and tables/CSV/JSON
of a study's rows.

`query(sql)` opens an in-memory DuckDB database with two views over every study's trial files
(`results/<study>/trials/*.parquet`, the file list globbed here) that always carry the store's
declared columns, with their declared types, however many files there are (none included):

- `trials`: one row per trial file; `study` is the name of the study folder the file is in.
- `points`: one row per point of a study (a candidate x training over its training seeds,
  `dse.stats.group_points`): study, candidate_id, n, seeds and trial_ids (comma-separated text), the
  architecture and training, params, fid with fid_sd, fid_low, fid_high (the 95% interval of the mean),
  latency_s with latency_s_sd, latency_s_low/high (its distinct measurements: the seeds of one
  architecture share one, which counts once; `dse.stats`), latency_p90_s, latency_cached (every row's
  latency came from the latency cache), latency_contended (its latency was contended: missing, so the
  point is not ranked), label_agreement, still_improving (the fraction of its rows), and its place in
  the noise-aware front (`dse.pareto.noise_aware_front`): pareto_rank (plain rank on the means),
  front_status (front, tied or dominated; NULL when not ranked) and tied_with (comma-separated
  candidate ids).
- `pareto`: the rows of `trials` whose point is on its study's noise-aware front: front (plain rank
  0 over params, fid and latency_s, all minimised, complete rows with all three present, the latency
  not contended) or tied (not clearly dominated at 95%: the data cannot separate it from the front),
  plus pareto_rank, front_status, tied_with, and the point's n, fid_low, fid_high, latency_s_low and
  latency_s_high.

Reads only: the SQL must be one SELECT (or EXPLAIN), and the connection may open the results files
and no other file (DuckDB's allowed_paths, with external access off and the configuration locked),
so a query can neither change a results file nor read or write anything else (a guard against
accidents; DuckDB's docs say SQL from untrusted sources needs an OS-level sandbox). Examples:

    -- the best FID under 2 ms per image
    SELECT trial_id, fid, latency_per_image_ms FROM trials
    WHERE status = 'complete' AND latency_per_image_ms < 2 ORDER BY fid LIMIT 1
    -- all Pareto rows of every study, and whether the data can separate them
    SELECT study, trial_id, params, fid, fid_low, fid_high, latency_s, front_status FROM pareto ORDER BY study, params
    -- each point's mean FID over its seeds, with its interval
    SELECT candidate_id, n, fid, fid_low, fid_high, front_status FROM points ORDER BY fid
    -- how many trials finished and failed, per study
    SELECT study, status, count(*) AS n FROM trials GROUP BY study, status ORDER BY study, status

Imports neither torch nor ray; pandas, pyarrow and duckdb only inside functions.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.errors import DseError, first_line
from dse.layout import StudyLayout, check_name, study_names
from dse.store import COLUMN_NAMES, COLUMNS, ResultsStore, damaged_file_error, is_null

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json")
# The columns `study_results` shows when none are asked for: what a table on a terminal can hold.
DEFAULT_COLUMNS = (
    "trial_id", "status", "depth", "width", "heads", "setup", "loss", "variant", "params", "fid", "latency_s",
    "latency_onnx_cpu_s", "error",
)
TABLE_CELL_CHARS = 60  # a longer text cell (an error, a path) is cut to this in the text table

_DUCKDB_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "float64": "DOUBLE", "bool_": "BOOLEAN"}
_USER_ERRORS = ("ParserException", "BinderException", "CatalogException")  # mistakes in the SQL itself


# ----------------------------------------------------------------------------------------- studies
def _studies_root(results_dir: str | Path) -> Path:
    root = Path(results_dir)
    if not root.is_dir():
        study_names(root)  # a DseError when it is a file
        raise DseError(f"no results directory {root}/: run `dse run` first, or pass --results-dir")
    return root


def _study_dirs(results_dir: str | Path, study: str | None) -> list[str]:
    """The studies to read: all of them, or the one asked for (a DseError when it does not exist)."""
    root = _studies_root(results_dir)
    known = study_names(root)
    if study is None:
        return known
    check_name(study)
    if study not in known:
        raise DseError(f"no study {study!r} in {root}/; known studies: {', '.join(known) or 'none'}")
    return [study]


def _store(results_dir: str | Path, study: str) -> ResultsStore:
    layout = StudyLayout(Path(results_dir), study)
    return ResultsStore(layout.trials_dir, layout.claims_dir)


# ------------------------------------------------------------------------------------------- query
_KEY = ("_file", "_file_row")  # where a row of `_rows` comes from: its file and its row in that file
_ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")  # DESCRIBE, SHOW, SUMMARIZE, FROM ..., VALUES parse as SELECT


def _lit(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _schema_columns(with_types: bool) -> str:
    return ", ".join(f'"{name}"' + (f" {_DUCKDB_TYPES[kind]}" if with_types else "") for name, kind in COLUMNS)


def _select_study(study: str, files: list[Path]) -> str:
    """SQL for one study's rows with exactly the schema's columns, in order, with their declared types
    (a column no file has is NULL, a column the schema no longer has is left out), and the row's key."""
    cols = ", ".join(
        f"{_lit(study)} AS study" if name == "study" else f'CAST("{name}" AS {_DUCKDB_TYPES[kind]}) AS "{name}"'
        for name, kind in COLUMNS
    )
    if not files:
        return f"SELECT {cols}, NULL::VARCHAR AS _file, NULL::BIGINT AS _file_row FROM _empty"
    paths = ", ".join(_lit(str(p)) for p in files)
    return (
        f"SELECT {cols}, filename AS _file, CAST(file_row_number AS BIGINT) AS _file_row FROM ("
        f"SELECT * FROM _empty UNION ALL BY NAME SELECT * FROM "
        f"read_parquet([{paths}], union_by_name = true, filename = true, file_row_number = true))"
    )


def _damaged_file(files: list[Path], message: str) -> tuple[Path, str] | None:
    """The file (and why) that DuckDB could not read: the one its message names, else the first that
    pyarrow (checking page checksums) or DuckDB cannot read through, footer and data pages."""
    for path in files:
        if str(path) in message:
            return path, message.strip().splitlines()[0]
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            pq.read_table(path, page_checksum_verification=True)
            with duckdb.connect(":memory:") as con:
                con.execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
        except (pa.ArrowException, OSError, duckdb.Error) as exc:
            return path, (first_line(exc) or type(exc).__name__)
    return None


def _file_error(exc: Exception, files: list[Path], results_dir: str | Path) -> DseError:
    """A DseError for DuckDB failing to read the results: naming the damaged file where one is found."""
    message = str(exc).strip()
    found = _damaged_file(files, message)
    if found:
        return damaged_file_error(*found)
    return DseError(f"could not read the results in {results_dir}/: {(first_line(exc) or type(exc).__name__)}")


def _create_views(con, studies: dict[str, list[Path]]) -> None:
    """`_rows` (the schema's columns and each row's key) over the files, and `trials` over it."""
    con.execute(f"CREATE TABLE _empty ({_schema_columns(True)})")
    parts = [_select_study(s, fs) for s, fs in (studies or {"": []}).items()]  # no study: no rows, all columns
    con.execute("CREATE VIEW _rows AS " + " UNION ALL ".join(parts))
    con.execute(f"CREATE VIEW trials AS SELECT {_schema_columns(False)} FROM _rows")


# the columns `points` and `pareto` add, with their DuckDB types
_POINT_COLUMNS = (
    ("study", "VARCHAR"), ("candidate_id", "VARCHAR"), ("n", "BIGINT"), ("seeds", "VARCHAR"), ("trial_ids", "VARCHAR"),
    ("depth", "BIGINT"), ("width", "BIGINT"), ("heads", "BIGINT"), ("setup", "VARCHAR"), ("loss", "VARCHAR"),
    ("variant", "VARCHAR"), ("steps", "BIGINT"), ("guidance", "DOUBLE"), ("params", "BIGINT"), ("fid", "DOUBLE"),
    ("fid_sd", "DOUBLE"), ("fid_low", "DOUBLE"), ("fid_high", "DOUBLE"), ("latency_s", "DOUBLE"),
    ("latency_s_sd", "DOUBLE"), ("latency_s_low", "DOUBLE"), ("latency_s_high", "DOUBLE"), ("latency_p90_s", "DOUBLE"),
    ("latency_cached", "BOOLEAN"), ("latency_contended", "BOOLEAN"), ("label_agreement", "DOUBLE"),
    ("still_improving", "DOUBLE"), ("pareto_rank", "BIGINT"), ("front_status", "VARCHAR"), ("tied_with", "VARCHAR"),
)
_PARETO_EXTRA = ("pareto_rank", "front_status", "tied_with", "n", "fid_low", "fid_high", "latency_s_low",
                 "latency_s_high")
# what grouping rows into points reads of them (those the store declares)
_POINT_INPUTS = tuple(c for c in (
    "trial_id", "status", "candidate_id", "seed", "depth", "width", "heads", "mlp_ratio", "patch_size", "setup", "loss",
    "variant", "steps", "guidance", "params", "proposed", "dataset", "fid", "fid_std", "latency_s", "latency_s_std",
    "latency_key", "latency_measured_at", "latency_contended", "latency_p90_s", "latency_cached", "label_agreement",
    "still_improving", "final_loss") if c in COLUMN_NAMES)


def _text_list(values) -> str | None:
    """A list cell as comma-separated text (None when empty)."""
    items = [str(v) for v in (values if values is not None else []) if v is not None]
    return ", ".join(items) if items else None


def _create_points(con) -> None:
    """The views `points` (one row per point of each study, on the noise-aware front or not) and
    `pareto` (the rows of `trials` whose point is front or tied), computed here in pandas by
    dse.stats and dse.pareto and kept as two small tables (points; row keys)."""
    import pandas as pd

    from dse.pareto import DEFAULT_OBJECTIVES, FRONT, TIED, noise_aware_front
    from dse.stats import group_points

    inputs = ", ".join(f'"{c}"' for c in _POINT_INPUTS)
    df = con.execute(f"SELECT {', '.join(_KEY)}, study, {inputs} FROM _rows").df()
    points, front_rows = [], []
    for study, rows in df.groupby("study", sort=True):
        pts = noise_aware_front(group_points(rows, DEFAULT_OBJECTIVES), DEFAULT_OBJECTIVES)
        pts.insert(0, "study", study)
        points.append(pts)
        keys = {tid: key for tid, *key in rows[["trial_id", *_KEY]].itertuples(index=False, name=None)}
        for p in pts[pts["front_status"].isin([FRONT, TIED])].to_dict("records"):
            for tid in p["trial_ids"]:
                front_rows.append((*keys[tid], p["pareto_rank"], p["front_status"], _text_list(p["tied_with"]),
                                   p["n"], p["fid_low"], p["fid_high"], p["latency_s_low"], p["latency_s_high"]))
    names = [c for c, _ in _POINT_COLUMNS]
    con.execute(f"CREATE TABLE _points ({', '.join(f'{c} {t}' for c, t in _POINT_COLUMNS)})")
    if points:
        table = pd.concat(points, ignore_index=True)
        for col in ("seeds", "trial_ids", "tied_with"):
            table[col] = table[col].map(_text_list)
        table = table[names].astype(object).where(table[names].notna(), None)
        con.register("_points_df", table)
        con.execute(f"INSERT INTO _points SELECT {', '.join(f'CAST({c} AS {t})' for c, t in _POINT_COLUMNS)} "
                    "FROM _points_df")
        con.unregister("_points_df")
    con.execute("CREATE TABLE _front (_file VARCHAR, _file_row BIGINT, pareto_rank BIGINT, front_status VARCHAR, "
                "tied_with VARCHAR, n BIGINT, fid_low DOUBLE, fid_high DOUBLE, latency_s_low DOUBLE, "
                "latency_s_high DOUBLE)")
    if front_rows:
        con.executemany("INSERT INTO _front VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [[None if is_null(v) else (v.item() if hasattr(v, "item") else v) for v in r]
                         for r in front_rows])
    con.execute(f"CREATE VIEW points AS SELECT {', '.join(names)} FROM _points")
    con.execute(
        f"CREATE VIEW pareto AS SELECT {_schema_columns(False)}, {', '.join(_PARETO_EXTRA)} "
        f"FROM _rows JOIN _front USING ({', '.join(_KEY)})"
    )


def _check_statements(sql: str) -> None:
    """Only one SELECT (or EXPLAIN) statement may run: nothing that writes, attaches or sets."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise DseError(f"query failed: {(first_line(exc) or type(exc).__name__)} ({_hint(exc)})") from None
    kinds = [s.type.name for s in statements]
    if len(kinds) != 1 or kinds[0] not in _ALLOWED_STATEMENTS:
        got = ", ".join(kinds) or "nothing"
        raise DseError(f"a query is one SELECT statement (or EXPLAIN), which reads the results only; got {got}")


def _hint(exc: Exception) -> str:
    kind = type(exc).__name__
    if kind == "BinderException" and "not found" in str(exc):
        return (f"the view is `trials`; columns: {', '.join(COLUMN_NAMES)}; `pareto` adds "
                f"{', '.join(_PARETO_EXTRA)}; `points` has {', '.join(c for c, _ in _POINT_COLUMNS)}")
    if kind == "CatalogException":
        return ("the views are `trials` (one row per trial), `points` (one row per candidate, over its seeds) "
                "and `pareto` (the rows on each study's noise-aware front)")
    if kind == "PermissionException":
        return "a query reads the results files only"
    return "the views are `trials`, `points` and `pareto`; see `dse query --help` for examples"


def query(sql: str, results_dir: str | Path = "results", study: str | None = None) -> pd.DataFrame:
    """Run `sql`, one SELECT in DuckDB's dialect, over the trial rows of every study in `results_dir`,
    or only of `study`, and return its answer. The SQL sees the views `trials`, `points` and `pareto`
    (see the module docstring). A missing results directory, an unknown study, a damaged file or a mistake in
    the SQL is a DseError.
    """
    import duckdb
    import pandas as pd

    _check_statements(sql)
    studies = {s: [p.resolve() for p in _store(results_dir, s).files()] for s in _study_dirs(results_dir, study)}
    files = [p for fs in studies.values() for p in fs]
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("SET parquet_metadata_cache = true")  # the views read each footer once, not per bind
        # The SQL may open the results files and nothing else, and cannot change that back.
        con.execute(f"SET allowed_paths = [{', '.join(_lit(str(p)) for p in files)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            _create_views(con, studies)
            if re.search(r"pareto|points", sql, re.IGNORECASE):  # O(n^2) per study: only when asked
                _create_points(con)
        except duckdb.Error as exc:
            raise _file_error(exc, files, results_dir) from None
        try:
            con.execute(sql)
            return con.df() if con.description else pd.DataFrame()  # the files are read while fetching
        except duckdb.Error as exc:
            if type(exc).__name__ not in _USER_ERRORS:
                found = _damaged_file(files, str(exc))  # a file whose data (not footer) is damaged
                if found:
                    raise damaged_file_error(*found) from None
            raise DseError(f"query failed: {(first_line(exc) or type(exc).__name__)} ({_hint(exc)})") from None
    finally:
        con.close()


# ---------------------------------------------------------------------------------- study results
def study_results(study: str, results_dir: str | Path = "results", columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of one study, sorted by params (then trial_id), with DEFAULT_COLUMNS when `columns`
    is None, every column for ["*"], else the columns asked for (an unknown one is a DseError)."""
    _study_dirs(results_dir, study)
    df = _store(results_dir, study).read()
    for name, kind in COLUMNS:  # pandas holds an integer or bool column with a gap as float/object
        if kind in ("int64", "bool_"):
            df[name] = df[name].astype("Int64" if kind == "int64" else "boolean")
    if columns is None:
        columns = list(DEFAULT_COLUMNS)
    elif list(columns) == ["*"]:
        columns = list(df.columns)
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise DseError(f"no column {', '.join(map(repr, unknown))} in the results; columns: {', '.join(df.columns)}")
    df = df.sort_values(["params", "trial_id"], na_position="last", kind="stable")
    return df[list(columns)].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ output
def _cell(value: Any) -> str:
    """A value for the text table: compact numbers, "-" when missing, long text cut."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return _cut("[" + ", ".join(_cell(v) for v in value) + "]")
    if is_null(value):
        return "-"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        v = float(value)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))  # an integer column that pandas holds as float (params with a gap)
        return f"{v:.0f}" if 1e4 <= abs(v) < 1e15 else f"{v:.4g}"
    return _cut(" ".join(str(value).split()))


def _cut(text: str) -> str:
    return text if len(text) <= TABLE_CELL_CHARS else text[: TABLE_CELL_CHARS - 3] + "..."


def _text_table(df: pd.DataFrame) -> str:
    import pandas as pd

    headers = [str(c) for c in df.columns]
    rows = [[_cell(v) for v in record] for record in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    if not rows:
        out.append("(no rows)")
    return "\n".join(out) + "\n"


def _json_value(value: Any) -> Any:
    """A value as plain JSON: numpy scalars and arrays as Python ones, missing and non-finite numbers
    as null, dates as ISO text, anything else JSON has no type for (a Decimal, a UUID) as text."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [_json_value(v) for v in value]
    if is_null(value):
        return None
    if hasattr(value, "item") and hasattr(value, "dtype"):
        value = value.item()  # a numpy scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return float(value) if type(value).__name__ == "Decimal" else str(value)


def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """`df` as text: "table" (aligned columns, compact numbers, "-" for missing), "csv" (a header row,
    missing values empty) or "json" (a list of records, one per line, missing values null)."""
    if fmt == "table":
        return _text_table(df)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [
            {str(k): _json_value(v) for k, v in zip(df.columns, row)} for row in df.itertuples(index=False, name=None)
        ]
        if not records:
            return "[]\n"
        return "[\n" + ",\n".join(json.dumps(r, allow_nan=False) for r in records) + "\n]\n"
    raise DseError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


class _CallableModule(types.ModuleType):
    """This module, callable as `query`: the public API exports `dse.query`, which is also this module's
    name, so `dse.query(sql)` runs a query while `dse.query.format_table` and `import dse.query` keep
    meaning the module."""

    def __call__(self, sql: str, results_dir: str | Path = "results", study: str | None = None) -> pd.DataFrame:
        return query(sql, results_dir, study)


sys.modules[__name__].__class__ = _CallableModule
