import dataclasses
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dse.config import EvalConfig, TrainConfig
from dse.sizing import count_params
from dse.store import ResultsStore
from dse.trial import TrialSpec, run_trial
from dse.types import Geometry, StudentArch


def tiny_spec(pairs_dir, **changes) -> TrialSpec:
    spec = TrialSpec(
        study="t", dataset="digits", geometry=Geometry(8, 1, 10), arch=StudentArch(2, 16, 2),
        train=TrainConfig(steps=20, batch_size=64, lr=1e-3),
        eval=EvalConfig(num_samples=200, latency_num_images=256, latency_batch=128, latency_repeats=2),
        pairs_dir=str(pairs_dir), budget=20_000,
    )
    return dataclasses.replace(spec, **changes)


def test_a_trial_gives_a_complete_row_with_provenance(tiny_pairs, tmp_path):
    spec = tiny_spec(tiny_pairs)
    events = []
    row = run_trial(spec, lambda kind, data: events.append(kind)).row
    assert row["status"] == "complete" and row["error"] is None
    assert row["params"] == count_params(spec.arch, spec.geometry)
    assert row["fid"] > 0 and row["fid_extractor"] == "dse-digits-classifier-v1" and row["fid_num_samples"] == 200
    assert row["latency_s"] > 0 and row["latency_num_images"] == 256 and row["latency_batch"] == 128
    assert row["latency_device"] == "cpu" and row["pairs_num"] == 512
    assert "train" in events and "quality" in events
    curve = json.loads(row["loss_curve"])  # 20 steps: a point at each (training curves have up to ~100 points)
    assert [s for s, _ in curve] == list(range(1, 21)) and all(l > 0 for _, l in curve)
    assert curve[-1][1] == pytest.approx(row["final_loss"], rel=1e-5)  # the last point is the last step's loss
    assert isinstance(row["still_improving"], bool) and (row["loss_trend"] is None or row["loss_trend"] > -1)
    assert row["candidate_id"] == spec.candidate_id
    ResultsStore(tmp_path).write(row)  # the row fits the store schema
    assert ResultsStore(tmp_path).completed_ids() == {spec.trial_id}
    stored = ResultsStore(tmp_path).read().iloc[0]
    assert stored["loss_curve"] == row["loss_curve"] and bool(stored["still_improving"]) == row["still_improving"]


def test_trial_ids_depend_on_what_shapes_the_row():
    a = tiny_spec("/p")
    assert a.trial_id == tiny_spec("/p", device="cuda", study="other").trial_id
    assert a.trial_id != tiny_spec("/p", arch=StudentArch(2, 16, 4)).trial_id
    assert a.trial_id != tiny_spec("/p", train=dataclasses.replace(a.train, steps=21)).trial_id
    assert a.trial_id.startswith("d2-w16-h2-get-l2-")


# The id of tiny_spec("/p") computed by the code before issue 12 (git HEAD then): a study stored before
# seeds, candidate ids and eval.fid_bootstrap existed keeps its trial ids, so it resumes.
ID_BEFORE_ISSUE_12 = "d2-w16-h2-get-l2-16bc0a48"


def test_trial_ids_of_stored_studies_do_not_change():
    a = tiny_spec("/p")
    assert a.trial_id == ID_BEFORE_ISSUE_12
    other = dataclasses.replace(a.eval, fid_bootstrap=0)  # a key added later, set away from its default: a new id
    assert tiny_spec("/p", eval=other).trial_id != ID_BEFORE_ISSUE_12


def test_every_seed_of_a_candidate_has_its_own_trial_id_and_one_candidate_id():
    a = tiny_spec("/p")
    seeds = [tiny_spec("/p", train=dataclasses.replace(a.train, seed=s)) for s in (0, 1, 2)]
    assert len({s.trial_id for s in seeds}) == 3
    assert {s.candidate_id for s in seeds} == {a.candidate_id}
    assert a.candidate_id != a.trial_id and a.candidate_id.startswith("d2-w16-h2-get-l2-")
    # anything else that shapes the row is another candidate
    assert tiny_spec("/p", train=dataclasses.replace(a.train, steps=21)).candidate_id != a.candidate_id
    assert tiny_spec("/p", arch=StudentArch(2, 16, 4)).candidate_id != a.candidate_id
    assert tiny_spec("/p", eval=dataclasses.replace(a.eval, guidance=1.0)).candidate_id != a.candidate_id
    assert tiny_spec("/p", study="x", device="cuda", variant="v").candidate_id == a.candidate_id


def test_a_failing_trial_is_a_failed_row_not_an_exception(tmp_path):
    row = run_trial(tiny_spec(tmp_path / "no-pairs")).row
    assert row["status"] == "failed"
    assert "manifest.json is missing" in row["error"]
    assert row["params"] == count_params(StudentArch(2, 16, 2), Geometry(8, 1, 10))


