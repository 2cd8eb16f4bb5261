"""Owns where a study's files live (study.json, trials/, claims/, artifacts/<trial>/..., tune/, the
report) and the one check that every path dse derives stays inside the folder it belongs to (no torch).

```
<results_dir>/<study>/
  study.json                 the resolved configuration
  trials/<trial>.parquet     one row per finished trial
  claims/<trial>.claim       which process runs a trial now
  artifacts/<trial>/         last.pt, student.pt, student.safetensors + student.json, samples.png,
                             student.onnx, ta/
  tune/                      Ray Tune's own files
  tensorboard/<trial>/       TensorBoard event files (--log-to tensorboard)
  mlflow/                    mlflow.db and artifacts/: the MLflow store (--log-to mlflow)
  wandb/                     Weights & Biases offline runs (--log-to wandb)
<reports_dir>/<study>.html
```
A study name (and a trial id) is one path component of safe characters, so it can never name a
folder outside `results_dir` or `reports_dir`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dse.errors import DseError

STUDY_FILE = "study.json"
TRIALS_DIR = "trials"
CLAIMS_DIR = "claims"
ARTIFACTS_DIR = "artifacts"
TUNE_DIR = "tune"
PAIRS_DIR = "pairs"  # default home of generated teacher pairs: <results_dir>/pairs/<name>
LAST_CHECKPOINT = "last.pt"  # resumable trainer state (student trials, the TA, the EDM teacher)
STUDENT_FILE = "student.pt"
TEACHER_WEIGHTS_FILE = "teacher.safetensors"  # an EDM teacher as safetensors (`dse teacher convert`) ...
TEACHER_CONFIG_FILE = "teacher.json"  # ... and its JSON description (config, geometry, sha256 of the weights)
STUDENT_WEIGHTS_FILE = "student.safetensors"  # the same student as safetensors (weights only) ...
STUDENT_CONFIG_FILE = "student.json"  # ... and its JSON configuration (arch, geometry, sha256 of the weights)
DIFFUSERS_NOTE_FILE = "dse_export.json"  # `dse export --format diffusers`: how the folder maps onto dse
SAMPLES_FILE = "samples.png"
ONNX_FILE = "student.onnx"
TA_DIR = "ta"
LATENCY_CACHE_DIR = "latency_cache"  # <results_dir>/latency_cache/<key>.json: latencies shared by every study there
LATENCY_FILE = "latency.json"  # <study>/latency.json: the study's latency pass (measurements, constraints)
REPORT_SUFFIX = ".html"
# <study>/<folder>: what each experiment tracker of `run.log_to` writes there (dse.trackers)
TRACKER_DIRS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
MLFLOW_DB = "mlflow.db"  # <study>/mlflow/mlflow.db: the MLflow store unless $MLFLOW_TRACKING_URI names one
MLFLOW_ARTIFACTS = ARTIFACTS_DIR  # <study>/mlflow/artifacts/: that store's artifact root

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: object, what: str = "study name") -> str:
    """`name` if it is one safe path component (letters, digits, `.`, `_`, `+`, `-`; starts with a
    letter or digit; at most 128 characters), else a DseError saying so."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DseError(f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_', '+' or '-', "
                       "starting with a letter or digit (no '/', no '..', no spaces)")
    return name


def inside(root: str | Path, *parts: str | Path, what: str = "path") -> Path:
    """`root / parts...` (as given, not resolved), refused with a DseError when it resolves
    (symbolic links followed) outside `root`: the one containment check for every path dse derives
    from names it was given or read."""
    joined = Path(root).joinpath(*parts)
    if not is_inside(root, joined):
        shown = Path(*parts) if parts else joined
        raise DseError(f"{what} {str(shown)!r} leads outside {root} (to {joined.resolve()}); it must stay inside that folder")
    return joined


def is_inside(root: str | Path, path: str | Path) -> bool:
    """True when `path` (resolved) is `root` or lies under it."""
    base, p = Path(root).resolve(), Path(path).resolve()
    return p == base or base in p.parents


def study_names(results_dir: str | Path = "results") -> list[str]:
    """The studies under `results_dir`, sorted: the folders with a valid study name, inside it (no
    link leading out), that hold a study.json or a trials/ folder. The one listing of studies; none
    when `results_dir` does not exist, a DseError when it is not a folder."""
    root = Path(results_dir)
    if not root.is_dir():
        if root.exists():
            raise DseError(f"results folder {root} is not a folder; give the folder `dse run` wrote (--results-dir)")
        return []
    return sorted(
        p.name for p in root.iterdir()
        if _NAME.fullmatch(p.name) and p.is_dir() and is_inside(root, p)
        and ((p / STUDY_FILE).is_file() or (p / TRIALS_DIR).is_dir())
    )


def latency_cache_dir(results_dir: str | Path) -> Path:
    """Where the latency cache of the studies under `results_dir` lives."""
    return inside(results_dir, LATENCY_CACHE_DIR, what="latency cache")


@dataclass(frozen=True)
class StudyLayout:
    """The files of study `name` under `results_dir` (and its report under `reports_dir`)."""

    results_dir: Path
    name: str
    reports_dir: Path = Path("reports")

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        object.__setattr__(self, "reports_dir", Path(self.reports_dir))

    @property
    def study_dir(self) -> Path:
        return inside(self.results_dir, self.name, what="study folder")

    @property
    def study_file(self) -> Path:
        return self.study_dir / STUDY_FILE

    @property
    def trials_dir(self) -> Path:
        return self.study_dir / TRIALS_DIR

    @property
    def claims_dir(self) -> Path:
        return self.study_dir / CLAIMS_DIR

    @property
    def tune_dir(self) -> Path:
        return self.study_dir / TUNE_DIR

    def artifacts_dir(self, trial_id: str) -> Path:
        check_name(trial_id, "trial id")
        return inside(self.study_dir / ARTIFACTS_DIR, trial_id, what="artifacts folder")

    def tracker_dir(self, tracker: str) -> Path:
        """Where experiment tracker `tracker` (a key of TRACKER_DIRS) writes for this study."""
        return self.study_dir / TRACKER_DIRS[tracker]

    @property
    def latency_file(self) -> Path:
        return self.study_dir / LATENCY_FILE

    @property
    def latency_cache_dir(self) -> Path:
        return latency_cache_dir(self.results_dir)

    @property
    def report_path(self) -> Path:
        return inside(self.reports_dir, self.name + REPORT_SUFFIX, what="report")

    def default_pairs_dir(self, pairs_name: str) -> Path:
        check_name(pairs_name, "pair-store name")
        return inside(self.results_dir / PAIRS_DIR, pairs_name, what="pair store")
