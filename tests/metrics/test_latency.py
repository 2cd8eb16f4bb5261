"""The latency protocol: median of measured runs, N/B accounting with guidance, warm-up not timed,
noise made on the device, the caller's model untouched; the repeats' statistics and noise floor; the
contention rule and the re-measure policy (a faked load probe), and one real contended measurement
(busy-loop processes on every CPU). No timing asserts (fake clocks instead)."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dse.errors import DseError
from dse.metrics import latency
from dse.metrics.latency import (
    CONTENTION_SLACK,
    LATENCY_COLUMNS,
    LATENCY_NOISE_FLOOR,
    batch_sizes,
    is_contended,
    measure_latency,
    repeat_stats,
    usable_cpus,
)
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

KEYS = set(LATENCY_COLUMNS)


def tiny() -> DiT:
    torch.manual_seed(0)
    return DiT(StudentArch(1, 16, 2), Geometry(8, 1, 10, 2))


def recording(model: DiT, events: list) -> DiT:
    """Record (batch seen by the network, device of z, device of y) for every forward pass."""
    model.register_forward_pre_hook(lambda _m, args: events.append((args[0].shape[0], args[0].device, args[1].device)))
    return model


class FakeClock:
    """A clock returning the given readings in turn; logs each reading in `events`."""

    def __init__(self, readings, events=None):
        self.readings, self.events = list(readings), events

    def __call__(self) -> float:
        if self.events is not None:
            self.events.append("clock")
        return self.readings.pop(0)


def test_batch_sizes():
    assert batch_sizes(300, 128) == [128, 128, 44]
    assert batch_sizes(256, 128) == [128, 128]
    assert batch_sizes(5, 128) == [5]


def test_returns_the_median_of_the_measured_runs(monkeypatch):
    # three runs of 5, 1 and 3 s wall-clock, 50, 10 and 30 s CPU: the median run is the third
    monkeypatch.setattr(latency, "_wall_clock", FakeClock([0, 5, 10, 11, 20, 23]))
    monkeypatch.setattr(latency, "_cpu_clock", FakeClock([0, 50, 100, 110, 200, 230]))
    out = measure_latency(tiny(), num_images=4, batch_size=2, repeats=3)
    assert set(out) == KEYS
    from dse.store import COLUMN_NAMES

    assert KEYS <= set(COLUMN_NAMES)  # a trial row can take them all
    assert out["latency_s"] == 3 and out["latency_cpu_s"] == 30
    assert out["latency_per_image_ms"] == 1000 * 3 / 4
    # the repeats' statistics: p90 by linear interpolation of (1, 3, 5), the fastest, SD 2, spread 4 / 3
    assert out["latency_p90_s"] == pytest.approx(4.6) and out["latency_min_s"] == 1
    assert out["latency_s_std"] == pytest.approx(2.0) and out["latency_spread"] == pytest.approx(4 / 3)
    assert out["latency_attempts"] == 1


def test_even_repeats_take_the_lower_median_a_measured_run(monkeypatch):
    monkeypatch.setattr(latency, "_wall_clock", FakeClock([0, 4, 0, 1, 0, 3, 0, 2]))
    monkeypatch.setattr(latency, "_cpu_clock", FakeClock([0, 40, 0, 10, 0, 30, 0, 20]))
    out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=4)
    assert out["latency_s"] == 2 and out["latency_cpu_s"] == 20


def test_batches_per_repeat_last_batch_smaller_guidance_doubles_and_warmup_untimed(monkeypatch):
    events: list = []
    monkeypatch.setattr(latency, "_wall_clock", FakeClock(range(100), events))
    model = recording(tiny(), events)
    out = measure_latency(model, num_images=300, batch_size=128, guidance=1.5, repeats=2, warmup=1)
    seen = [e[0] if e != "clock" else e for e in events]
    # warm-up: one batch of each distinct size, before any clock reading; then ceil(300/128) = 3
    # batches per timed run, the last one 300 - 2 * 128 = 44; guidance doubles each batch
    assert seen == [256, 88] + ["clock", 256, 256, 88, "clock"] * 2
    assert out["latency_num_images"] == 300 and out["latency_batch"] == 128 and out["latency_repeats"] == 2
    assert out["latency_guidance"] == 1.5


def test_no_guidance_no_doubling_and_no_warmup(monkeypatch):
    events: list = []
    monkeypatch.setattr(latency, "_wall_clock", FakeClock(range(100), events))
    measure_latency(recording(tiny(), events), num_images=5, batch_size=2, guidance=1.0, repeats=1, warmup=0)
    assert [e[0] if e != "clock" else e for e in events] == ["clock", 2, 2, 1, "clock"]


def test_noise_and_labels_are_made_on_the_requested_device(monkeypatch):
    made = []
    randn, randint = torch.randn, torch.randint

    def spy(fn):
        def wrapped(*args, **kwargs):
            made.append(torch.device(kwargs.get("device")))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "randn", spy(randn))
    monkeypatch.setattr(torch, "randint", spy(randint))
    events: list = []
    out = measure_latency(recording(tiny(), events), num_images=3, batch_size=2, repeats=1, device="cpu")
    assert made and all(d == torch.device("cpu") for d in made)  # created there, not moved there
    assert all(z == y == torch.device("cpu") for _, z, y in events)
    assert out["latency_device"] == "cpu" and out["latency_cpu_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_named_and_noise_on_it():
    events: list = []
    out = measure_latency(recording(tiny(), events), num_images=3, batch_size=2, repeats=1, device="cuda")
    assert all(z.type == y.type == "cuda" for _, z, y in events)
    assert out["latency_device"] == torch.cuda.get_device_name() and out["latency_cpu_s"] is None


def test_records_settings_and_leaves_the_model_alone():
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = measure_latency(model, num_images=3, batch_size=2, repeats=1)
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out["dtype"] == "float32" and out["latency_compile"] is False
    assert out["latency_threads"] == torch.get_num_threads() and out["latency_s"] > 0


def test_bfloat16_runs_under_autocast_and_is_recorded():
    assert measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, dtype="bfloat16")["dtype"] == "bfloat16"
    assert measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, dtype=torch.float16)["dtype"] == "float16"


@pytest.mark.parametrize("kwargs", [{"dtype": "int8"}, {"num_images": 0}, {"batch_size": 0}, {"repeats": 0}])
def test_bad_settings_are_dse_errors(kwargs):
    with pytest.raises(DseError):
        measure_latency(tiny(), **{"num_images": 2, "batch_size": 2, "repeats": 1, **kwargs})


def test_compile_that_cannot_start_falls_back_to_eager(monkeypatch):
    def broken(fn, **_):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="eager"):
        out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, compile=True)
    assert out["latency_compile"] is False


def test_compile_failing_at_first_call_falls_back_to_eager(monkeypatch):
    def compiled_but_failing(fn, **_):
        def call(*args):
            raise RuntimeError("backend compiler failed")
        return call

    monkeypatch.setattr(torch, "compile", compiled_but_failing)
    with pytest.warns(UserWarning, match="eager"):
        out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, compile=True)
    assert out["latency_compile"] is False and out["latency_s"] > 0


def test_compile_recorded_when_used(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # a stand-in: real compilation takes ~30 s on CPU
    assert measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, compile=True)["latency_compile"] is True


# ----------------------------------------------------------------------------------- noise
def test_repeat_stats_noise_floor_when_the_repeats_agree():
    out = repeat_stats([2.0, 2.0, 2.0, 2.0], num_images=4)
    assert out["latency_s"] == out["latency_p90_s"] == out["latency_min_s"] == 2.0
    assert out["latency_spread"] == 0
    assert out["latency_s_std"] == pytest.approx(LATENCY_NOISE_FLOOR * 2.0)  # the floor, not the repeats' 0
    one = repeat_stats([0.5], num_images=10)
    assert one["latency_s_std"] == pytest.approx(LATENCY_NOISE_FLOOR * 0.5) and one["latency_spread"] == 0
    assert one["latency_per_image_ms"] == pytest.approx(50.0)


def test_repeat_stats_p90_is_numpys_linear_percentile_and_sd_the_sample_sd():
    walls = [1.0, 1.1, 1.2, 1.3, 3.0]
    out = repeat_stats(walls, num_images=1)
    assert out["latency_s"] == 1.2 and out["latency_p90_s"] == pytest.approx(np.percentile(walls, 90))
    assert out["latency_s_std"] == pytest.approx(np.std(walls, ddof=1))  # above the floor here
    assert out["latency_spread"] == pytest.approx(2.0 / 1.2)


# ----------------------------------------------------------------------------------- contention
def test_contention_rule():
    # all threads on all CPUs: any other load beyond the slack contends
    assert not is_contended(CONTENTION_SLACK - 0.01, threads=2, cpus=2)
    assert is_contended(CONTENTION_SLACK + 0.01, threads=2, cpus=2)
    # one thread on two CPUs: other work may use the free CPU
    assert not is_contended(1 + CONTENTION_SLACK - 0.01, threads=1, cpus=2)
    assert is_contended(1 + CONTENTION_SLACK + 0.01, threads=1, cpus=2)
    # more threads than CPUs: nothing is free
    assert is_contended(CONTENTION_SLACK + 0.01, threads=8, cpus=2)
    # unknown load: not contended; a short window allows for the probe's 10 ms resolution
    assert not is_contended(None, threads=2, cpus=2)
    assert is_contended(0.5, threads=2, cpus=2) and not is_contended(0.5, threads=2, cpus=2, window_s=0.05)
    assert is_contended(0.5, threads=2, cpus=2, window_s=10.0)


class FakeProbe:
    """Stands in for latency._load_probe: each measurement's window reads the next (other load, window)."""

    def __init__(self, loads):
        self.loads, self.started = list(loads), 0

    def __call__(self):
        self.started += 1
        reading = self.loads.pop(0)
        return lambda: reading