def test_a_study_trial_carries_the_latency_measured_before_training_and_exports_untimed(tiny_pairs, tmp_path):
    from dse.trial import measure_trained_latency

    before = (("latency_s", 0.123), ("latency_s_std", 0.006), ("latency_cached", True), ("latency_num_images", 256))
    spec = tiny_spec(tiny_pairs, artifacts_dir=str(tmp_path / "art"), defer_latency=True, latency=before)
    row = run_trial(spec).row
    assert row["status"] == "complete" and row["fid"] > 0
    assert row["latency_s"] == 0.123 and row["latency_cached"] is True  # the study's figure, not measured here
    assert row.get("latency_onnx_cpu_s") is None and row["onnx_max_abs_diff"] < 1e-3  # exported, checked, not timed
    assert Path(row["onnx_path"]).parent == Path(row["checkpoint"]).parent
    rechecked = measure_trained_latency(row, "cpu")
    assert rechecked["status"] == "complete", rechecked["error"]
    assert rechecked["latency_trained_s"] > 0 and rechecked["latency_trained_s_std"] > 0
    assert rechecked["latency_s"] == 0.123 and rechecked["fid"] == row["fid"]  # the re-check adds, changes nothing
    ResultsStore(tmp_path / "store").write(rechecked)

    Path(row["checkpoint"]).unlink()  # a student that is gone: the row becomes failed, with the reason
    lost = measure_trained_latency(row, "cpu")
    assert lost["status"] == "failed" and "latency:" in lost["error"] and "not found" in lost["error"]


def test_trained_weights_take_the_time_of_fresh_ones_within_the_noise(tiny_pairs, tmp_path):
    """Same architecture, same protocol: the latency on freshly initialised weights (what a study measures
    before training) and on the trained student agree within the measured noise (`dse.stats.compare`
    says neither is clearly faster). Re-measured up to three times, since this machine is shared."""
    import torch

    from dse.evaluation import load_student
    from dse.metrics.runtimes import measure, protocol_of
    from dse.models.dit import DiT
    from dse.stats import TIED, compare, estimate

    spec = tiny_spec(tiny_pairs, artifacts_dir=str(tmp_path / "art"), defer_latency=True)
    row = run_trial(spec).row
    trained, _ = load_student(row["checkpoint"])
    torch.manual_seed(0)
    fresh = DiT(spec.arch, spec.geometry)
    moved = [not torch.equal(a, b) for a, b in zip(fresh.parameters(), trained.parameters())]
    assert sum(moved) > len(moved) // 2  # the (trainable) weights did move
    protocol = protocol_of(dataclasses.replace(spec.eval, latency_num_images=512, latency_repeats=5))
    verdicts = []
    for _ in range(3):
        a, b = measure(fresh, protocol, "cpu"), measure(trained, protocol, "cpu")
        verdicts.append(compare(estimate([a["latency_s"]], [a["latency_s_std"]]),
                                estimate([b["latency_s"]], [b["latency_s_std"]])))
        if verdicts[-1] == TIED:
            break
    assert verdicts[-1] == TIED, verdicts


def _short_write(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4160 vs 4052")


@pytest.mark.parametrize("free, says", [(10 * 2**10, "no space left on device while writing {art} (10 KiB free"),
                                        (5 * 2**30, "writing {art} failed with 5120 MiB free")])
def test_a_checkpoint_that_torch_cannot_write_names_the_full_disk(tiny_pairs, tmp_path, monkeypatch, free, says):
    import shutil

    import torch

    import dse.trial

    monkeypatch.setattr(torch, "save", _short_write)  # what torch says when the disk fills mid-file
    monkeypatch.setattr(dse.trial.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    art = tmp_path / "art"
    row = run_trial(tiny_spec(tiny_pairs, artifacts_dir=str(art), train=TrainConfig(steps=2, batch_size=16))).row
    assert row["status"] == "failed"
    assert row["error"].startswith(says.format(art=art)), row["error"]
    assert "unexpected pos 4160 vs 4052" in row["error"]  # torch's own words stay, after the reason


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied"), (errno.ENOTDIR, "not a folder")])
def test_an_os_failure_of_a_trial_says_the_machines_reason_and_the_path(tiny_pairs, tmp_path, monkeypatch, code, says):
    import dse.fileio

    def refuse(*args, **kwargs):  # the writer behind every checkpoint, sample sheet and ONNX file
        raise OSError(code, os.strerror(code), str(tmp_path / "art" / ".last.pt.tmp"))

    monkeypatch.setattr(dse.fileio.tempfile, "mkstemp", refuse)
    row = run_trial(tiny_spec(tiny_pairs, artifacts_dir=str(tmp_path / "art"), train=TrainConfig(steps=2, batch_size=16))).row
    assert row["status"] == "failed"
    assert row["error"] == f"{says} while writing {tmp_path / 'art' / '.last.pt.tmp'}"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_a_trial_on_a_really_full_disk_says_so(tiny_pairs, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "filler").write_bytes(b"\0" * 60 * 2**10)  # 4 KiB left: no checkpoint fits
        art = disk / "art"
        row = run_trial(tiny_spec(tiny_pairs, artifacts_dir=str(art), train=TrainConfig(steps=2, batch_size=16))).row
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert row["status"] == "failed"
    assert row["error"].startswith("no space left on device while writing "), row["error"]
    assert str(art) in row["error"]
