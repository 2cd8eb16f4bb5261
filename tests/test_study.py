"""Study orchestration without training: which trials a run trains (resume, retry, claims), and the
status of a study, with a fake executor and hand-made rows and claims."""

import dataclasses
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
from dse.layout import STUDY_FILE
from dse.fileio import HOST
from dse.store import ResultsStore

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

    def prepare_cluster(specs, *, cpus_per_trial, gpus_per_trial, address):
        assert specs  # only called when there are trials to run

    monkeypatch.setitem(sys.modules, "dse.executor", types.SimpleNamespace(run_trials=run_trials, prepare_cluster=prepare_cluster))
    monkeypatch.setitem(sys.modules, "dse.metrics.runtimes", fake_runtime())  # the latency pass: no clock
    monkeypatch.setattr(study_mod, "ensure_pairs", lambda cfg, progress=None: cfg.pairs_dir())
    return calls


@dataclasses.dataclass(frozen=True)
class FakeProtocol:
    """What the fake runtimes' `protocol_of` gives: enough of `dse.metrics.runtimes.Protocol` for a study."""

    runtime: str
    num_images: int

    def to_dict(self):
        return dataclasses.asdict(self)


def fake_runtime(seconds_per_block: float = 0.1):
    """A stand-in for `dse.metrics.runtimes`: depth d takes d * `seconds_per_block` for the protocol's images."""

    def measure(model, protocol, device, *, work_dir=None, attempts=3):
        s = seconds_per_block * model.arch.depth
        return {"latency_s": s, "latency_per_image_ms": 1000 * s / protocol.num_images, "latency_s_std": 0.05 * s,
                "latency_num_images": protocol.num_images, "latency_runtime": protocol.runtime,
                "latency_contended": False, "latency_device": "cpu"}

    return types.SimpleNamespace(protocol_of=lambda e: FakeProtocol(e.latency_runtime, e.latency_num_images),
                                 fingerprint=lambda protocol, device: {"device": "fake cpu"}, measure=measure)


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
    (plan.study_dir / STUDY_FILE).parent.mkdir(parents=True)
    (plan.study_dir / STUDY_FILE).write_text(cfg.to_json())  # as the killed run saved it
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
    (plan.study_dir / STUDY_FILE).write_text(cfg.to_json())
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
    assert s["counts"] == {"done": 1, "running": 1, "failed": 1, "stopped": 1, "pending": 1, "outside": 0}
    assert s["total"] == 5
    assert s["done"] == [ids[0]] and s["pending"] == [ids[3]] and s["stopped"] == ["gone-from-the-plan"]
    assert s["running"][0]["trial_id"] == ids[2] and s["running"][0]["host"] == "elsewhere"
    assert s["failed"] == [{"trial_id": ids[1], "error": "ValueError: bad\nmore lines"}]
    assert [x["study"] for x in study_mod.studies_status(results)] == ["tiny"]


def test_status_from_another_directory_plans_the_same_trial_ids(cfg, tmp_path, monkeypatch):
    rel = study_from_dict(tomllib.loads(SPACE))  # results_dir "results", relative, as a user runs it
    monkeypatch.chdir(tmp_path)
    plan = study_mod.plan_study(rel)
    plan.study_dir.mkdir(parents=True)
    (plan.study_dir / STUDY_FILE).write_text(rel.to_json())
    plan.store.write({"trial_id": plan.specs[0].trial_id, "status": "complete"})
    monkeypatch.chdir(tmp_path.parent)
    s = study_mod.study_status("tiny", tmp_path / "results")
    assert s["done"] == [plan.specs[0].trial_id] and s["counts"]["pending"] == 3


def test_the_latency_recheck_pass_measures_only_rows_it_claims(cfg, monkeypatch):
    import dse.trial

    plan = study_mod.plan_study(cfg)
    ids = [s.trial_id for s in plan.specs]
    for i in range(3):
        plan.store.write(_row(cfg, i))
    plan.store.claims_dir.mkdir(parents=True)
    (plan.store.claims_dir / f"{ids[1]}.claim").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "x"}))
    measured = []
    monkeypatch.setattr(dse.trial, "measure_trained_latency", lambda row, device, artifacts_dir: measured.append(row["trial_id"]) or {**row, "latency_trained_s": 0.5})
    assert study_mod.measure_latency_pass(plan) == 2 and measured == [ids[0], ids[2]]
    assert study_mod.measure_latency_pass(plan) == 0 and measured == [ids[0], ids[2]]