def test_contended_then_quiet_is_measured_twice_and_kept_quiet(monkeypatch):
    probe, slept = FakeProbe([(1000.0, 1.0), (0.0, 1.0)]), []
    monkeypatch.setattr(latency, "_load_probe", probe)
    monkeypatch.setattr(latency, "_sleep", slept.append)
    # attempt 1 times 5 s (contended), attempt 2 times 1 s (quiet): the quiet one is returned
    monkeypatch.setattr(latency, "_wall_clock", FakeClock([0, 5, 10, 11]))
    out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, attempts=3)
    assert probe.started == 2 and slept == [2.0]
    assert out["latency_attempts"] == 2 and out["latency_contended"] is False
    assert out["latency_other_load"] == 0.0 and out["latency_s"] == 1


def test_always_contended_is_flagged_and_the_least_loaded_kept(monkeypatch):
    probe, slept = FakeProbe([(1000.0, 1.0), (500.0, 1.0), (800.0, 1.0)]), []
    monkeypatch.setattr(latency, "_load_probe", probe)
    monkeypatch.setattr(latency, "_sleep", slept.append)
    monkeypatch.setattr(latency, "_wall_clock", FakeClock([0, 5, 10, 13, 20, 27]))
    out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, attempts=3)
    assert probe.started == 3 and slept == [2.0, 4.0]
    assert out["latency_attempts"] == 3 and out["latency_contended"] is True
    assert out["latency_other_load"] == 500.0 and out["latency_s"] == 3  # the second, least loaded measurement


