"""Latency-first settings: constraints with their units, the runtimes and the command template, refused
with one clear line when wrong; and settings of where latency is measured never change a trial's id."""

import dataclasses
import json

import pytest

from dse.config import (COMMAND_FIELDS, LATENCY_RUNTIMES, EvalConfig, SpaceConfig, eval_from_dict, parse_latency,
                        study_from_dict)
from dse.errors import DseError

from .test_trial import tiny_spec


@pytest.mark.parametrize("text, seconds, images", [
    ("2ms", 0.002, 1), ("0.5 ms", 0.0005, 1), ("250us", 0.00025, 1), ("30s/50000", 30.0, 50000),
    ("30s/50k", 30.0, 50000), ("1.2 s / 10k images", 1.2, 10000), ("1min/1e5", 60.0, 100000),
])
def test_latency_limits_read_with_their_unit(text, seconds, images):
    got = parse_latency(text)
    assert got[0] == pytest.approx(seconds) and got[1] == images


@pytest.mark.parametrize("text", ["2", "ms", "-2ms", "0ms", "2 parsecs", "2ms/0", "2ms/1.5", "inf ms", "2ms/x"])
def test_latency_limits_without_a_unit_or_count_are_refused(text):
    with pytest.raises(DseError, match="max_latency"):
        parse_latency(text)


def _study(**space):
    return study_from_dict({"study": {"name": "t"}, "data": {"dataset": "digits"},
                            "space": {"budget": "20k", "widths": [16], **space}})


def test_constraints_in_a_space_file():
    s = _study(max_params="15k", max_latency="30s/50000").space
    assert s.max_params_count == 15_000 and s.max_latency_per_image_s == pytest.approx(30 / 50_000)
    assert _study(max_params=15000).space.max_params_count == 15_000  # a number works like the budget
    none = _study().space
    assert none.max_params_count is None and none.max_latency_per_image_s is None
    for bad, message in (({"max_params": "lots"}, "invalid max_params 'lots'"),
                         ({"max_latency": "2"}, "invalid max_latency '2'")):
        with pytest.raises(DseError, match=message):
            _study(**bad)


def test_runtimes_and_command_template_are_checked():
    assert LATENCY_RUNTIMES == ("torch", "onnxruntime", "command")
    ok = eval_from_dict({"latency_runtime": "command", "latency_command": "ssh jetson 'run {onnx} {batch}'",
                         "latency_device_name": "jetson-orin-nano"})
    assert ok.latency_runtime == "command"
    for values, message in (
        ({"latency_runtime": "tensorrt"}, "latency_runtime must be torch, onnxruntime or command"),
        ({"latency_runtime": "command", "latency_device_name": "j"}, "latency_command is empty"),
        ({"latency_runtime": "command", "latency_command": "time {model}", "latency_device_name": "j"}, r"names \{model\}"),
        ({"latency_runtime": "command", "latency_command": "time {batch}", "latency_device_name": "j"}, r"does not name \{onnx\}"),
        ({"latency_runtime": "command", "latency_command": "time {onnx", "latency_device_name": "j"}, "literal brace"),
        ({"latency_runtime": "command", "latency_command": "t {onnx}"}, "needs eval.latency_device_name"),
        ({"latency_command": "t {onnx}"}, "set latency_runtime"),
        ({"latency_timeout": 0}, "latency_timeout"),
    ):
        with pytest.raises(DseError, match=message):
            eval_from_dict(values)
    assert "onnx" in COMMAND_FIELDS and "z_shape" in COMMAND_FIELDS


def test_where_latency_is_measured_does_not_change_trial_ids():
    a = tiny_spec("/p")
    for change in ({"latency_runtime": "onnxruntime"}, {"latency_recheck": True}, {"latency_timeout": 5.0},
                   {"latency_runtime": "command", "latency_command": "x {onnx}", "latency_device_name": "j"}):
        b = dataclasses.replace(a, eval=dataclasses.replace(a.eval, **change))
        assert b.trial_id == a.trial_id and b.candidate_id == a.candidate_id
    measured = dataclasses.replace(a, latency=(("latency_s", 0.5), ("latency_cached", True)))
    assert measured.trial_id == a.trial_id and measured.latency_row == {"latency_s": 0.5, "latency_cached": True}
    # what the student computes still does
    assert dataclasses.replace(a, eval=dataclasses.replace(a.eval, guidance=2.0)).trial_id != a.trial_id


def test_every_row_of_a_trial_carries_its_latency_even_a_stopped_one():
    from dse import search
    from dse.executor.driver import stopped_row
    from dse.trial import base_row

    spec = dataclasses.replace(tiny_spec("/p"), latency=(("latency_s", 0.5), ("latency_s_std", 0.03),
                                                        ("latency_cached", True)))
    assert base_row(spec)["latency_s"] == 0.5 and base_row(spec)["latency_cached"] is True
    stop = search.Stop(spec.trial_id, 5, 0.1, 1, 5, 1, 3)
    row = stopped_row(spec, stop)
    assert row["status"] == "stopped" and row["latency_s"] == 0.5 and row["latency_s_std"] == 0.03
    config = json.loads(base_row(spec)["config_json"])
    assert "latency" not in config and config["eval"]["latency_num_images"] == 256  # the config, not the measurement
    assert SpaceConfig().max_latency == "" and EvalConfig().latency_runtime == "torch"
