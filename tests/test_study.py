"""Study orchestration without training: which trials a run trains (resume, retry, claims), and the
status of a study, with a fake executor and hand-made rows and claims."""

import json
import os
import sys
import time
import tomllib
import types

import pytest

from dse import study as study_mod
from dse.config import study_from_dict, with_overrides
from dse.errors import DseError
from dse.store import HOST, ResultsStore

SPACE = """
[study]
name = "tiny"
[data]
dataset = "digits"
[space]
budget = "20k"
widths = [16]
heads = [1, 2, 4, 8]
[train]
steps = 5
batch_size = 16
"""


@pytest.fixture
def cfg(tmp_path):
    c = study_from_dict(tomllib.loads(SPACE))
    return with_overrides(c, run={"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")})


@pytest.fixture
def executor(monkeypatch):
    """A fake `dse.executor` (no Ray): run_trials stores a complete row per spec, with its latency,
    after checking that this process holds each trial's claim; `calls` lists the ids of each call."""
    calls: list[list[str]] = []

    def run_trials(specs, store_root, *, on_event=None, **kw):
        store = ResultsStore(store_root)
        calls.append([s.trial_id for s in specs])
        for s in specs:
            claim = json.loads((store.claims_dir / f"{s.trial_id}.claim").read_text())
            assert claim["pid"] == os.getpid() and claim["host"] == HOST
            if on_event:
                on_event(s.trial_id, "start", {})
            store.write({"trial_id": s.trial_id, "study": s.study, "status": "complete", "params": 1000 + len(calls),
                         "fid": 1.0, "latency_s": 0.1, "depth": s.arch.depth, "width": s.arch.width,
                         "heads": s.arch.heads, "started_at": f"run {len(calls)}"})
            if on_event:
                on_event(s.trial_id, "complete", {"params": 1000})
            assert not (store.claims_dir / f"{s.trial_id}.claim").exists()  # released as soon as stored

    monkeypatch.setitem(sys.modules, "dse.executor", types.SimpleNamespace(run_trials=run_trials))
    monkeypatch.setattr(study_mod, "ensure_pairs", lambda cfg, progress=None: cfg.pairs_dir())
    return calls


def _row(cfg, i, status="complete", **kw):
    """A hand-made row of the i-th planned trial."""
    spec = study_mod.plan_study(cfg).specs[i]
    a = spec.arch
    return {"trial_id": spec.trial_id, "study": spec.study, "status": status, "depth": a.depth, "width": a.width,
            "heads": a.heads, "params": 1000, "latency_s": 0.1, **kw}


def _ids(cfg):
    return [s.trial_id for s in study_mod.plan_study(cfg).specs]


def _store(cfg):
    return study_mod.plan_study(cfg).store


def test_trials_to_run_skips_done_and_stopped_and_failed_unless_retrying(cfg):
    specs = study_mod.plan_study(cfg).specs
    a, b, c, d = (s.trial_id for s in specs)
    statuses = {a: "complete", b: "failed", c: "stopped"}
    assert [s.trial_id for s in study_mod.trials_to_run(specs, statuses)] == [d]
    assert [s.trial_id for s in study_mod.trials_to_run(specs, statuses, retry_failed=True)] == [b, c, d]


def test_a_second_run_trains_nothing_and_a_failed_trial_only_with_retry_failed(cfg, executor):
    ids = _ids(cfg)
    assert len(ids) == 4
    first = study_mod.run_study(cfg)
    assert executor == [ids] and first.num_complete == 4 and first.skipped == 0 and first.elsewhere == 0
    assert (_store(cfg).root.parent / "study.json").is_file()

    store = _store(cfg)
    store.write(_row(cfg, 1, "failed", error="boom"))
    store.write(_row(cfg, 2, "stopped"))
    again = study_mod.run_study(cfg)
    assert executor[1:] == [[]] and again.skipped == 4 and again.num_failed == 1 and again.num_stopped == 1
    assert store.statuses()[ids[1]] == "failed"

    retried = study_mod.run_study(with_overrides(cfg, run={"retry_failed": True}))
    assert executor[2:] == [[ids[1], ids[2]]] and retried.num_complete == 4 and retried.skipped == 2
    assert list(store.claims_dir.glob("*.claim")) == []  # every claim released


