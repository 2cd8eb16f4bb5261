"""Ray Tune on a local 2-CPU Ray: every spec runs once and lands in the store, failures included;
the optuna driver runs distinct candidates only; successive halving stores dominated trials as stopped;
trials run at the driver's priority; a cluster address is checked within seconds; Ctrl-C stops a run
with exit code 130 and the next run resumes."""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from dse.config import TrainConfig
from dse.errors import DseError
from dse.store import ResultsStore
from dse.types import Geometry, StudentArch

from .test_trial import tiny_spec


@pytest.fixture(scope="module")
def local_ray():
    import ray

    import dse.executor  # noqa: F401 - its settings (worker priority) apply to the Ray started here

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fast_spec(pairs, arch=None, **train):
    """A tiny trial that defers its latency (the study measures it later), so it is mostly training."""
    spec = tiny_spec(pairs, arch=arch or StudentArch(1, 16, 2), defer_latency=True)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **train))


def test_trials_run_under_ray_and_failures_are_stored(local_ray, tiny_pairs, tmp_path):
    from dse.executor import run_trials

    import numpy as np

    from dse.data.pairs import PairWriter

    good = [tiny_spec(tiny_pairs, arch=StudentArch(1, 16, h)) for h in (2, 4)]
    bad = tiny_spec(tmp_path / "missing-pairs")
    meta = {"teacher": {"kind": "t"}, "sampler": {}, "dataset": "digits", "seed": 0, "image_dtype": "float32"}
    x = np.zeros((64, 1, 8, 8), np.float32)
    x[3] = np.nan  # a teacher image with NaN: the loss is NaN at the first step
    PairWriter(tmp_path / "nan-pairs", meta).append(np.zeros((64, 1, 8, 8)), np.arange(64) % 10, x)
    nan = tiny_spec(tmp_path / "nan-pairs")
    events, done = [], {}
    run_trials(good + [bad, nan], tmp_path / "trials", storage_dir=tmp_path / "ray", cpus_per_trial=1,
               on_event=lambda tid, kind, data: (events.append((tid, kind)), done.setdefault(tid, data)
                                                 if kind in ("complete", "failed") else None))
    df = ResultsStore(tmp_path / "trials").read().set_index("trial_id")
    assert sorted(df.index) == sorted(s.trial_id for s in good + [bad, nan])
    assert df.loc[nan.trial_id, "status"] == "failed" and "loss became nan at step 1" in df.loc[nan.trial_id, "error"]
    assert set(df.loc[[s.trial_id for s in good], "status"]) == {"complete"}
    assert df.loc[bad.trial_id, "status"] == "failed" and "manifest.json" in df.loc[bad.trial_id, "error"]
    assert (bad.trial_id, "failed") in events and (good[0].trial_id, "complete") in events
    assert df.loc[good[0].trial_id, "latency_threads"] == 1  # a trial uses the CPUs Ray gave it
    # Ray's default would start the workers at nice 15, where any other load starves them
    assert {done[s.trial_id]["nice"] for s in good} == {os.nice(0)}


def test_optuna_runs_distinct_sampled_candidates_and_resumes_from_the_store(local_ray, tiny_pairs, tmp_path):
    from dse.executor import run_trials

    specs = [fast_spec(tiny_pairs, StudentArch(d, 16, h)) for d in (1, 2) for h in (2, 4)]
    store = ResultsStore(tmp_path / "trials")
    started = []
    kwargs = dict(storage_dir=tmp_path / "ray", cpus_per_trial=2, search="optuna", seed=3,
                  on_event=lambda tid, kind, data: started.append(tid) if kind == "start" else None)
    run_trials(specs, store.root, num_samples=3, **kwargs)
    df = store.read()
    assert len(df) == 3 and df["trial_id"].nunique() == 3 and set(df["status"]) == {"complete"}
    assert sorted(started) == sorted(df["trial_id"])  # each sampled candidate ran once
    assert set(df["trial_id"]) <= {s.trial_id for s in specs}

    started.clear()  # as a study resumes: the fourth to run, the three done as context for the sampler
    todo = [s for s in specs if s.trial_id not in set(df["trial_id"])]
    run_trials(todo, store.root, num_samples=0, context=specs, **kwargs)
    assert len(started) == 1 and started[0] not in set(df["trial_id"])
    assert set(store.read()["trial_id"]) == {s.trial_id for s in specs}


