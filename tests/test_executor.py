"""Ray Tune on a local 2-CPU Ray: every spec runs once and lands in the store, failures included."""

import pytest

from dse.config import StudentArch
from dse.store import ResultsStore

from .test_trial import tiny_spec


@pytest.fixture
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_trials_run_under_ray_and_failures_are_stored(local_ray, tiny_pairs, tmp_path):
    from dse.executor import run_trials

    good = [tiny_spec(tiny_pairs, arch=StudentArch(1, 16, h)) for h in (2, 4)]
    bad = tiny_spec(tmp_path / "missing-pairs")
    events = []
    run_trials(good + [bad], tmp_path / "trials", storage_dir=tmp_path / "ray", cpus_per_trial=1,
               on_event=lambda tid, kind, data: events.append((tid, kind)))
    df = ResultsStore(tmp_path / "trials").read().set_index("trial_id")
    assert sorted(df.index) == sorted(s.trial_id for s in good + [bad])
    assert set(df.loc[[s.trial_id for s in good], "status"]) == {"complete"}
    assert df.loc[bad.trial_id, "status"] == "failed" and "manifest.json" in df.loc[bad.trial_id, "error"]
    assert (bad.trial_id, "failed") in events and (good[0].trial_id, "complete") in events
    assert df.loc[good[0].trial_id, "latency_threads"] == 1  # a trial uses the CPUs Ray gave it
