"""Latency first: a study measures every candidate before training (on fresh weights), keeps the
candidates outside --max-latency / --max-params untrained, reuses the latency cache across studies, never
trusts a contended figure, and fails untrained the trials whose latency measurement failed. A fake
runtime (`dse.metrics.runtimes`) stands in for the clock; the fake executor of test_study records which
trials would train and with which latency."""

import json
import sys
import tomllib
import types

import pytest

from dse import study as study_mod
from dse.config import study_from_dict, with_overrides
from dse.errors import DseError
from dse.events import OUTSIDE
from dse.latency_cache import LatencyCache
from dse.store import ResultsStore

from .test_study import FakeProtocol, executor  # noqa: F401 - the fake executor fixture

SPACE = """
[study]
name = "lat"
[data]
dataset = "digits"
[space]
budget = "30k"
architectures = [[1, 16, 2], [2, 16, 2], [4, 16, 2]]
seeds = [0, 1]
[train]
steps = 5
batch_size = 16
[eval]
latency_num_images = 100
"""


def _cfg(tmp_path, name="lat", **space):
    c = study_from_dict(tomllib.loads(SPACE))
    return with_overrides(c, study={"name": name}, space=space,
                          run={"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")})


@pytest.fixture
def runtime(monkeypatch):
    """A fake dse.metrics.runtimes: depth d takes d * 0.1 s for the 100 images (1 ms/image per block),
    unless `contended` or `fail` name the depth; `calls` lists the depths measured."""
    state = types.SimpleNamespace(calls=[], ort_calls=[], contended=set(), fail=set(), weights=[])

    def measure(model, protocol, device, *, work_dir=None, attempts=3):
        d = model.arch.depth
        if protocol.runtime == "onnxruntime":  # the deployment proxy timed beside torch (eval.onnx)
            state.ort_calls.append((d, protocol.num_images, str(device)))
            return {"latency_s": 0.3 * d, "latency_threads": 2, "latency_num_images": protocol.num_images,
                    "latency_batch": 32}
        state.calls.append(d)
        state.weights.append(float(next(model.parameters()).detach().abs().sum()))
        if d in state.fail:
            raise DseError("latency command failed (exit 3): trtexec: not found")
        s = 0.1 * d
        return {"latency_s": s, "latency_per_image_ms": 1000 * s / protocol.num_images, "latency_s_std": 0.05 * s,
                "latency_p90_s": 1.02 * s, "latency_num_images": protocol.num_images, "latency_runtime": protocol.runtime,
                "latency_contended": d in state.contended, "latency_attempts": 3 if d in state.contended else 1,
                "latency_device": "cpu"}

    fake = types.SimpleNamespace(
        protocol_of=lambda e: FakeProtocol(e.latency_runtime, e.latency_num_images),
        fingerprint=lambda protocol, device: {"device": "fake cpu", "threads": 2, "runtime": protocol.runtime},
        measure=measure)
    monkeypatch.setitem(sys.modules, "dse.metrics.runtimes", fake)
    return state


def _trained(executor):  # noqa: F811
    return [tid for call in executor for tid in call]


def test_a_study_measures_latency_before_training_and_every_row_has_it(tmp_path, executor, runtime):  # noqa: F811
    seen = []
    outcome = study_mod.run_study(_cfg(tmp_path), on_latency=lambda i, n, a: seen.append((i, n, a.arch.depth)))
    assert seen == [(1, 3, 1), (2, 3, 2), (3, 3, 4)]  # each architecture once, before any trial
    assert sorted(runtime.calls) == [1, 2, 4] and len(_trained(executor)) == 6  # 3 architectures x 2 seeds
    first = study_mod.latency_pass  # the measurement used freshly initialised (seeded) weights
    assert all(w > 0 for w in runtime.weights) and first is not None
    assert [a.columns["latency_s"] for a in outcome.latency] == pytest.approx([0.1, 0.2, 0.4])
    # eval.onnx: the ONNX graph is timed on onnxruntime's CPU too, once per architecture, into the same result
    assert runtime.ort_calls == [(1, 100, "cpu"), (2, 100, "cpu"), (4, 100, "cpu")]
    assert [a.columns["latency_onnx_cpu_s"] for a in outcome.latency] == pytest.approx([0.3, 0.6, 1.2])
    assert all(a.columns["latency_cached"] is False and a.columns["latency_key"] for a in outcome.latency)
    data = json.loads(outcome.plan.layout.latency_file.read_text())
    assert [a["depth"] for a in data["architectures"]] == [1, 2, 4] and all(a["inside"] for a in data["architectures"])


def test_max_latency_trains_only_the_candidates_inside(tmp_path, executor, runtime, monkeypatch):  # noqa: F811
    specs = []
    real = sys.modules["dse.executor"].run_trials

    def recording(todo, *args, **kw):
        specs.extend(todo)
        return real(todo, *args, **kw)

    monkeypatch.setattr(sys.modules["dse.executor"], "run_trials", recording)
    events = []
    cfg = _cfg(tmp_path, max_latency="2.5ms")  # depth 1: 1 ms/image, 2: 2 ms, 4: 4 ms
    outcome = study_mod.run_study(cfg, on_event=lambda tid, kind, data: events.append((tid, kind, data)))
    assert sorted({s.arch.depth for s in specs}) == [1, 2] and len(specs) == 4
    assert all(s.latency_row["latency_s"] == pytest.approx(0.1 * s.arch.depth) for s in specs)  # trials know it
    outside = [(tid, d["reason"]) for tid, kind, d in events if kind == OUTSIDE]
    assert len(outside) == 2 and all(tid.startswith("d4-") and "4 ms/image > max_latency 2.5ms" in r for tid, r in outside)
    assert outcome.outside == 2
    assert not ResultsStore(outcome.plan.layout.trials_dir).statuses(tid for tid, _ in outside)  # no rows: never trained
    status = study_mod.study_status("lat", tmp_path / "results")
    assert status["counts"]["outside"] == 2 and status["counts"]["pending"] == 0
    html = outcome.report_path.read_text()
    assert "2.5ms" in html  # the report draws the constraint