def test_halving_stores_a_dominated_trial_as_stopped_and_lets_the_others_complete(local_ray, tiny_pairs, tmp_path):
    from dse.executor import run_trials

    # 150 steps: progress every 50 steps, rungs (3 rungs, eta 3) at steps 17 and 50.
    good = fast_spec(tiny_pairs, StudentArch(1, 16, 2), steps=150)
    small = fast_spec(tiny_pairs, StudentArch(1, 8, 2), steps=150)  # fewer parameters: never dominated by good
    frozen = fast_spec(tiny_pairs, StudentArch(1, 16, 2), steps=150, lr=1e-9)  # same size as good, no learning
    events = []
    # 2 CPUs per trial: one at a time, in this order, so `frozen` meets `good` at the first rung; `small`
    # then runs in the worker that ran the stopped trial
    run_trials([good, frozen, small], tmp_path / "trials", storage_dir=tmp_path / "ray", cpus_per_trial=2,
               halving=True, halving_rungs=3, halving_eta=3,
               on_event=lambda tid, kind, data: events.append((tid, kind, data)))
    df = ResultsStore(tmp_path / "trials").read().set_index("trial_id")
    assert df.loc[good.trial_id, "status"] == "complete" and df.loc[small.trial_id, "status"] == "complete"
    row = df.loc[frozen.trial_id]
    assert row["status"] == "stopped", row["error"]
    assert row["error"].startswith("stopped at step 50 by successive halving (rank 1 over (params, loss) at rung 1")
    assert row["steps"] == 50 and row["final_loss"] > df.loc[good.trial_id, "final_loss"]
    assert row["params"] == df.loc[good.trial_id, "params"] and row["lr"] == 1e-9
    assert [kind for tid, kind, _ in events if tid == frozen.trial_id][-1] == "stopped"
    trains = [d for tid, kind, d in events if kind == "train"]
    assert trains and all({"step", "loss"} <= set(d) for d in trains)


def test_a_cohort_is_one_ray_trial_with_events_and_a_row_for_each_member(local_ray, tiny_pairs, tmp_path):
    from dse.executor import run_trials

    seeds = [fast_spec(tiny_pairs, seed=s, steps=60) for s in (0, 1, 2)]
    other = fast_spec(tiny_pairs, StudentArch(1, 8, 2), steps=60)  # another architecture: trains alone
    events = []
    run_trials([*seeds, other], tmp_path / "trials", storage_dir=tmp_path / "ray", cpus_per_trial=2, cohort_size=8,
               on_event=lambda tid, kind, data: events.append((tid, kind, data)))
    df = ResultsStore(tmp_path / "trials").read().set_index("trial_id")
    assert (df["status"] == "complete").all() and len(df) == 4
    assert set(df.loc[[s.trial_id for s in seeds], "cohort_id"]) == {seeds[0].trial_id}
    assert set(df.loc[[s.trial_id for s in seeds], "cohort_size"]) == {3}
    assert df.loc[other.trial_id, "cohort_size"] == 1 and df.loc[other.trial_id, "cohort_id"] == other.trial_id
    for spec in [*seeds, other]:
        kinds = [kind for tid, kind, _ in events if tid == spec.trial_id]
        assert kinds[0] == "start" and kinds[-1] == "complete" and "train" in kinds, (spec.trial_id, kinds)
        steps = [d["step"] for tid, kind, d in events if tid == spec.trial_id and kind == "train"]
        assert steps == sorted(steps) and steps[-1] == 60
    tune_trials = [p for p in (tmp_path / "ray").rglob("*") if p.is_dir() and p.name in df.index]
    assert sorted(p.name for p in tune_trials) == sorted([seeds[0].trial_id, other.trial_id])  # two Ray trials