def test_one_attempt_measures_once_and_says_so(monkeypatch):
    monkeypatch.setattr(latency, "_load_probe", FakeProbe([(1000.0, 1.0)]))
    monkeypatch.setattr(latency, "_sleep", lambda s: pytest.fail("no wait with one attempt"))
    out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1)
    assert out["latency_attempts"] == 1 and out["latency_contended"] is True
    with pytest.raises(DseError, match="attempts"):
        measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, attempts=0)


def test_unknown_load_is_not_contended(monkeypatch):
    monkeypatch.setattr(latency, "_load_probe", FakeProbe([(None, 1.0)]))
    out = measure_latency(tiny(), num_images=2, batch_size=2, repeats=1, attempts=3)
    assert out["latency_other_load"] is None and out["latency_contended"] is False and out["latency_attempts"] == 1


def test_busy_loops_on_every_cpu_are_seen_as_contention(monkeypatch):
    """REAL contention: one busy-loop process per CPU this process may use while a tiny model is timed
    with all its threads; the probe must see other work (> 0.5 CPU) and flag the measurement, also
    when it is made again."""
    monkeypatch.setattr(latency, "_sleep", lambda s: None)
    model = tiny()
    threads = torch.get_num_threads()
    torch.set_num_threads(len(usable_cpus()))  # all threads: no CPU is left free for other work
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in usable_cpus()]
    try:
        time.sleep(0.3)  # let them start spinning
        # ~0.1 s of timed work per measurement quiet (2 CPUs), longer while the hogs share the CPUs
        out = measure_latency(model, num_images=2048, batch_size=128, repeats=2, attempts=2)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
        torch.set_num_threads(threads)
    assert out["latency_other_load"] > 0.5
    assert out["latency_contended"] is True and out["latency_attempts"] == 2
    assert math.isfinite(out["latency_s"]) and out["latency_s"] > 0