def test_the_latency_recheck_pass_reads_and_writes_only_the_trials_own_folder(cfg, tmp_path):
    """A row whose `checkpoint` was edited to name a file elsewhere: the re-check on trained weights
    (eval.latency_recheck) measures the student in the trial's own artifacts folder and writes its ONNX
    file there (the onnxruntime runtime exports it), never beside the named file."""
    from dse.evaluation import save_student
    from dse.models.dit import DiT

    plan = study_mod.plan_study(cfg)
    spec = plan.specs[0]
    own = plan.layout.artifacts_dir(spec.trial_id)
    save_student(own / "student.pt", DiT(spec.arch, spec.geometry), dataset=cfg.dataset)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "student.pt").write_bytes(b"not a student")
    eval_cfg = {**dataclasses.asdict(spec.eval), "latency_num_images": 8, "latency_batch": 4, "latency_repeats": 1,
                "latency_runtime": "onnxruntime"}
    plan.store.write(_row(cfg, 0, checkpoint=str(elsewhere / "student.pt"), config_json=json.dumps({"eval": eval_cfg})))
    assert study_mod.measure_latency_pass(plan) == 1
    row = plan.store.read().iloc[0]
    assert row["status"] == "complete" and row["latency_trained_s"] > 0 and row["latency_trained_s_std"] > 0, row["error"]
    assert row["latency_s"] == 0.1  # the latency measured before training stays the row's latency
    assert sorted(p.name for p in elsewhere.iterdir()) == ["student.pt"]
    assert (own / "student.onnx").is_file()


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


# --- nothing escapes its folder; nothing is written before a refusal ---------------------------


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["../x", "..", "/abs", "a/b"])
def test_the_library_refuses_a_study_name_that_is_not_one_folder(cfg, tmp_path, name):
    import dataclasses

    bad = dataclasses.replace(cfg, name=name)  # as a library caller could build it, past config validation
    for call in (study_mod.plan_study, study_mod.preflight):
        with pytest.raises(DseError, match="is not allowed"):
            call(bad)
    for call in (study_mod.study_status, study_mod.load_study_dir, study_mod.report_study):
        with pytest.raises(DseError, match="is not allowed"):
            call(name, cfg.run.results_dir)
    assert _files(tmp_path) == []


def _refuse_the_cluster(monkeypatch):
    def prepare_cluster(specs, **kw):
        raise DseError("cannot reach the Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(sys.modules["dse.executor"], "prepare_cluster", prepare_cluster)


@pytest.mark.parametrize("change, match", [
    (lambda c, t, m: with_overrides(c, teacher={"kind": "store", "pairs_dir": str(t / "no-pairs")}), "no-pairs"),
    (lambda c, t, m: with_overrides(c, data={"dataset": "fashion-mnist", "root": str(t / "no-data")}), "fashion"),
    (lambda c, t, m: (t / "a-file").write_text("x") and with_overrides(c, run={"results_dir": str(t / "a-file")}),
     r"a-file is not a folder"),
    (lambda c, t, m: (t / "a-file").write_text("x") and with_overrides(c, run={"reports_dir": str(t / "a-file" / "r")}),
     r"reports folder .* is not a folder"),
    (lambda c, t, m: _refuse_the_cluster(m) or c, "cannot reach the Ray cluster"),
])
def test_everything_that_can_be_refused_is_refused_before_anything_is_written(cfg, executor, tmp_path, monkeypatch, change, match):
    bad = change(cfg, tmp_path, monkeypatch)
    before = _files(tmp_path)
    with pytest.raises(DseError, match=match):
        study_mod.run_study(bad)
    assert _files(tmp_path) == before and executor == []  # no study.json, claims, pairs or report


def test_a_cuda_device_this_machine_lacks_is_refused_before_anything_is_written(cfg, executor, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(DseError, match="no CUDA GPU"):
        study_mod.run_study(with_overrides(cfg, run={"device": "cuda"}))
    assert _files(tmp_path) == []


def test_a_read_only_results_folder_is_refused_before_anything_is_written(cfg, executor, tmp_path, read_only_dir):
    with pytest.raises(DseError, match=r"results folder .* cannot be written: .*\(read-only file system\)"):
        study_mod.run_study(with_overrides(cfg, run={"results_dir": str(read_only_dir / "results")}))
    assert _files(tmp_path / "src") == [] and executor == []


def test_a_copied_study_reads_its_own_store_and_writes_its_own_report(cfg, executor, tmp_path):
    import shutil

    results, reports = tmp_path / "results", tmp_path / "reports"
    study_mod.run_study(cfg)
    original = (reports / "tiny.html").read_bytes()
    shutil.copytree(results / "tiny", results / "copy")
    saved = json.loads((results / "copy" / STUDY_FILE).read_text())
    saved["run"]["reports_dir"] = str(tmp_path / "saved-reports")  # dirs saved in study.json are not used
    (results / "copy" / STUDY_FILE).write_text(json.dumps(saved))
    ResultsStore(results / "copy" / "trials").write(_row(cfg, 0, "failed", error="only in the copy"))

    path = study_mod.report_study("copy", results, reports)
    assert path == reports / "copy.html" and "dse study copy" in path.read_text()
    assert (reports / "tiny.html").read_bytes() == original and not (tmp_path / "saved-reports").exists()
    copy, orig = study_mod.study_status("copy", results), study_mod.study_status("tiny", results)
    assert copy["study"] == "copy" and copy["dir"] == str(results / "copy")
    assert (copy["counts"]["failed"], orig["counts"]["failed"]) == (1, 0)


@pytest.mark.parametrize("content, match", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\x00", "is not valid JSON"),
    (b"[1, 2]", "is not a study configuration"),
    (b'{"run": 5}', "is not a study configuration"),
    (b'{"space": {"budget": "zzz"}}', "budget"),
])
def test_a_broken_study_json_is_one_line_naming_it_and_the_other_studies_still_answer(cfg, executor, tmp_path, content, match):
    results = tmp_path / "results"
    study_mod.run_study(cfg)
    (results / "broken").mkdir()
    (results / "broken" / STUDY_FILE).write_bytes(content)
    with pytest.raises(DseError, match=match) as err:
        study_mod.study_status("broken", results)
    assert str(results / "broken" / STUDY_FILE) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DseError, match=match):
        study_mod.report_study("broken", results, tmp_path / "reports")
    every = study_mod.studies_status(results)
    assert [s["study"] for s in every] == ["broken", "tiny"]
    assert match in every[0]["error"] or "budget" in every[0]["error"]
    assert every[1]["counts"]["done"] == 4


