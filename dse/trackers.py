"""Owns streaming a study's trials to experiment trackers (`run.log_to`: TensorBoard, MLflow, Weights &
Biases): each trial's training curve as its TRAIN events reach the driver, and its final row when it
ends, through each tracker's own API. The Parquet store stays the source of truth: a tracker gets
copies of what the store holds, and a tracker that fails warns once and stops logging, never failing
the study (no torch, no ray; each tracker's package is imported only when it is used).

Why the trackers' own APIs and not Ray Tune's logger callbacks: those see Tune trials, and a cohort
(several students trained as one Tune trial) would log as one run; they see only what the trainable
reports, not the stored row (its FID interval, KID, IS); they would have to live in `dse.executor`
(the only importer of ray); and some rows never pass through Tune (a trial failed by its latency
measurement, the latency recheck). dse's own events (`dse.events`) carry every trial, member by member.

Per trial, every tracker gets: `train_loss` at each reported step, then the row's METRIC_COLUMNS (at the
trial's last step), its PARAM_COLUMNS and `arch` as parameters, `status` and `error` as tags.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from dse.errors import DseError, one_line
from dse.events import COMPLETE, FAILED, LATENCY, STATUSES, STOPPED, TRAIN, OnEvent
from dse.layout import MLFLOW_ARTIFACTS, MLFLOW_DB, StudyLayout, check_name, inside
from dse.store import COLUMN_NAMES, ResultsStore, schema
from dse.types import StudentArch

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb")  # what run.log_to / --log-to may name (dse.config.TRACKERS)
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}  # the package each one needs

LOSS = "train_loss"  # the training curve's metric (the param "loss" is the loss function)
# the final row's numbers a tracker gets as metrics, and its configuration as parameters (store columns)
METRIC_COLUMNS = ("fid", "fid_ci_low", "fid_ci_high", "fid_std", "kid", "kid_std", "is_mean", "is_std",
                  "label_agreement", "latency_s", "latency_per_image_ms", "latency_trained_s", "params",
                  "final_loss", "train_seconds")
PARAM_COLUMNS = ("trial_id", "candidate_id", "study", "dataset", "depth", "width", "heads", "mlp_ratio", "patch_size",
                 "setup", "loss", "variant", "seed", "budget", "steps", "batch_size", "lr", "proposed",
                 "fid_extractor", "fid_reference", "fid_num_samples", "latency_device", "latency_batch",
                 "latency_num_images")
TAG_COLUMNS = ("status", "error")


def check_trackers(names: Iterable[str]) -> None:
    """A DseError, before anything is written, for a tracker that dse does not know or whose package
    is not installed here."""
    for name in names:
        if name not in PACKAGES:
            raise DseError(f"--log-to {name}: unknown tracker; use tensorboard, mlflow or wandb")
        package = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise DseError(f"--log-to {name} needs the {package} package: pip install {package}")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None  # a bool too (an int)


def metrics_of(row: dict) -> dict[str, float]:
    """The row's METRIC_COLUMNS that hold a number (empty cells left out)."""
    out = {k: _number(row.get(k)) for k in METRIC_COLUMNS}
    return {k: v for k, v in out.items() if v is not None and not (math.isnan(v) and k != "final_loss")}


def params_of(row: dict) -> dict[str, Any]:
    """The row's PARAM_COLUMNS that are set, and `arch` (the architecture's name, d5-w64-h8)."""
    out = {k: v for k in PARAM_COLUMNS if (v := row.get(k)) is not None and not (isinstance(v, float) and math.isnan(v))}
    if all(isinstance(row.get(k), int) for k in ("depth", "width", "heads")):
        out["arch"] = StudentArch(row["depth"], row["width"], row["heads"]).name
    return out


def tags_of(row: dict) -> dict[str, str]:
    return {k: str(row[k]) for k in TAG_COLUMNS if row.get(k) not in (None, "")}