def test_max_params_leaves_candidates_unmeasured_and_untrained(tmp_path, executor, runtime):  # noqa: F811
    from dse.sizing import enumerate_candidates
    from dse.study import geometry_of

    cfg = _cfg(tmp_path, max_params="12k")
    sizes = {c.arch.depth: c.params for c in enumerate_candidates(cfg.space, geometry_of(cfg))}
    below = sorted(d for d, p in sizes.items() if p <= 12_000)
    assert 0 < len(below) < 3  # the constraint cuts the space
    outcome = study_mod.run_study(cfg)
    assert sorted(runtime.calls) == below  # the others are not even measured
    assert sorted({int(t.split("-")[0][1:]) for t in _trained(executor)}) == below
    reasons = [a.reason for a in outcome.latency if not a.inside]
    assert reasons and all("> max_params 12k" in r for r in reasons)


def test_a_second_study_on_the_same_device_measures_nothing_already_cached(tmp_path, executor, runtime):  # noqa: F811
    study_mod.run_study(_cfg(tmp_path, name="first"))
    assert sorted(runtime.calls) == [1, 2, 4]
    runtime.calls.clear()
    second = study_mod.run_study(_cfg(tmp_path, name="second"))
    assert runtime.calls == []
    assert all(a.columns["latency_cached"] is True for a in second.latency)
    assert [a.columns["latency_s"] for a in second.latency] == pytest.approx([0.1, 0.2, 0.4])
    # another protocol is another measurement
    third = with_overrides(_cfg(tmp_path, name="third"), eval={"latency_num_images": 200})
    study_mod.run_study(third)
    assert sorted(runtime.calls) == [1, 2, 4]
    # and run.latency_cache = false neither reads nor writes it
    runtime.calls.clear()
    off = with_overrides(_cfg(tmp_path, name="fourth"), run={"latency_cache": False})
    study_mod.run_study(off)
    assert sorted(runtime.calls) == [1, 2, 4]
    assert len(LatencyCache.of_results(tmp_path / "results").entries()) == 6


def test_a_contended_latency_is_not_cached_not_ranked_and_cannot_exclude(tmp_path, executor, runtime):  # noqa: F811
    runtime.contended = {4}
    outcome = study_mod.run_study(_cfg(tmp_path, max_latency="2.5ms"))
    four = next(a for a in outcome.latency if a.arch.depth == 4)
    assert four.columns["latency_contended"] is True and four.inside  # its figure is not trusted either way
    assert not four.usable
    assert len(LatencyCache.of_results(tmp_path / "results").entries()) == 2
    assert any("d4-w16-h2" in w and "contended" in w for w in outcome.warnings)
    runtime.calls.clear()
    runtime.contended = set()
    study_mod.run_study(_cfg(tmp_path, name="again", max_latency="2.5ms"))
    assert runtime.calls == [4]  # only the one it could not trust is measured again


def test_a_failed_measurement_fails_its_trials_untrained(tmp_path, executor, runtime):  # noqa: F811
    runtime.fail = {2}
    outcome = study_mod.run_study(_cfg(tmp_path))
    assert all(not t.startswith("d2-") for t in _trained(executor)) and len(_trained(executor)) == 4
    df = ResultsStore(outcome.plan.layout.trials_dir).read()
    failed = df[df["status"] == "failed"]
    assert len(failed) == 2 and set(failed["depth"]) == {2}
    assert all("latency command failed (exit 3): trtexec: not found" in e for e in failed["error"])
    assert outcome.num_failed == 2 and any("failed for d2-w16-h2" in w for w in outcome.warnings)


def test_when_every_measurement_fails_the_study_is_refused_writing_nothing(tmp_path, executor, runtime):  # noqa: F811
    runtime.fail = {1, 2, 4}
    with pytest.raises(DseError, match="every measurement failed.*trtexec: not found"):
        study_mod.run_study(_cfg(tmp_path))
    assert executor == [] and not (tmp_path / "results" / "lat").exists()


def test_rows_stored_without_latency_get_their_architectures(tmp_path, executor, runtime):  # noqa: F811
    cfg = _cfg(tmp_path)
    plan = study_mod.plan_study(cfg)
    store = plan.store
    spec = plan.specs[0]
    store.write({"trial_id": spec.trial_id, "study": "lat", "status": "complete", "depth": spec.arch.depth,
                 "width": spec.arch.width, "heads": spec.arch.heads, "params": 1000, "fid": 3.0})
    study_mod.run_study(cfg)
    row = store.read().set_index("trial_id").loc[spec.trial_id]
    assert row["latency_s"] == pytest.approx(0.1 * spec.arch.depth) and row["fid"] == 3.0