# --- the same through the `dse` command, as a user types it -------------------------------------


def _dse(*args):
    from tests.test_cli import dse

    return dse(*args, timeout=300)


def _one_line_error(out) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


TINY = ["--set", "train.steps=2", "--set", "eval.num_samples=20", "--set", "eval.latency_num_images=8",
        "--set", "eval.latency_batch=4", "--set", "eval.latency_repeats=1", "--set", "eval.onnx=false",
        "--set", "teacher.num_pairs=64", "--set", "teacher.num_steps=2", "--no-live"]


@pytest.mark.parametrize("name", ["../x", "..", "/abs/x", "a/b"])
def test_dse_run_refuses_a_study_name_that_leads_out_writing_nothing(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    out = _dse("run", "--study", name, "--results-dir", str(work / "R"), "--reports-dir", str(work / "P"), *TINY)
    assert "not allowed" in _one_line_error(out)
    assert _files(tmp_path) == ["work"] and not os.path.exists("/abs")


@pytest.mark.parametrize("setting, match", [
    (lambda t: ["--set", "teacher.kind=store", "--set", f"teacher.pairs_dir={t / 'no-pairs'}"], "no-pairs"),
    (lambda t: (t / "a-file").write_text("x") and ["--results-dir", str(t / "a-file")], "a-file is not a folder"),
])
def test_dse_run_refuses_before_writing_study_json(tmp_path, setting, match):
    args = setting(tmp_path)
    before = _files(tmp_path)
    results = [] if "--results-dir" in args else ["--results-dir", str(tmp_path / "R")]
    out = _dse("run", *args, *results, "--reports-dir", str(tmp_path / "P"), *TINY)
    assert match in _one_line_error(out)
    assert _files(tmp_path) == before


def _hand_made_study(cfg, name="tiny"):
    """A study folder as `dse run` leaves it: its study.json and a complete row per planned trial."""
    plan = study_mod.plan_study(cfg)
    plan.study_dir.mkdir(parents=True)
    (plan.study_dir / STUDY_FILE).write_text(cfg.to_json())
    for i in range(len(plan.specs)):
        plan.store.write(_row(cfg, i, fid=10.0 + i))
    return plan


def test_dse_report_and_status_of_a_copied_study_use_its_folder(cfg, tmp_path):
    import shutil

    results, reports = tmp_path / "results", tmp_path / "reports"
    _hand_made_study(cfg)
    shutil.copytree(results / "tiny", results / "copy")
    out = _dse("report", "copy", "--results-dir", str(results), "--reports-dir", str(reports))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"report: {reports / 'copy.html'}" and sorted(os.listdir(reports)) == ["copy.html"]
    status = _dse("status", "copy", "--results-dir", str(results), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["dir"] == str(results / "copy")


def test_dse_status_lists_a_broken_study_as_one_line_and_the_others_as_usual(cfg, tmp_path):
    results = tmp_path / "results"
    _hand_made_study(cfg)
    (results / "broken").mkdir()
    (results / "broken" / STUDY_FILE).write_text("{not json")
    every = _dse("status", "--results-dir", str(results))
    assert every.returncode == 0, every.stderr
    lines = every.stdout.strip().splitlines()
    assert lines[0].startswith(f"{'broken':<28} error: {results / 'broken' / STUDY_FILE} is not valid JSON")
    assert lines[1:] == [f"{'tiny':<28} 4/4 done, 0 running, 0 failed, 0 stopped, 0 pending"]
    one = _dse("status", "broken", "--results-dir", str(results))
    assert "is not valid JSON" in _one_line_error(one)
    assert "is not valid JSON" in _one_line_error(_dse("report", "broken", "--results-dir", str(results)))


def test_dse_query_and_results_refuse_a_study_name_that_leads_out(cfg, tmp_path):
    _hand_made_study(cfg)
    for args in (["query", "SELECT 1", "--study", "../results/tiny"], ["results", "../results/tiny"]):
        out = _dse(*args, "--results-dir", str(tmp_path / "results"))
        assert "is not allowed" in _one_line_error(out)


def test_dse_run_refuses_a_read_only_results_folder(tmp_path, read_only_dir):
    out = _dse("run", "--results-dir", str(read_only_dir / "results"), "--reports-dir", str(tmp_path / "P"), *TINY)
    assert "read-only file system" in _one_line_error(out)
    assert _files(tmp_path / "src") == [] and not (tmp_path / "P").exists()


def test_the_report_shows_only_sample_grids_of_the_studys_own_folders(cfg, tmp_path):
    """A row naming a sample grid elsewhere (an edited store): the report shows the grid in the
    trial's own artifacts folder, or none, never the named file."""
    import base64
    import re

    plan = study_mod.plan_study(cfg)
    own_png = b"\x89PNG\r\n\x1a\nthe trial's own grid"
    own = plan.layout.artifacts_dir(plan.specs[0].trial_id)
    own.mkdir(parents=True)
    (own / "samples.png").write_bytes(own_png)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(b"\x89PNG\r\n\x1a\nsomebody else's picture")
    plan.store.write(_row(cfg, 0, samples_png=str(elsewhere)))
    plan.store.write(_row(cfg, 1, samples_png=str(elsewhere)))
    page = study_mod.write_study_report(plan).read_text()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(u) for u in uris] == [own_png]


def test_a_preflighted_plan_is_run_as_it_is_and_a_config_is_planned_once(cfg, executor, monkeypatch):
    plan = study_mod.preflight(cfg)
    assert plan.checked and not study_mod.plan_study(cfg).checked
    planned = []
    real = study_mod.plan_study
    monkeypatch.setattr(study_mod, "plan_study", lambda c: planned.append(c.name) or real(c))
    assert study_mod.run_study(plan).num_complete == 4 and planned == []
    study_mod.run_study(cfg)
    assert planned == ["tiny"]


def test_the_outcome_front_is_the_noise_aware_points_with_their_intervals_and_warnings(cfg, monkeypatch):
    """Rows of three candidates: A (two seeds, FID 20 and 22), B (one seed, FID 21.5 +- 1: worse than A on the
    means, within noise: tied), C (FID 60 +- 0.5: clearly dominated); same size and speed. Every trial was
    still improving, so the outcome warns."""
    monkeypatch.setattr(study_mod, "write_study_report", lambda plan, df=None: plan.report_path)
    plan = study_mod.plan_study(cfg)
    store = plan.store
    arch = {"depth": 2, "width": 16, "heads": 2}
    for i, (cid, seed, fid, std) in enumerate([("A", 1, 22.0, None), ("A", 0, 20.0, None), ("B", 0, 21.5, 1.0),
                                               ("C", 0, 60.0, 0.5)]):
        store.write(_row(cfg, i, candidate_id=cid, seed=seed, fid=fid, fid_std=std, still_improving=True,
                         loss_trend=-0.1, **arch))
    outcome = study_mod._finish(plan, skipped=0)
    assert outcome.num_complete == 4
    assert [p["candidate_id"] for p in outcome.front] == ["A", "B"]  # C is clearly dominated: not on it
    a, b = outcome.front
    assert a["trial_id"] == _ids(cfg)[1]  # the first seed's trial
    assert (a["n"], a["fid"], a["front_status"], a["tied_with"]) == (2, 21.0, "front", [])
    # two seeds: t(0.975, 1 df) = 12.7062 times the SD of 20 and 22 (sqrt 2) over sqrt 2
    assert a["fid_high"] - 21.0 == pytest.approx(12.7062, rel=1e-4)
    assert (b["n"], b["front_status"], b["tied_with"]) == (1, "tied", ["A"])
    assert b["fid_low"] == pytest.approx(21.5 - 1.959964, rel=1e-5)  # one row: its own SD, normal quantile
    assert set(a) == set(study_mod.FRONT_KEYS)
    assert outcome.warnings and "still improving" in outcome.warnings[0]
