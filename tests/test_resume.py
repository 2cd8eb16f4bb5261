"""The done-when test of resuming a study: `dse run` killed with SIGKILL in the middle of a trial,
then run again, trains every candidate exactly once, keeps the rows finished before the kill as
they were, and resumes the interrupted trial from its checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH = 150, 32
SPACE = f"""
[study]
name = "resume"
[data]
dataset = "digits"
[teacher]
num_pairs = 256
num_steps = 6
[space]
budget = "20k"
widths = [16]
heads = [1, 2, 4, 8]
[train]
steps = {STEPS}
batch_size = {BATCH}
lr = 1e-3
checkpoint_every = 5
[eval]
num_samples = 50
reference_num = 200
latency_num_images = 32
latency_repeats = 1
samples_per_class = 1
onnx = false
"""


def _marked(marker: str) -> list[int]:
    """The pids of live processes whose environment carries `marker` (the run, Ray and its workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes() and (proc / "stat").read_text().split()[2] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _wait_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _rows(trials: Path) -> pd.DataFrame:
    files = sorted(trials.glob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True) if files else pd.DataFrame()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds Ray's processes through /proc")
def test_a_killed_run_resumes_without_retraining_anything(tmp_path):
    torch = pytest.importorskip("torch")
    from dse.study import study_status

    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    study_dir = results / "resume"
    trials, artifacts = study_dir / "trials", study_dir / "artifacts"
    marker = f"DSE_RESUME_TEST={uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="dse-ray-", dir="/tmp")  # short (socket paths), and its own Ray
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, marker.split("=")[0]: marker.split("=")[1]}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "dse", "run", "--space", str(space), "--results-dir", str(results),
           "--reports-dir", str(tmp_path / "reports")]
    try:
        # 1. run until one trial is stored and another is training (it has a checkpoint), then SIGKILL it all
        log = (tmp_path / "first.log").open("w")
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while True:
            done = {p.stem for p in trials.glob("*.parquet")}
            training = [d.name for d in artifacts.glob("*") if (d / "last.pt").is_file() and d.name not in done]
            if done and training:
                break
            assert first.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no trial finished in time:\n" + (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        log.close()
        left = _wait_gone(marker, 60)
        assert not left, f"processes of the killed run still alive: {left}"

        before = _rows(trials).set_index("trial_id")
        interrupted = sorted(d.name for d in artifacts.glob("*") if (d / "last.pt").is_file() and d.name not in before.index)
        assert len(before) >= 1 and interrupted and set(before["status"]) == {"complete"}
        killed_at = {t: int(torch.load(artifacts / t / "last.pt", weights_only=True)["step"]) for t in interrupted}
        assert all(0 < k <= STEPS for k in killed_at.values())
        status = study_status("resume", results)  # the killer's claims are stale: nothing shows as running
        assert status["counts"]["running"] == 0 and status["counts"]["done"] == len(before)
        assert status["counts"]["pending"] == 4 - len(before) and set(interrupted) <= set(status["resumable"])
        assert (study_dir / "claims").is_dir() and any((study_dir / "claims").glob("*.claim"))  # left by the kill

        # 2. run again to the end
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert not _wait_gone(marker, 60), "Ray outlived the second run"
    finally:
        for pid in _marked(marker):  # only processes this test started (they carry its marker)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    after = _rows(trials)
    assert len(after) == 4 and after["trial_id"].is_unique and set(after["status"]) == {"complete"}
    assert set(after["trial_id"]) == {p.stem for p in trials.glob("*.parquet")} == set(status["done"] + status["pending"])
    after = after.set_index("trial_id")
    assert after["latency_s"].notna().all()  # the latency pass measured every trial, old ones included
    for tid, row in before.iterrows():  # finished before the kill: not trained again
        assert after.loc[tid, "started_at"] == row["started_at"]
        assert after.loc[tid, "train_seconds"] == row["train_seconds"]
        assert f"{tid} started" not in second.stdout
    assert f"{len(before)} already in the store" in second.stdout
    for tid, k in killed_at.items():  # resumed from its checkpoint: trained only the steps after it
        row = after.loc[tid]
        assert row["steps"] == STEPS
        images = row["train_images_per_s"] * max(row["train_seconds"], 1e-9)  # images trained in this run
        assert round(images / BATCH) == STEPS - k, (tid, k, images)
        assert f"{tid} started" in second.stdout
    assert not list((study_dir / "claims").glob("*.claim"))  # the stale claims were taken over, then released
    assert json.loads((study_dir / "study.json").read_text())["study"]["name"] == "resume"
