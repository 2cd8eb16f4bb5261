"""`dse run --log-to tensorboard|mlflow|wandb`: each trial's loss curve and final row reach the trackers,
read back with the trackers' own readers; refusals before anything is written; a failing tracker warns
once and the study goes on; the Parquet store stays as it was."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dse import config, layout, trackers
from dse.layout import StudyLayout
from dse.store import COLUMN_NAMES, ResultsStore

from .test_cli import QUICK, SPACE
from .test_study import cfg, executor  # noqa: F401 - fixtures: a tiny config, a fake executor (no Ray)

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["--set", "train.steps=60"]  # TRAIN events every 50 steps and at the last: steps 50 and 60


def dse(*args, cwd, env=None):
    """`dse ARGS` as a user types it, without a tracker setting of this shell's (`env`: those of the test)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "WANDB_MODE")}
    return subprocess.run([sys.executable, "-m", "dse", *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


def tiny(tmp_path: Path, extra: str = "") -> list[str]:
    space = tmp_path / "tiny.toml"
    space.write_text(SPACE + extra)
    return ["run", "--space", str(space), "--results-dir", str(tmp_path / "results"),
            "--reports-dir", str(tmp_path / "reports"), "--no-live", *QUICK, *STEPS]


def rows(tmp_path: Path) -> dict[str, dict]:
    df = ResultsStore(tmp_path / "results" / "tiny" / "trials").read()
    return {r["trial_id"]: r for r in df.to_dict("records")}


def test_the_tracker_names_are_one_list():
    assert config.TRACKERS == trackers.TRACKERS == tuple(trackers.PACKAGES) == tuple(layout.TRACKER_DIRS)


FAKE_WANDB = '''
"""A stand-in for wandb that records what dse calls, one JSON line each, in $FAKE_WANDB_LOG; its second
`init` fails as a full disk would."""
import json, os

def _rec(*item):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(item, default=str) + "\\n")

class _Part:
    def __init__(self, what, run_id):
        self.what, self.run_id = what, run_id
    def update(self, values, allow_val_change=False):
        _rec(self.what, self.run_id, values)

class Run:
    def __init__(self, **kw):
        self.id = kw["id"]
        self.config, self.summary = _Part("config", self.id), _Part("summary", self.id)
        _rec("init", self.id, kw)
    def log(self, values, step=None):
        _rec("log", self.id, values, step)
    def finish(self, exit_code=0):
        _rec("finish", self.id, exit_code)

def init(**kw):
    with open(os.environ["FAKE_WANDB_LOG"]) as f:
        if any(json.loads(line)[0] == "init" for line in f):
            raise OSError(28, "No space left on device")
    return Run(**kw)
'''


def test_each_trials_loss_curve_and_final_row_reach_tensorboard_mlflow_and_wandb_offline(tmp_path):
    """One tiny study of two trials with all three trackers (wandb: a stand-in recording its calls,
    whose second run fails mid-study): read back with TensorBoard's and MLflow's own readers."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fake = tmp_path / "fake"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    calls = tmp_path / "wandb-calls.jsonl"
    calls.write_text("")
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{ROOT}", "FAKE_WANDB_LOG": str(calls)}
    out = dse(*tiny(tmp_path), "--log-to", "tensorboard", "--log-to", "mlflow", "--log-to", "wandb", cwd=tmp_path,
              env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    got = rows(tmp_path)
    assert len(got) == 2 and {r["status"] for r in got.values()} == {"complete"}
    study = tmp_path / "results" / "tiny"

    # wandb failed at its second run: warned once (in the summary; on stderr at most once), the rest went on
    warned = [line for line in out.stdout.splitlines() if line.startswith("warning: --log-to")]
    assert len(warned) == 1 and warned[0].startswith("warning: --log-to wandb failed (OSError"), out.stdout
    assert out.stderr.count("--log-to") <= 1 and "Traceback" not in out.stderr

    for tid, row in got.items():  # TensorBoard: one folder per trial, the curve, then the row's numbers
        acc = EventAccumulator(str(study / "tensorboard" / tid))
        acc.Reload()
        curve = acc.Scalars("train_loss")
        assert [e.step for e in curve] == [50, 60]
        assert curve[-1].value == pytest.approx(row["final_loss"], rel=1e-5)
        [fid] = acc.Scalars("fid")
        assert fid.step == 60 and fid.value == pytest.approx(row["fid"], rel=1e-6)
        assert acc.Scalars("params")[0].value == row["params"]
        assert acc.Scalars("latency_s")[0].value == pytest.approx(row["latency_s"], rel=1e-6)

    # MLflow: an experiment named after the study in <study>/mlflow/mlflow.db, one finished run per trial
    assert not (tmp_path / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{study / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(got)
    for tid, run in runs.items():
        row = got[tid]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "complete"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [50, 60]
        m = run.data.metrics
        assert m["fid"] == row["fid"] and m["params"] == row["params"] and m["latency_s"] == row["latency_s"]
        assert m["fid_ci_low"] == row["fid_ci_low"] and m["fid_ci_high"] == row["fid_ci_high"]
        assert m["kid"] == row["kid"] and m["is_mean"] == row["is_mean"]
        p = run.data.params
        assert p["arch"] == f"d{row['depth']}-w16-h{row['heads']}" and p["setup"] == row["setup"]
        assert p["loss"] == row["loss"] and p["seed"] == str(row["seed"])

    # wandb: the first trial's run, offline, in <study>/wandb, named after the trial, with its curve and row
    items = [json.loads(line) for line in calls.read_text().splitlines()]
    [init] = [i for i in items if i[0] == "init"]
    kw, row = init[2], got[init[2]["name"]]
    assert kw["mode"] == "offline" and kw["project"] == "tiny"
    assert Path(kw["dir"]).resolve() == (study / "wandb").resolve()
    assert [(i[3], sorted(i[2])) for i in items if i[0] == "log"] == [(50, ["train_loss"]), (60, ["train_loss"])]
    [summary] = [i[2] for i in items if i[0] == "summary"]
    assert summary["fid"] == row["fid"] and summary["status"] == "complete" and summary["params"] == row["params"]
    [cfg] = [i[2] for i in items if i[0] == "config" and "setup" in i[2]]
    assert cfg["setup"] == row["setup"] and cfg["seed"] == row["seed"] and cfg["arch"] == f"d{row['depth']}-w16-h{row['heads']}"
    assert items[-1] == ["finish", kw["id"], 0]

    # the store: one file per trial and nothing else, the schema's columns only
    assert sorted(p.name for p in (study / "trials").iterdir()) == sorted(f"{t}.parquet" for t in got)
    assert list(ResultsStore(study / "trials").read().columns) == list(COLUMN_NAMES)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_log_to_wandb_without_its_package_is_one_line_and_writes_nothing(tmp_path):
    args = tiny(tmp_path)
    out = dse(*args, "--log-to", "wandb", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == ["error: --log-to wandb needs the wandb package: pip install wandb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


@pytest.mark.parametrize("in_file, flags", [
    ("", ["--log-to", "tensorboard", "--log-to", "neptune"]),
    ('\n[run]\nlog_to = ["mlflow", "neptune"]\n', []),  # `[run] log_to` in the space file
], ids=["flag", "space-file"])
def test_an_unknown_tracker_is_one_line_and_writes_nothing(tmp_path, in_file, flags):
    out = dse(*tiny(tmp_path, in_file), *flags, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'neptune'" in line and "tensorboard, mlflow or wandb" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


class Broken(trackers.Tracker):
    name = "broken"

    def __init__(self):
        self.calls = 0

    def log_loss(self, trial_id, step, loss):
        self.calls += 1
        raise OSError(28, "No space left on device")


def _store_with_a_row(tmp_path):
    lay = StudyLayout(tmp_path / "results", "s")
    store = ResultsStore(lay.trials_dir)
    row = {"trial_id": "d2-w16-h2-get-l2", "study": "s", "status": "complete", "depth": 2, "width": 16, "heads": 2,
           "setup": "get", "loss": "l2", "seed": 0, "fid": 12.5, "fid_ci_low": 11.0, "fid_ci_high": 14.0,
           "params": 1234, "steps": 60, "final_loss": 0.25, "latency_s": 0.01}
    store.write(row)
    return lay, store, row


def test_trackers_hear_events_without_a_handler_leave_the_store_as_it_was_and_survive_a_failing_one(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lay, store, row = _store_with_a_row(tmp_path)
    tid = row["trial_id"]
    before = hashlib.sha256(store.path_for(tid).read_bytes()).hexdigest()
    assert trackers.Trackers([], lay, store).wrap(None) is None  # no trackers: nothing in between
    with trackers.Trackers(["tensorboard"], lay, store) as group:
        broken = Broken()
        group.trackers.insert(0, broken)
        handle = group.wrap(None)  # the library called without a handler: the trackers still hear
        for step, loss in ((50, 0.5), (60, 0.25)):
            handle(tid, "train", {"step": step, "loss": loss})
        handle(tid, "complete", {"fid": 99.0})  # the event's own numbers: the store's row wins
        handle(tid, "latency", {**row, "latency_trained_s": 0.02})  # the latency recheck, after the trial
    assert broken.calls == 1 and len(group.warnings) == 1
    assert "--log-to broken failed (OSError" in group.warnings[0]
    assert hashlib.sha256(store.path_for(tid).read_bytes()).hexdigest() == before
    assert sorted(p.name for p in lay.trials_dir.iterdir()) == [f"{tid}.parquet"]
    acc = EventAccumulator(str(lay.tracker_dir("tensorboard") / tid))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [(50, 0.5), (60, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("fid")] == [(60, 12.5)]
    assert [e.value for e in acc.Scalars("latency_trained_s")] == [pytest.approx(0.02)]


def test_an_mlflow_run_per_trial_again_after_a_restart_and_the_recheck_reaches_it(tmp_path):
    from mlflow.tracking import MlflowClient

    lay, store, row = _store_with_a_row(tmp_path)
    tid = row["trial_id"]
    with trackers.Trackers(["mlflow"], lay, store) as group:  # interrupted: the run is left KILLED
        group.wrap(None)(tid, "train", {"step": 50, "loss": 0.5})
    with trackers.Trackers(["mlflow"], lay, store) as group:  # the next `dse run` resumes the trial
        handle = group.wrap(None)
        handle(tid, "train", {"step": 60, "loss": 0.25})
        handle(tid, "complete", {})
    with trackers.Trackers(["mlflow"], lay, store) as group:  # --recheck-latency in a later run
        group.wrap(None)(tid, "latency", {**row, "latency_trained_s": 0.02})
    assert not group.warnings
    client = MlflowClient(trackers.mlflow_uri(lay))
    [run] = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert run.info.run_name == tid and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [(50, 0.5), (60, 0.25)]
    assert run.data.metrics["fid"] == 12.5 and run.data.metrics["latency_trained_s"] == 0.02
    assert run.data.params["arch"] == "d2-w16-h2" and run.data.tags["status"] == "complete"


def test_mlflow_logs_into_a_local_file_store_that_mlflow_tracking_uri_names(tmp_path, monkeypatch):
    """The issue's local `file:` store: with $MLFLOW_TRACKING_URI set (and MLflow 3's opt-in for folder
    stores), the runs go there and dse writes no store of its own."""
    from mlflow.tracking import MlflowClient

    lay, store, row = _store_with_a_row(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with trackers.Trackers(["mlflow"], lay, store) as group:
        handle = group.wrap(None)
        handle(row["trial_id"], "train", {"step": 60, "loss": 0.25})
        handle(row["trial_id"], "complete", {})
    assert not group.warnings and uri.startswith("file:")
    assert not lay.tracker_dir("mlflow").exists()  # dse's own SQLite store is not made
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["fid"] == 12.5
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [(60, 0.25)]
    assert any((tmp_path / "mlruns").rglob("meta.yaml"))  # a folder store on disk


def test_run_study_called_without_a_handler_still_feeds_the_trackers(cfg, executor):
    """The library as a script calls it (no `on_event`): the trackers hear each trial all the same."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dse import study as study_mod
    from dse.config import with_overrides

    cfg = with_overrides(cfg, run={"log_to": ["tensorboard"]})
    outcome = study_mod.run_study(cfg)
    ids = [s.trial_id for s in outcome.plan.specs]
    assert outcome.num_complete == len(ids) == 4 and outcome.warnings == []
    for tid in ids:
        acc = EventAccumulator(str(outcome.plan.layout.tracker_dir("tensorboard") / tid))
        acc.Reload()
        assert [e.value for e in acc.Scalars("fid")] == [1.0]  # the stored row's


def test_a_tracker_that_cannot_write_is_one_warning_in_the_outcome_and_the_study_completes(cfg, executor):
    from dse import study as study_mod
    from dse.config import with_overrides

    cfg = with_overrides(cfg, run={"log_to": ["tensorboard"]})
    plan = study_mod.plan_study(cfg)
    plan.study_dir.mkdir(parents=True)
    plan.layout.tracker_dir("tensorboard").write_text("a file where its folder would go")
    outcome = study_mod.run_study(cfg)
    assert outcome.num_complete == 4 and outcome.num_failed == 0
    [warning] = outcome.warnings
    assert warning.startswith("--log-to tensorboard failed (")