def test_an_interrupted_trial_runs_again_and_its_checkpoint_is_kept(cfg, executor):
    ids = _ids(cfg)
    plan = study_mod.plan_study(cfg)
    (plan.study_dir / study_mod.STUDY_FILE).parent.mkdir(parents=True)
    (plan.study_dir / study_mod.STUDY_FILE).write_text(cfg.to_json())  # as the killed run saved it
    for i in range(2):
        plan.store.write(_row(cfg, i, started_at="before"))
    ckpt = plan.study_dir / "artifacts" / ids[2] / "last.pt"  # killed mid-training: a checkpoint, a stale claim
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"state")
    plan.store.claims_dir.mkdir(parents=True)
    (plan.store.claims_dir / f"{ids[2]}.claim").write_text(json.dumps({"host": HOST, "pid": 2**22 + 7, "started_at": "x"}))
    status = study_mod.study_status("tiny", cfg.run.results_dir)
    assert status["pending"] == ids[2:] and status["resumable"] == [ids[2]] and status["counts"]["done"] == 2

    outcome = study_mod.run_study(cfg)
    assert executor == [ids[2:]] and outcome.skipped == 2 and outcome.num_complete == 4
    assert ckpt.read_bytes() == b"state"  # the study deletes no checkpoint (the trial resumes from it)
    assert set(plan.store.read().set_index("trial_id").loc[ids[:2], "started_at"]) == {"before"}


def test_trials_claimed_by_another_live_process_are_skipped(cfg, executor):
    ids = _ids(cfg)
    store = _store(cfg)
    store.claims_dir.mkdir(parents=True)
    (store.claims_dir / f"{ids[0]}.claim").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "x"}))
    (store.claims_dir / f"{ids[1]}.claim").write_text(json.dumps({"host": HOST, "pid": os.getppid(), "started_at": "x"}))
    old = store.claims_dir / f"{ids[2]}.claim"  # another host's, not refreshed for an hour: stale
    old.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "x"}))
    os.utime(old, (time.time() - 3600,) * 2)
    outcome = study_mod.run_study(cfg)
    assert executor == [ids[2:]] and outcome.elsewhere == 2 and outcome.skipped == 0
    assert sorted(p.stem for p in store.claims_dir.glob("*.claim")) == sorted(ids[:2])  # theirs are kept


def test_a_trial_finished_elsewhere_while_claiming_is_not_run(cfg, executor, monkeypatch):
    ids = _ids(cfg)
    store = _store(cfg)
    real = ResultsStore.claim

    def claim_after_another_run_finished(self, trial_ids, **kw):
        if trial_ids and trial_ids[0] == ids[0]:  # the other run stores its row between our read and claim
            self.write(_row(cfg, 0))
        return real(self, trial_ids, **kw)

    monkeypatch.setattr(ResultsStore, "claim", claim_after_another_run_finished)
    study_mod.run_study(cfg)
    assert executor == [ids[1:]] and store.statuses()[ids[0]] == "complete"