def test_each_candidate_gets_the_gpu_share_its_memory_needs():
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory  # what Tune makes of a dict

    from dse.executor import plan_resources, resources_of

    def _resources_of(resources, config):  # the placement group Tune makes of the dict resources_of gives
        return resource_dict_to_pg_factory(resources_of(resources, config))

    g = Geometry(32, 3, 10, 2)
    small = fast_spec("/p", StudentArch(6, 96, 3), batch_size=256)
    small = dataclasses.replace(small, geometry=g)
    big = dataclasses.replace(small, arch=StudentArch(28, 1152, 16), train=TrainConfig(batch_size=256))
    res = plan_resources([small, big], cpus_per_trial=0, gpus_per_trial=-1, node_cpus=16, node_gpus=1,
                         gpu_bytes=80 * 10**9)
    assert res == {small.trial_id: (2.0, 0.125), big.trial_id: (16.0, 1.0)}
    assert resources_of(res, {"trial_id": small.trial_id}) == {"CPU": 2.0, "GPU": 0.125}  # a plain dict for Tune
    assert _resources_of(res, {"trial_id": small.trial_id}).bundles == [{"CPU": 2.0, "GPU": 0.125}]
    cpu_only = plan_resources([small, big], cpus_per_trial=0, gpus_per_trial=-1, node_cpus=2, node_gpus=0)
    assert set(cpu_only.values()) == {(2.0, 0.0)}
    assert _resources_of(cpu_only, {"trial_id": big.trial_id}).bundles == [{"CPU": 2.0}]
    with pytest.raises(DseError, match="whole number"):
        plan_resources([small], cpus_per_trial=0, gpus_per_trial=1.5, node_cpus=16, node_gpus=2)
    with pytest.raises(DseError, match="no GPU"):
        plan_resources([small], cpus_per_trial=0, gpus_per_trial=0.25, node_cpus=2, node_gpus=0)
    with pytest.raises(DseError, match="no Ray node has more than 2 GPUs"):
        plan_resources([small], cpus_per_trial=0, gpus_per_trial=4, node_cpus=16, node_gpus=2)


def test_a_request_no_node_of_the_cluster_can_meet_is_refused(local_ray, tiny_pairs):
    from dse.executor import prepare_cluster

    spec = fast_spec(tiny_pairs)
    with pytest.raises(DseError, match="no Ray node has more than 2 CPUs"):
        prepare_cluster([spec], cpus_per_trial=3, gpus_per_trial=0, address="")
    with pytest.raises(DseError, match="the Ray cluster has no GPU"):
        prepare_cluster([spec], cpus_per_trial=1, gpus_per_trial=1, address="")
    assert prepare_cluster([spec], cpus_per_trial=1, gpus_per_trial=0, address="") == {spec.trial_id: (1.0, 0.0)}


@pytest.mark.parametrize("address", ["not-an-address", "127.0.0.1", "host:99999", "http://h:6379", "h:0", ":6379"])
def test_a_malformed_address_is_refused_saying_which_forms_work(address):
    from dse.executor import check_reachable

    with pytest.raises(DseError, match="use HOST:PORT .* ray://HOST:PORT .* or auto"):
        check_reachable(address)


def test_an_unreachable_or_foreign_address_is_reported_within_seconds():
    from dse.executor import check_reachable

    start = time.monotonic()
    with pytest.raises(DseError, match=r"cannot reach the Ray cluster at 127.0.0.1:1 \(Connection refused\): "
                                       r"is `ray start --head --port 1` running on 127.0.0.1"):
        check_reachable("127.0.0.1:1")
    assert time.monotonic() - start < 6

    server = socket.socket()  # something listens there, but it is not Ray: it accepts and says nothing
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(DseError, match="it does not answer as one"):
            check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()
    assert time.monotonic() - start < 15


