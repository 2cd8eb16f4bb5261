"""The latency protocol: median of measured runs, N/B accounting with guidance, warm-up not timed,
noise made on the device, the caller's model untouched. No timing asserts (fake clocks instead)."""

from __future__ import annotations

import pytest
import torch

from dse.errors import DseError
from dse.metrics import latency
from dse.metrics.latency import batch_sizes, measure_latency
from dse.models.dit import DiT
from dse.types import Geometry, StudentArch

KEYS = {
    "latency_s", "latency_per_image_ms", "latency_cpu_s", "latency_device", "latency_batch", "latency_num_images",
    "latency_repeats", "latency_guidance", "latency_threads", "latency_compile", "dtype",
}


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