def test_status_counts_done_running_failed_stopped_pending(cfg, tmp_path):
    ids = _ids(cfg)
    results = cfg.run.results_dir
    with pytest.raises(DseError, match="no study 'tiny'"):
        study_mod.study_status("tiny", results)
    assert study_mod.studies_status(results) == []
    plan = study_mod.plan_study(cfg)
    (plan.study_dir).mkdir(parents=True)
    (plan.study_dir / study_mod.STUDY_FILE).write_text(cfg.to_json())
    store = plan.store
    store.write({"trial_id": ids[0], "status": "complete"})
    store.write({"trial_id": ids[1], "status": "failed", "error": "ValueError: bad\nmore lines"})
    store.write({"trial_id": "gone-from-the-plan", "status": "stopped"})
    store.claims_dir.mkdir(parents=True)
    (store.claims_dir / f"{ids[2]}.claim").write_text(json.dumps({"host": "elsewhere", "pid": 5, "started_at": "t"}))
    dead = store.claims_dir / f"{ids[3]}.claim"
    dead.write_text(json.dumps({"host": "elsewhere", "pid": 5, "started_at": "t"}))
    os.utime(dead, (time.time() - 3600,) * 2)

    s = study_mod.study_status("tiny", results)
    assert s["counts"] == {"done": 1, "running": 1, "failed": 1, "stopped": 1, "pending": 1} and s["total"] == 5
    assert s["done"] == [ids[0]] and s["pending"] == [ids[3]] and s["stopped"] == ["gone-from-the-plan"]
    assert s["running"][0]["trial_id"] == ids[2] and s["running"][0]["host"] == "elsewhere"
    assert s["failed"] == [{"trial_id": ids[1], "error": "ValueError: bad\nmore lines"}]
    assert [x["study"] for x in study_mod.studies_status(results)] == ["tiny"]


def test_status_from_another_directory_plans_the_same_trial_ids(cfg, tmp_path, monkeypatch):
    rel = study_from_dict(tomllib.loads(SPACE))  # results_dir "results", relative, as a user runs it
    monkeypatch.chdir(tmp_path)
    plan = study_mod.plan_study(rel)
    plan.study_dir.mkdir(parents=True)
    (plan.study_dir / study_mod.STUDY_FILE).write_text(rel.to_json())
    plan.store.write({"trial_id": plan.specs[0].trial_id, "status": "complete"})
    monkeypatch.chdir(tmp_path.parent)
    s = study_mod.study_status("tiny", tmp_path / "results")
    assert s["done"] == [plan.specs[0].trial_id] and s["counts"]["pending"] == 3


def test_the_latency_pass_measures_only_rows_it_claims(cfg, monkeypatch):
    import dse.trial

    plan = study_mod.plan_study(cfg)
    ids = [s.trial_id for s in plan.specs]
    for i in range(3):
        plan.store.write(_row(cfg, i, latency_s=None))
    plan.store.claims_dir.mkdir(parents=True)
    (plan.store.claims_dir / f"{ids[1]}.claim").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "x"}))
    measured = []
    monkeypatch.setattr(dse.trial, "measure_deferred_latency", lambda row, device: measured.append(row["trial_id"]) or {**row, "latency_s": 0.5})
    assert study_mod.measure_latency_pass(plan) == 2 and measured == [ids[0], ids[2]]
    assert study_mod.measure_latency_pass(plan) == 0 and measured == [ids[0], ids[2]]


def test_dse_status_prints_one_screen_and_unknown_studies_are_one_line(cfg, executor, capsys):
    from typer.testing import CliRunner

    from dse.cli import app, main

    results = cfg.run.results_dir
    study_mod.run_study(cfg)
    _store(cfg).write(_row(cfg, 3, "failed", error="RuntimeError: out of memory\nTraceback ..."))
    runner = CliRunner()
    one = runner.invoke(app, ["status", "tiny", "--results-dir", results])
    assert one.exit_code == 0, one.output
    assert "3/4 done, 0 running, 1 failed, 0 stopped, 0 pending" in one.output
    assert "RuntimeError: out of memory" in one.output and "Traceback" not in one.output and "--retry-failed" in one.output
    every = runner.invoke(app, ["status", "--results-dir", results])
    assert every.exit_code == 0 and every.output.strip().splitlines() == [f"{'tiny':<28} 3/4 done, 0 running, 1 failed, 0 stopped, 0 pending"]
    as_json = json.loads(runner.invoke(app, ["status", "tiny", "--results-dir", results, "--json"]).output)
    assert as_json["counts"]["failed"] == 1 and len(as_json["done"]) == 3
    with pytest.raises(SystemExit) as exit_:
        main(["status", "nope", "--results-dir", results])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "no study 'nope'" in err