class Tracker:
    """One tracker of a study: a run per trial, opened when its first event arrives."""

    name = ""

    def log_loss(self, trial_id: str, step: int, loss: float) -> None:
        raise NotImplementedError

    def finish(self, trial_id: str, row: dict, step: int) -> None:
        """Log the trial's final row and close its run."""
        raise NotImplementedError

    def log_after(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        """Numbers measured after the trial ended (the latency recheck); ignored where a tracker cannot."""

    def close(self) -> None:
        """Close the runs still open (the study was interrupted)."""


class TensorBoardTracker(Tracker):
    """Event files under `<study>/tensorboard/<trial>/` (tensorboardX's SummaryWriter): the scalars,
    and the row's parameters and metrics in the HParams dashboard."""

    name = "tensorboard"

    def __init__(self, layout: StudyLayout):
        self.root = layout.tracker_dir(self.name)
        self.writers: dict[str, Any] = {}
        self.opened = 0

    def _writer(self, trial_id: str):
        if trial_id not in self.writers:
            from tensorboardX import SummaryWriter

            folder = inside(self.root, check_name(trial_id, "trial id"), what="TensorBoard folder")
            self.opened += 1  # a file name of its own: two writers opened in one second would share one
            self.writers[trial_id] = SummaryWriter(logdir=str(folder), flush_secs=30,
                                                   filename_suffix=f".{os.getpid()}-{self.opened}")
        return self.writers[trial_id]

    def log_loss(self, trial_id: str, step: int, loss: float) -> None:
        self._writer(trial_id).add_scalar(LOSS, loss, step)

    def finish(self, trial_id: str, row: dict, step: int) -> None:
        from tensorboardX.summary import hparams

        w = self._writer(trial_id)
        metrics = metrics_of(row)
        for key, value in metrics.items():
            w.add_scalar(key, value, step)
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params_of(row).items()}
        hp.update(tags_of(row))
        for summary in hparams(hp, {k: v for k, v in metrics.items() if math.isfinite(v)}):
            w.file_writer.add_summary(summary)
        self._close(trial_id)

    def log_after(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        w = self._writer(trial_id)  # a new event file in the trial's folder, read with the others
        for key, value in metrics.items():
            w.add_scalar(key, value, step)
        self._close(trial_id)

    def _close(self, trial_id: str) -> None:
        self.writers.pop(trial_id).close()

    def close(self) -> None:
        for trial_id in list(self.writers):
            self._close(trial_id)


def mlflow_uri(layout: StudyLayout) -> str:
    """$MLFLOW_TRACKING_URI when set, else the study's own SQLite store `<study>/mlflow/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(layout.tracker_dir('mlflow') / MLFLOW_DB).resolve()}"


class MLflowTracker(Tracker):
    """One MLflow run per trial (named after it, tagged `dse.trial_id`) in an experiment named after the
    study; the store is `mlflow_uri`. A trial run again (resumed, retried) logs into its run again."""

    name = "mlflow"
    TRIAL_TAG = "dse.trial_id"

    def __init__(self, layout: StudyLayout):
        self.layout = layout
        self.client = None
        self.experiment_id = ""
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.open: set[str] = set()

    def _start(self) -> None:
        if self.client is not None:
            return
        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating initial MLflow database tables..."
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(self.layout)
        own = "MLFLOW_TRACKING_URI" not in os.environ or not os.environ["MLFLOW_TRACKING_URI"]
        if own:
            self.layout.tracker_dir(self.name).mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        name = self.layout.name
        found = client.get_experiment_by_name(name)
        if found is None:
            artifacts = (self.layout.tracker_dir(self.name) / MLFLOW_ARTIFACTS).resolve().as_uri() if own else None
            try:
                self.experiment_id = client.create_experiment(name, artifact_location=artifacts)
            except Exception:  # noqa: BLE001 - another process of the study created it meanwhile
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found is not None:
            self.experiment_id = found.experiment_id
        self.client = client

    def _run(self, trial_id: str) -> str:
        self._start()
        if trial_id not in self.runs:
            found = self.client.search_runs([self.experiment_id], f"tags.`{self.TRIAL_TAG}` = '{trial_id}'",
                                            max_results=1)
            if found:
                run_id = found[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.client.create_run(self.experiment_id, run_name=trial_id, tags={
                    self.TRIAL_TAG: trial_id, "dse.study": self.layout.name}).info.run_id
            self.runs[trial_id] = run_id
            self.open.add(trial_id)
        return self.runs[trial_id]

    def log_loss(self, trial_id: str, step: int, loss: float) -> None:
        self.client_log(trial_id, {LOSS: loss}, step)

    def client_log(self, trial_id: str, metrics: dict[str, float], step: int, params: dict | None = None,
                   tags: dict | None = None) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        run_id = self._run(trial_id)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, v[:5000]) for k, v in (tags or {}).items()])

    def finish(self, trial_id: str, row: dict, step: int) -> None:
        self.client_log(trial_id, metrics_of(row), step, params_of(row), tags_of(row))
        status = "FINISHED" if row.get("status") in (COMPLETE, STOPPED) else "FAILED"
        self.client.set_terminated(self.runs[trial_id], status)
        self.open.discard(trial_id)

    def log_after(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        self.client_log(trial_id, metrics, step)  # logging into a finished run is allowed
        if trial_id in self.open:  # found again (another `dse run` finished it) and reopened for this
            self.client.set_terminated(self.runs[trial_id], "FINISHED")
            self.open.discard(trial_id)

    def close(self) -> None:
        for trial_id in list(self.open):
            self.client.set_terminated(self.runs[trial_id], "KILLED")
            self.open.discard(trial_id)


class WandbTracker(Tracker):
    """One Weights & Biases run per trial in a project named after the study, offline (files under
    `<study>/wandb/`, `wandb sync` uploads them) unless $WANDB_MODE says otherwise."""

    name = "wandb"

    def __init__(self, layout: StudyLayout):
        self.layout = layout
        self.runs: dict[str, Any] = {}

    def _run(self, trial_id: str):
        if trial_id not in self.runs:
            import wandb

            folder = self.layout.tracker_dir(self.name)
            folder.mkdir(parents=True, exist_ok=True)
            self.runs[trial_id] = wandb.init(
                project=self.layout.name, name=trial_id, id=trial_id.replace(".", "_").replace("+", "_"),
                dir=str(folder), mode=os.environ.get("WANDB_MODE") or "offline", config={"trial_id": trial_id},
                resume="allow", reinit="create_new")  # several trials of a study run at once: a run each
        return self.runs[trial_id]

    def log_loss(self, trial_id: str, step: int, loss: float) -> None:
        self._run(trial_id).log({LOSS: loss}, step=int(step))

    def finish(self, trial_id: str, row: dict, step: int) -> None:
        run = self._run(trial_id)
        run.config.update(params_of(row), allow_val_change=True)
        run.summary.update({**metrics_of(row), **tags_of(row)})
        run.finish(exit_code=1 if row.get("status") == FAILED else 0)
        del self.runs[trial_id]

    def close(self) -> None:
        for trial_id in list(self.runs):
            self.runs.pop(trial_id).finish(exit_code=1)


_KINDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


class Trackers:
    """The trackers of one `dse run` (a context manager: leaving it closes the runs still open). `wrap`
    puts them behind a study's event handler; a tracker whose call raises is warned about once (`log` and
    `warnings`, which the study's summary prints) and gets nothing more."""

    def __init__(self, names: Iterable[str], layout: StudyLayout, store: ResultsStore):
        self.trackers = [_KINDS[n](layout) for n in dict.fromkeys(names)]
        self.store = store
        self.warnings: list[str] = []
        self.last_step: dict[str, int] = {}

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        for t in list(self.trackers):
            self._guard(t, t.close)

    def wrap(self, on_event: OnEvent | None) -> OnEvent | None:
        """`on_event` (None too) with the trackers hearing every event first; `on_event` itself when there
        are none."""
        if not self.trackers:
            return on_event

        def handle(trial_id: str, kind: str, data: dict) -> None:
            self.hear(trial_id, kind, data)
            if on_event:
                on_event(trial_id, kind, data)

        return handle

    def hear(self, trial_id: str, kind: str, data: dict) -> None:
        if kind == TRAIN:
            step = int(data["step"])
            self.last_step[trial_id] = step
            self._each(lambda t: t.log_loss(trial_id, step, float(data["loss"])))
        elif kind in STATUSES:
            row = self.final_row(trial_id, kind, data)
            step = row.get("steps") if isinstance(row.get("steps"), int) else self.last_step.get(trial_id, 0)
            self._each(lambda t: t.finish(trial_id, row, step))
        elif kind == LATENCY:
            metrics = {k: v for k, v in metrics_of(data).items() if k.startswith("latency_trained")}
            step = data.get("steps") if isinstance(data.get("steps"), int) else 0
            if metrics:
                self._each(lambda t: t.log_after(trial_id, metrics, step))

    def final_row(self, trial_id: str, kind: str, data: dict) -> dict:
        """The trial's row as the store holds it (the source of truth); what the event says when the
        store has none (a Ray worker died before it could write it). Its status and error: the event's."""
        row = {k: v for k, v in data.items() if k in COLUMN_NAMES}
        path = self.store.path_for(trial_id)
        if path.is_file():
            try:
                import pyarrow.parquet as pq

                row = pq.read_table(path, schema=schema()).to_pylist()[0]
            except Exception as exc:  # noqa: BLE001 - the trackers then get what the event says
                log.debug("trackers: could not read %s: %s", path, exc)
        row = {**row, "trial_id": trial_id, "status": kind}
        if data.get("error"):
            row["error"] = str(data["error"])
        return row

    def _each(self, call) -> None:
        for t in list(self.trackers):
            self._guard(t, call, t)

    def _guard(self, tracker: Tracker, call, *args) -> None:
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the study
            self.trackers.remove(tracker)
            text = (f"--log-to {tracker.name} failed ({one_line(exc)}); it logs nothing more in this run "
                    "(the results store has every row)")
            self.warnings.append(text)
            log.warning(text)


def open_trackers(names: Iterable[str], layout: StudyLayout, store: ResultsStore) -> Trackers:
    """The trackers `names` of the study at `layout` (none: a Trackers that passes events through)."""
    check_trackers(names)
    return Trackers(names, layout, store)