def test_the_optuna_searcher_never_suggests_a_candidate_twice_and_is_seeded():
    from ray.tune.search import Searcher

    from dse.executor.optuna_search import make_optuna_search

    keys = {f"c{i}": ("get-l2", w, d, h) for i, (w, d, h) in enumerate(
        [(64, 10, 4), (64, 10, 8), (64, 11, 4), (96, 5, 4), (96, 5, 8), (128, 3, 4), (128, 3, 8)])}
    known = {"c0": ("complete", [10.0, 100.0]), "c1": ("pruned", None)}  # c0 done, c1 stopped by halving

    def drive(seed):
        searcher = make_optuna_search(keys, known, seed, unavailable={"c6"})  # c6 runs elsewhere
        order = []
        for n in range(5):
            got = searcher.suggest(f"tune-{n}")
            order.append(got if got == Searcher.FINISHED else got["trial_id"])
            if got != Searcher.FINISHED and n % 2:  # some end before the next suggestion, some still run
                searcher.on_trial_complete(f"tune-{n}", {"phase": "done", "status": "complete", "fid": 5.0 + n,
                                                         "params": 100.0})
        return order, searcher

    order, searcher = drive(seed=7)
    assert sorted(order[:4]) == ["c2", "c3", "c4", "c5"]  # only the untried, once each
    assert order[4] == Searcher.FINISHED  # every candidate known, tried or run elsewhere
    assert drive(seed=7)[0] == order  # the same seed, the same choices
    first = searcher._ot_study.trials[:2]  # the known results, told first, on their paths
    assert [(t.state.name, t.params) for t in first] == [
        ("COMPLETE", {"width": 64, "depth|width=64": 10, "heads|depth=10": 4}),
        ("PRUNED", {"width": 64, "depth|width=64": 10, "heads|depth=10": 8})]  # heads: 4 only at depth 11


def test_the_optuna_searcher_is_an_ordinary_class_that_pickles_by_name():
    import pickle

    from dse.executor import optuna_search

    cls = optuna_search.DistinctOptunaSearch
    assert (cls.__module__, cls.__qualname__) == ("dse.executor.optuna_search", "DistinctOptunaSearch")
    assert pickle.loads(pickle.dumps(cls)) is cls
    searcher = optuna_search.make_optuna_search({"c0": ("get-l2", 64, 2, 4)}, {}, seed=0)
    assert type(pickle.loads(pickle.dumps(searcher))) is cls


def test_the_executor_imports_optuna_only_for_the_optuna_search_and_uses_rays_public_api():
    import ast

    code = "import sys, dse.executor; print(sorted({'optuna', 'dse.executor.optuna_search'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    private = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "dse" / "executor").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray"):
                if node.module.startswith("ray.tune.execution") or node.module.startswith("ray._"):
                    private.setdefault(path.name, []).append(node.module)
    assert private == {"cluster.py": ["ray._raylet"]}  # the GCS and token probes only (no public API for them)


def test_dse_run_refuses_an_unreachable_cluster_in_seconds_writing_nothing(tmp_path):
    from .test_resume import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "dse", "run", "--address", "127.0.0.1:1", "--results-dir",
                          str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused)"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60  # today's Ray retries for minutes
    assert not list(tmp_path.iterdir())  # no study.json, no claims, no pairs, no report


