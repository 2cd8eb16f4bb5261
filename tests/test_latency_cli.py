"""Latency first through the real CLI, as a user types it: `dse run --max-latency / --max-params /
--latency-runtime / --recheck-latency`, `dse latency measure`, the `command` runtime with a local fake
device, the cache shared by a second study, and mistakes refused with one line and exit 2."""

import json
import sys

import pandas as pd

from .test_cli import dse

SPACE = """
[study]
name = "lat"
[data]
dataset = "digits"
[teacher]
num_pairs = 256
num_steps = 6
[space]
budget = "30k"
architectures = [[1, 16, 2], [3, 16, 2]]
[train]
steps = 10
batch_size = 64
lr = 1e-3
[eval]
num_samples = 200
latency_num_images = 128
latency_batch = 64
latency_repeats = 2
onnx = false
samples_per_class = 0
"""

FAKE_DEVICE = """
import json, sys
# a stand-in for `ssh jetson trtexec ...`: records its arguments, prints one JSON line
open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")
onnx, batch, num_images = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert open(onnx, "rb").read(4), "the graph must exist when the command runs"
depth_guess = 0.001 * num_images
print("warming up the engine...")
print(json.dumps({"repeats": [depth_guess, depth_guess * 1.02, depth_guess * 0.99], "device": "fake-orin"}))
"""


def _rows(results, study):
    return pd.concat(pd.read_parquet(p) for p in (results / study / "trials").glob("*.parquet"))


def _space(tmp_path):
    path = tmp_path / "lat.toml"
    path.write_text(SPACE)
    return path


def test_run_with_max_params_trains_only_inside_and_a_second_study_reuses_the_cache(tmp_path):
    space, results, reports = _space(tmp_path), tmp_path / "results", tmp_path / "reports"
    common = ["--space", str(space), "--results-dir", str(results), "--reports-dir", str(reports)]
    first = dse("run", *common, "--max-params", "20k", "--max-latency", "1min", "--recheck-latency")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "latency first:" in first.stdout and "max_params 20k" in first.stdout
    assert "outside: params" in first.stdout and "not trained" in first.stdout
    df = _rows(results, "lat")
    assert set(df["depth"]) == {1} and set(df["status"]) == {"complete"}  # d3 (26k params) never trained
    assert (df["latency_s"] > 0).all() and (df["latency_cached"] == False).all()  # noqa: E712
    assert (df["latency_trained_s"] > 0).all() and df["latency_runtime"].eq("torch").all()
    latency = json.loads((results / "lat" / "latency.json").read_text())
    outside = [a for a in latency["architectures"] if not a["inside"]]
    assert [a["name"] for a in outside] == ["d3-w16-h2"] and "> max_params 20k" in outside[0]["reason"]
    html = (reports / "lat.html").read_text()
    assert "Outside the constraints" in html and "d3-w16-h2" in html
    status = dse("status", "lat", "--results-dir", str(results))
    assert "1 outside the constraints" in status.stdout

    second = dse("run", *common, "--study", "again")
    assert second.returncode == 0, second.stdout + second.stderr
    df2 = _rows(results, "again")
    both = df2.set_index("depth")
    assert bool(both.loc[1, "latency_cached"]) is True and bool(both.loc[3, "latency_cached"]) is False
    assert both.loc[1, "latency_s"] == df.set_index("depth").loc[1, "latency_s"]  # the very same measurement
    listed = json.loads(dse("latency", "list", "--results-dir", str(results), "--json").stdout)
    assert sorted(e["arch"]["depth"] for e in listed) == [1, 3]


def test_a_latency_limit_nobody_meets_trains_nothing(tmp_path):
    space, results = _space(tmp_path), tmp_path / "results"
    out = dse("run", "--space", str(space), "--results-dir", str(results), "--reports-dir", str(tmp_path / "r"),
              "--max-latency", "1ns")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("outside: latency") == 2 and "2 outside the constraints" in out.stdout
    assert not (results / "lat" / "trials").exists() or not list((results / "lat" / "trials").glob("*.parquet"))
    assert not (results / "pairs").exists()  # no teacher pairs made for nothing to train


def test_latency_measure_with_a_command_on_a_fake_device(tmp_path):
    space, results = _space(tmp_path), tmp_path / "results"
    script, log = tmp_path / "fake device.py", tmp_path / "calls.log"
    script.write_text(FAKE_DEVICE)
    command = f"{sys.executable} '{script}' '{log}' {{onnx}} {{batch}} {{num_images}} {{z_shape}}"
    args = ["latency", "measure", "--space", str(space), "--results-dir", str(results), "--latency-runtime", "command",
            "--set", f"eval.latency_command={command}", "--set", "eval.latency_device_name=fake-orin", "--json"]
    out = dse(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert [a["name"] for a in got] == ["d1-w16-h2", "d3-w16-h2"]
    for a in got:
        assert a["latency_runtime"] == "command" and a["latency_device"] == "fake-orin"
        assert abs(a["latency_s"] - 0.128) < 1e-9 and a["latency_repeats"] == 3 and a["latency_cached"] is False
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2 and all(c[1:] == ["64", "128", "64x1x8x8"] and c[0].endswith(".onnx") for c in calls)
    again = dse(*args)
    assert all(a["latency_cached"] for a in json.loads(again.stdout)) and len(log.read_text().splitlines()) == 2
    table = dse(*args[:-1])
    assert table.returncode == 0 and "cached" in table.stdout and "2 of 2 architectures inside" in table.stdout


def test_a_failing_command_is_one_line_and_nothing_is_written(tmp_path):
    space, results = _space(tmp_path), tmp_path / "results"
    out = dse("run", "--space", str(space), "--results-dir", str(results), "--latency-runtime", "command",
              "--set", "eval.latency_command=sh -c 'echo trtexec: not found >&2; exit 3' {onnx}",
              "--set", "eval.latency_device_name=jetson")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "every measurement failed" in lines[0] and "exit 3" in lines[0]
    assert "trtexec: not found" in lines[0] and "Traceback" not in out.stderr
    assert not (results / "lat").exists() and not (results / "latency_cache").exists()


def test_latency_mistakes_are_one_line_and_exit_2_writing_nothing(tmp_path):
    space, results = _space(tmp_path), tmp_path / "results"
    for args, message in (
        (["run", "--max-latency", "2"], "invalid max_latency '2'"),
        (["run", "--max-params", "many"], "invalid max_params 'many'"),
        (["run", "--latency-runtime", "tensorrt"], "latency_runtime must be torch, onnxruntime or command"),
        (["run", "--latency-runtime", "command"], "latency_command is empty"),
        (["latency", "measure", "--max-latency", "fast"], "invalid max_latency 'fast'"),
        (["latency", "measure", "--set", "eval.latency_command=x {onnx}"], "set latency_runtime"),
    ):
        out = dse(*args, "--space", str(space), "--results-dir", str(results))
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, (args, out.stderr)
    assert not results.exists()
