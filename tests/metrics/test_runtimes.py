"""The latency runtimes: torch and onnxruntime on a tiny DiT return every latency column with sane
values; the command runtime runs a LOCAL FAKE COMMAND (a Python script in tmp_path that records its
argv and whether the ONNX graph exists) and parses each form of its contract; failures are one-line
DseErrors; the protocol and fingerprint say what a cached latency depends on."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dse import config
from dse.config import EvalConfig
from dse.errors import DseError
from dse.layout import ONNX_FILE
from dse.metrics import runtimes
from dse.metrics.latency import LATENCY_COLUMNS, LATENCY_NOISE_FLOOR
from dse.metrics.runtimes import (
    Protocol,
    command_fields,
    command_values,
    fingerprint,
    measure,
    parse_command_output,
    protocol_of,
)
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

GEOMETRY = Geometry(8, 1, 10, 2)  # digits
COLUMNS = set(LATENCY_COLUMNS) | {"latency_runtime"}


@pytest.fixture(scope="module")
def student() -> DiT:
    torch.manual_seed(0)
    return DiT(StudentArch(1, 16, 2), GEOMETRY).eval()


def protocol(runtime: str = "torch", **kw) -> Protocol:
    return Protocol(**{"runtime": runtime, "num_images": 20, "batch": 8, "guidance": 1.5, "repeats": 3, **kw})


# ----------------------------------------------------------------------------------- registries
def test_every_runtime_and_field_config_allows_is_one_dse_can_measure_with():
    # the names live in the light config (which validates them); here: each one is implemented
    for runtime in config.LATENCY_RUNTIMES:
        extra = {"command": "time {onnx}", "device_name": "board"} if runtime == "command" else {}
        assert protocol(runtime, **extra).runtime == runtime
    with pytest.raises(DseError, match="latency runtime 'tensorrt'"):
        protocol("tensorrt")
    assert tuple(command_values(protocol(), GEOMETRY, "/x.onnx")) == config.COMMAND_FIELDS == command_fields()


def test_every_column_is_declared_by_the_store():
    from dse.store import COLUMN_NAMES

    assert COLUMNS <= set(COLUMN_NAMES)


# ----------------------------------------------------------------------------------- local runtimes
def check_row(out: dict, runtime: str) -> None:
    assert set(out) == COLUMNS and out["latency_runtime"] == runtime
    assert 0 < out["latency_min_s"] <= out["latency_s"] <= out["latency_p90_s"] < 60
    assert out["latency_s_std"] >= LATENCY_NOISE_FLOOR * out["latency_s"] - 1e-15
    # spread = (max - min) / median, and the max is at least the p90
    assert (out["latency_p90_s"] - out["latency_min_s"]) / out["latency_s"] <= out["latency_spread"] + 1e-12 < 50
    assert out["latency_per_image_ms"] == pytest.approx(1000 * out["latency_s"] / 20)
    assert (out["latency_num_images"], out["latency_batch"], out["latency_repeats"]) == (20, 8, 3)
    assert out["latency_guidance"] == 1.5 and out["dtype"] == "float32" and out["latency_compile"] is False
    assert out["latency_threads"] == torch.get_num_threads()
    assert out["latency_other_load"] is None or out["latency_other_load"] >= 0
    assert isinstance(out["latency_contended"], bool) and 1 <= out["latency_attempts"] <= 3
    assert out["latency_cpu_s"] > 0


def test_torch_runtime(student):
    out = measure(student, protocol("torch"), "cpu")
    check_row(out, "torch")
    assert out["latency_device"] == "cpu"


def test_onnxruntime_runtime_keeps_the_graph_in_work_dir(student, tmp_path):
    out = measure(student, protocol("onnxruntime"), "cpu", work_dir=tmp_path / "w")
    check_row(out, "onnxruntime")
    assert out["latency_device"] == "cpu (onnxruntime)"
    assert (tmp_path / "w" / ONNX_FILE).stat().st_size > 0


def test_onnxruntime_runtime_without_work_dir_leaves_nothing(student, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    out = measure(student, protocol("onnxruntime", repeats=1), "cpu")
    assert out["latency_s"] > 0 and list(tmp_path.iterdir()) == []


def test_the_model_is_left_alone(tmp_path):
    model = DiT(StudentArch(1, 16, 2), GEOMETRY).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model, protocol("onnxruntime", repeats=1), "cpu", work_dir=tmp_path)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_onnxruntime_on_cuda_names_its_provider(student):
    import onnxruntime as ort

    out = measure(student, protocol("onnxruntime", repeats=1), "cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert out["latency_device"] == f"{torch.cuda.get_device_name()} (onnxruntime CUDA)"
        assert out["latency_cpu_s"] is None
    else:
        assert out["latency_device"] == "cpu (onnxruntime)"


# ----------------------------------------------------------------------------------- protocol
def test_protocol_of_a_study_eval_section():
    cfg = EvalConfig(latency_num_images=300, latency_batch=64, latency_repeats=5, guidance=2.0, latency_compile=True,
                     latency_timeout=30.0)
    p = protocol_of(cfg)
    assert (p.runtime, p.num_images, p.batch, p.repeats, p.guidance, p.compile, p.timeout) == \
        ("torch", 300, 64, 5, 2.0, True, 30.0)
    ort = protocol_of(EvalConfig(latency_runtime="onnxruntime", latency_compile=True))
    assert ort.compile is False  # torch.compile means nothing to onnxruntime: not part of its key
    cmd = protocol_of(EvalConfig(latency_runtime="command", latency_command="run {onnx}", latency_device_name="orin"))
    assert (cmd.command, cmd.device_name) == ("run {onnx}", "orin")


def test_protocol_to_dict_is_json_and_leaves_the_timeout_out():
    d = protocol(timeout=5.0).to_dict()
    assert "timeout" not in d and json.loads(json.dumps(d)) == d
    assert protocol(timeout=5.0).to_dict() == protocol(timeout=500.0).to_dict()
    assert protocol(repeats=4).to_dict() != protocol().to_dict()


@pytest.mark.parametrize("kw, match", [
    ({"runtime": "tensorrt"}, "use one of torch, onnxruntime, command"),
    ({"num_images": 0}, "num_images must be at least 1"),
    ({"timeout": 0.0}, "timeout"),
    ({"runtime": "onnxruntime", "dtype": "bfloat16"}, "float32"),
    ({"runtime": "command", "command": "run {model}", "device_name": "j"}, r"names \{model\}"),
    ({"runtime": "command", "command": "run {batch}", "device_name": "j"}, r"does not name \{onnx\}"),
    ({"runtime": "command", "command": "run {onnx}"}, "device"),
])
def test_bad_protocols_are_dse_errors(kw, match):
    with pytest.raises(DseError, match=match):
        protocol(**kw)


# ----------------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_plain_json_and_names_the_host():
    p = protocol("onnxruntime")
    a, b = fingerprint(p, "cpu"), fingerprint(p, torch.device("cpu"))
    assert a == b and json.loads(json.dumps(a)) == a
    assert a["threads"] == torch.get_num_threads() and a["torch"] == torch.__version__
    assert a["provider"] == "CPUExecutionProvider" and a["onnxruntime"]
    assert a["device"] == runtimes.cpu_model() and a["device"]
    # the protocol's own settings are not the device's: the same fingerprint for another batch
    assert fingerprint(protocol("onnxruntime", batch=4, num_images=40), "cpu") == a


def test_fingerprint_differs_across_threads_runtime_and_device_name():
    threads = torch.get_num_threads()
    base = fingerprint(protocol("torch"), "cpu")
    try:
        torch.set_num_threads(threads + 1)
        assert fingerprint(protocol("torch"), "cpu") != base
    finally:
        torch.set_num_threads(threads)
    assert fingerprint(protocol("torch"), "cpu") == base
    assert fingerprint(protocol("onnxruntime"), "cpu") != base
    orin = fingerprint(protocol("command", command="run {onnx}", device_name="orin"), "cpu")
    assert orin != base and orin["device_name"] == "orin" and "threads" not in orin
    assert fingerprint(protocol("command", command="run {onnx}", device_name="orin-2"), "cpu") != orin
    assert fingerprint(protocol("command", command="run2 {onnx}", device_name="orin"), "cpu") != orin
    assert fingerprint(protocol("command", command="run {onnx}", device_name="orin"), "cpu") == orin


# ----------------------------------------------------------------------------------- command
FAKE = textwrap.dedent('''
    """A fake latency command: records its argv and whether the ONNX graph exists, then answers by mode."""
    import json, os, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    mode, onnx = sys.argv[1], sys.argv[2]
    with open(os.path.join(here, "argv.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "onnx_exists": os.path.isfile(onnx),
                   "onnx_bytes": os.path.getsize(onnx) if os.path.isfile(onnx) else 0, "pid": os.getpid()}, f)
    if mode != "silent":
        print("fake timer 1.0 starting")  # a log line before the answer
    if mode == "number":
        print("0.25")
    elif mode == "repeats":
        print(json.dumps({"repeats": [0.3, 0.2, 0.25, 0.22], "device": "fake board"}))
    elif mode == "per_batch":
        print(json.dumps({"per_batch_ms": 10.0}))
    elif mode == "per_image":
        print(json.dumps({"per_image_ms": 2.0}))
    elif mode == "seconds":
        print(json.dumps({"seconds": 0.5}))
        print("   ")  # blank lines after the answer are not its last line
    elif mode == "fail":
        print("trtexec: not found", file=sys.stderr)
        sys.exit(3)
    elif mode == "sleep":
        sys.stdout.flush()
        time.sleep(60)
    elif mode == "garbage":
        print("all done, have a nice day")
    elif mode == "negative":
        print("-1.5")
    elif mode == "nan":
        print(json.dumps({"latency_s": "fast"}))
    elif mode == "nokey":
        print(json.dumps({"fps": 1000}))
    elif mode == "silent":
        pass
''')
FIELDS = " ".join("{" + f + "}" for f in config.COMMAND_FIELDS if f != "onnx")


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_timer.py"
    script.write_text(FAKE)

    def make(mode: str, **kw) -> Protocol:
        template = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {mode} {{onnx}} {FIELDS}"
        return protocol("command", command=template, device_name=kw.pop("device_name", "fake-board"), **kw)

    make.log = lambda: json.loads((tmp_path / "argv.json").read_text())
    return make


def test_command_number_and_fields_substituted(student, fake, tmp_path):
    out = measure(student, fake("number"), "cpu", work_dir=tmp_path / "w")
    assert set(out) == COLUMNS and out["latency_runtime"] == "command"
    assert out["latency_s"] == 0.25 and out["latency_repeats"] == 1 and out["latency_spread"] == 0
    assert out["latency_s_std"] == pytest.approx(LATENCY_NOISE_FLOOR * 0.25)
    assert out["latency_per_image_ms"] == pytest.approx(1000 * 0.25 / 20)
    assert out["latency_device"] == "fake-board" and out["latency_other_load"] is None
    assert out["latency_contended"] is False and out["latency_attempts"] == 1 and out["latency_cpu_s"] is None
    log = fake.log()
    onnx = str(tmp_path / "w" / ONNX_FILE)
    assert log["onnx_exists"] and log["onnx_bytes"] > 0  # the graph was there when the command ran
    # mode, onnx, batch, num_images, batches, repeats, warmup, guidance, channels, image_size, num_classes,
    # z_shape, y_shape, device_name
    assert log["argv"] == ["number", onnx, "8", "20", "3", "3", "1", "1.5", "1", "8", "10", "8x1x8x8", "8",
                           "fake-board"]


def test_command_json_repeats_give_the_statistics(student, fake):
    out = measure(student, fake("repeats"), "cpu")
    assert out["latency_repeats"] == 4 and out["latency_s"] == 0.22  # the lower median of 0.2, 0.22, 0.25, 0.3
    assert out["latency_min_s"] == 0.2 and out["latency_spread"] == pytest.approx(0.1 / 0.22)
    assert out["latency_p90_s"] == pytest.approx(0.285)
    assert out["latency_device"] == "fake-board"  # the name the user gave, not the command's own


@pytest.mark.parametrize("mode, seconds", [
    ("per_batch", 10.0 / 1000 * 20 / 8),  # 10 ms per batch of 8, scaled to 20 images
    ("per_image", 2.0 / 1000 * 20),
    ("seconds", 0.5),
])
def test_command_json_forms(student, fake, mode, seconds):
    assert measure(student, fake(mode), "cpu")["latency_s"] == pytest.approx(seconds)


def test_command_quotes_paths_with_spaces_and_quotes(student, fake, tmp_path):
    work = tmp_path / "my results; rm -rf x"
    out = measure(student, fake("number", device_name="Bob's orin 'nano'"), "cpu", work_dir=work)
    log = fake.log()
    assert log["argv"][1] == str(work / ONNX_FILE) and log["onnx_exists"]
    assert log["argv"][-1] == "Bob's orin 'nano'" and out["latency_device"] == "Bob's orin 'nano'"


def test_command_failure_says_exit_code_and_stderr(student, fake):
    with pytest.raises(DseError, match=r"^latency command failed \(exit 3\): trtexec: not found$"):
        measure(student, fake("fail"), "cpu")


def test_command_not_found_by_the_shell(student, tmp_path):
    p = protocol("command", command="dse-no-such-timer-xyz {onnx}", device_name="x")
    with pytest.raises(DseError, match=r"latency command failed \(exit 127\): .*dse-no-such-timer-xyz.*not found"):
        measure(student, p, "cpu", work_dir=tmp_path)


def test_command_timeout_kills_it_and_what_it_started(student, fake):
    p = fake("sleep", timeout=1.0)
    p = Protocol(**{**p.to_dict(), "command": p.command + "; echo never", "timeout": 1.0})  # the shell forks it
    start = time.perf_counter()
    with pytest.raises(DseError, match=r"timed out after 1 s"):
        measure(student, p, "cpu")
    assert time.perf_counter() - start < 15
    pid = fake.log()["pid"]
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break  # dead, waiting to be reaped by whoever adopted it
        time.sleep(0.05)
    else:
        pytest.fail(f"the timed-out command {pid} still runs")


@pytest.mark.parametrize("mode, match", [
    ("garbage", "neither a number of seconds nor a JSON object"),
    ("negative", "positive, finite"),
    ("nan", "latency_s"),
    ("nokey", "has none of latency_s, seconds, per_image_ms, per_batch_ms, repeats"),
    ("silent", "printed nothing on stdout"),
])
def test_command_output_without_a_latency_is_a_dse_error(student, fake, mode, match):
    with pytest.raises(DseError, match=match) as info:
        measure(student, fake(mode), "cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, seconds", [
    ("0.5\n", [0.5]), ("log\n1e-3\n\n", [0.001]), ('{"latency_s": 2}', [2.0]), ('{"seconds": 1.5}', [1.5]),
    ('{"per_image_ms": 0.5}', [0.005]), ('{"per_batch_ms": 4}', [0.004 * 10 / 4]),
    ('{"repeats": [1, 2, 3], "latency_s": 99}', [1.0, 2.0, 3.0]),
])
def test_parse_command_output(text, seconds):
    assert parse_command_output(text, num_images=10, batch=4) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "inf", "nan", "0", "[1, 2]", "true", '{"repeats": []}', '{"repeats": [1, -1]}', '{"latency_s": true}',
    '{"per_batch_ms": null}', "1.0 s",
])
def test_parse_command_output_refuses(text):
    with pytest.raises(DseError):
        parse_command_output(text, num_images=10, batch=4)


def test_command_values():
    p = protocol("command", command="t {onnx}", device_name="orin", num_images=300, batch=128, guidance=1.0)
    v = command_values(p, Geometry(32, 3, 10, 2), "/a b/s.onnx")
    assert v["batches"] == "3" and v["z_shape"] == "128x3x32x32" and v["y_shape"] == "128"
    assert v["guidance"] == "1.0" and v["onnx"] == "/a b/s.onnx" and v["device_name"] == "orin"
    assert runtimes.format_command(p, Geometry(32, 3, 10, 2), "/a b/s.onnx") == "t '/a b/s.onnx'"