INTERRUPT_STEPS, INTERRUPT_BATCH = 120, 16
INTERRUPT_SPACE = f"""
[study]
name = "interrupt"
[data]
dataset = "digits"
[teacher]
num_pairs = 128
num_steps = 2
[space]
budget = "20k"
widths = [16]
heads = [2]
[train]
steps = {INTERRUPT_STEPS}
batch_size = {INTERRUPT_BATCH}
lr = 1e-3
checkpoint_every = 5
[eval]
num_samples = 20
reference_num = 100
latency_num_images = 8
latency_batch = 4
latency_repeats = 1
samples_per_class = 1
onnx = false
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds Ray's processes through /proc")
def test_ctrl_c_stops_a_run_with_exit_code_130_and_the_next_run_resumes(tmp_path):
    torch = pytest.importorskip("torch")
    from .test_cli import _ctrl_c_as_on_a_terminal
    from .test_resume import ROOT, _marked, _rows, _wait_gone

    space = tmp_path / "space.toml"
    space.write_text(INTERRUPT_SPACE)
    study_dir = tmp_path / "results" / "interrupt"
    trials, artifacts = study_dir / "trials", study_dir / "artifacts"
    marker = f"DSE_INTERRUPT_TEST={uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="dse-ray-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, marker.split("=")[0]: marker.split("=")[1]}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "dse", "run", "--space", str(space), "--results-dir", str(tmp_path / "results"),
           "--reports-dir", str(tmp_path / "reports"), "--no-live"]
    try:
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True, preexec_fn=_ctrl_c_as_on_a_terminal)
        deadline = time.monotonic() + 240
        while not list(artifacts.glob("*/last.pt")):  # training, with a checkpoint
            assert first.poll() is None, "the run ended before Ctrl-C:\n" + first.communicate()[1]
            assert time.monotonic() < deadline, "no trial started training in time"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, err = first.communicate(timeout=120)
        assert first.returncode == 130, out + err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not _wait_gone(marker, 60), "Ray outlived the interrupted run"
        assert not list(trials.glob("*.parquet"))  # the trial did not finish: no row, and not stored as failed
        assert not list((study_dir / "claims").glob("*.claim"))  # released on the way out
        (ckpt,) = artifacts.glob("*/last.pt")
        stopped_at = int(torch.load(ckpt, weights_only=True)["step"])
        assert 0 < stopped_at < INTERRUPT_STEPS

        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        for pid in _marked(marker):  # only processes this test started (they carry its marker)
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    (row,) = _rows(trials).to_dict("records")
    assert row["status"] == "complete" and row["steps"] == INTERRUPT_STEPS
    images = row["train_images_per_s"] * max(row["train_seconds"], 1e-9)  # images trained in the second run
    assert round(images / INTERRUPT_BATCH) == INTERRUPT_STEPS - stopped_at  # resumed from the checkpoint


def test_the_optuna_searcher_runs_every_seed_of_a_candidate_as_its_own_trial():
    from ray.tune.search import Searcher

    from dse.executor.optuna_search import make_optuna_search, search_key

    base = tiny_spec("/p")
    specs = [tiny_spec("/p", arch=StudentArch(d, 16, 2), train=dataclasses.replace(base.train, seed=s))
             for d in (1, 2) for s in (0, 1, 2)]
    keys = {s.trial_id: search_key(s) for s in specs}
    assert len(keys) == 6 and len(set(keys.values())) == 2  # the seeds share a search key ...
    done = specs[0].trial_id
    searcher = make_optuna_search(keys, {done: ("complete", [10.0, 100.0])}, seed=1)  # ... and a known seed is told
    order = []
    for n in range(6):
        got = searcher.suggest(f"tune-{n}")
        order.append(got if got == Searcher.FINISHED else got["trial_id"])
        if got != Searcher.FINISHED:
            searcher.on_trial_complete(f"tune-{n}", {"phase": "done", "status": "complete", "fid": 5.0 + n,
                                                     "params": 100.0})
    assert sorted(order[:5]) == sorted(set(keys) - {done}) and order[5] == Searcher.FINISHED  # each seed once


def test_halving_compares_candidates_and_the_seeds_of_one_follow_its_decision():
    from types import SimpleNamespace

    from dse.executor.halving import HalvingScheduler
    from dse.executor.reports import PHASE_TRAIN
    from dse.search import SuccessiveHalving

    base = tiny_spec("/p")
    seeds = {(w, s): tiny_spec("/p", arch=StudentArch(1, w, 2), train=dataclasses.replace(base.train, seed=s))
             for w in (16, 32) for s in (0, 1, 2)}
    specs = {spec.trial_id: spec for spec in seeds.values()}
    stops = {}
    scheduler = HalvingScheduler(SuccessiveHalving(3, 3), specs, lambda tid, stop, result: stops.update({tid: stop}))

    def report(w, s, step, loss):
        spec = seeds[(w, s)]
        result = {"phase": PHASE_TRAIN, "step": step, "loss": loss, "params": 1000 * w, "total_steps": 150}
        return scheduler.on_trial_result(None, SimpleNamespace(config={"trial_id": spec.trial_id}), result)

    # the seeds of w16 report slightly different losses at the first rung: none stops another
    assert [report(16, s, 20, 0.50 + 0.01 * s) for s in (0, 1, 2)] == ["CONTINUE"] * 3
    # w32: more parameters and a higher loss than w16, dominated at the rung; all its seeds stop
    assert report(32, 0, 20, 0.9) == "STOP"
    assert [report(32, s, 60, 0.8) for s in (1, 2)] == ["STOP", "STOP"]
    assert sorted(stops) == sorted(seeds[(32, s)].trial_id for s in (0, 1, 2))
    late = stops[seeds[(32, 2)].trial_id]
    assert late.trial_id == seeds[(32, 2)].trial_id and late.step == 60 and late.loss == 0.8  # its own report
    assert late.reason.startswith("stopped at step 60 by successive halving (rank 1 over (params, loss) at rung 1")
