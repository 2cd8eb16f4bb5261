"""Cohorts (issue 14): which trials may train together, how many fit a GPU, and the share they get;
the run.cohort_size setting as a user gives it."""

import dataclasses

import pytest

from dse.cohorts import DEFAULT_COHORT, cohort_key, cohort_size_for, compatible, plan_cohorts
from dse.config import TrainConfig
from dse.errors import DseError
from dse.types import Geometry, StudentArch
from tests.test_trial import tiny_spec


def spec(arch=StudentArch(2, 16, 2), **train):
    s = tiny_spec("/pairs", arch=arch)
    return dataclasses.replace(s, train=dataclasses.replace(s.train, **train))


def test_seeds_and_losses_of_one_architecture_may_share_a_cohort_and_nothing_else():
    a = spec(seed=0)
    assert compatible([a, spec(seed=1), spec(seed=2, loss="l1"), spec(seed=3, loss="lpips", lpips_size=64)])
    assert not compatible([a, spec(seed=1, lr=3e-4)])  # another schedule
    assert not compatible([a, spec(StudentArch(2, 32, 2), seed=1)])  # another architecture
    assert not compatible([a, dataclasses.replace(spec(seed=1), pairs_dir="/other")])
    assert cohort_key(spec(setup="ta")) is None and not compatible([spec(setup="ta"), spec(setup="ta", seed=1)])
    assert not compatible([a, spec(seed=1, compile=True)])


def test_plan_cohorts_groups_compatible_trials_in_order_up_to_the_size():
    seeds = [spec(seed=s) for s in range(5)]
    other = spec(StudentArch(2, 32, 2))
    ta = spec(setup="ta")
    groups = plan_cohorts([seeds[0], other, seeds[1], ta, seeds[2], seeds[3], seeds[4]], max_size=2)
    ids = [[s.trial_id for s in g] for g in groups]
    assert ids == [[seeds[0].trial_id, seeds[1].trial_id], [other.trial_id], [ta.trial_id],
                   [seeds[2].trial_id, seeds[3].trial_id], [seeds[4].trial_id]]
    assert plan_cohorts(seeds, 1) == [[s] for s in seeds]
    assert [len(g) for g in plan_cohorts(seeds, 8)] == [5]


def test_the_cohort_size_is_what_fits_the_gpu_memory():
    gib = 2**30
    assert cohort_size_for(gib, gib, 80 * gib, max_size=8, safety=1.5) == 8  # room for 52: capped
    assert cohort_size_for(10 * gib, gib, 80 * gib, max_size=8, safety=1.5) == 5  # (80 / 1.5 - 1) // 10
    assert cohort_size_for(100 * gib, gib, 80 * gib, max_size=8, safety=1.5) == 1  # not even one: alone
    assert cohort_size_for(gib, gib, 0, max_size=8, safety=1.5) == 1  # no GPU


def test_cohort_resources_come_from_the_whole_cohorts_memory():
    from dse.executor.resources import plan_cohort_resources
    from dse.search import estimate_cohort_bytes, estimate_train_bytes, gpu_share

    g = Geometry(32, 3, 10, 2)
    members = [dataclasses.replace(spec(StudentArch(6, 96, 3), seed=s, batch_size=256), geometry=g) for s in range(10)]
    alone = {s.trial_id: (2.0, 0.125) for s in members}
    groups, res = plan_cohort_resources(members, alone, cohort_size=0, gpus_per_trial=-1, node_gpus=1,
                                        gpu_bytes=80 * 10**9)
    assert [len(x) for x in groups] == [DEFAULT_COHORT, 10 - DEFAULT_COHORT]
    first = groups[0]
    assert set(res) == {first[0].trial_id, groups[1][0].trial_id}
    need = estimate_cohort_bytes(first)
    assert need < DEFAULT_COHORT * estimate_train_bytes(first[0].arch, g, first[0].train)  # one CUDA context
    assert res[first[0].trial_id] == (2.0, gpu_share(need, 80 * 10**9)) and res[first[0].trial_id][1] > 0.125
    # a small GPU: fewer members per cohort
    groups, _ = plan_cohort_resources(members, alone, cohort_size=0, gpus_per_trial=-1, node_gpus=1,
                                      gpu_bytes=16 * 10**9)  # (16 GB / 1.5 - one context) // 1.7 GB a member
    assert len(groups[0]) == 5
    # no GPU: alone unless asked; asked: cohorts of that size with each leader's own CPUs
    groups, res = plan_cohort_resources(members, alone, cohort_size=0, gpus_per_trial=-1, node_gpus=0)
    assert all(len(x) == 1 for x in groups) and res == alone
    groups, res = plan_cohort_resources(members, alone, cohort_size=4, gpus_per_trial=0, node_gpus=0)
    assert [len(x) for x in groups] == [4, 4, 2] and set(res.values()) == {(2.0, 0.125)}
    # a fixed share is kept, and the cohort sized to it
    groups, res = plan_cohort_resources(members, {k: (4.0, 0.25) for k in alone}, cohort_size=0, gpus_per_trial=0.25,
                                        node_gpus=1, gpu_bytes=32 * 10**9)
    assert set(res.values()) == {(4.0, 0.25)} and max(len(x) for x in groups) == 2  # 8 GB / 1.5 holds two


def test_cohort_size_is_validated_where_it_is_set(tmp_path):
    from dse.config import load_study

    def study(run: str):
        p = tmp_path / "s.toml"
        p.write_text(f"[study]\nname = \"s\"\n[data]\ndataset = \"digits\"\n[space]\nbudget = \"20k\"\n[run]\n{run}\n")
        return load_study(p)

    assert study("cohort_size = 4").run.cohort_size == 4
    with pytest.raises(DseError, match="cohort_size .*up to 64"):
        study("cohort_size = 65")
    with pytest.raises(DseError, match="only grid search without halving"):
        study('cohort_size = 2\nsearch = "optuna"')
    with pytest.raises(DseError, match="only grid search without halving"):
        study("cohort_size = 2\nhalving = true")
    assert study('cohort_size = 0\nsearch = "optuna"').run.cohort_size == 0  # choose: alone where it cannot


# -- through the CLI, as a user types it ---------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--cohort-size", "2", "--search", "optuna"], "only grid search without halving"),
    (["--cohort-size", "3", "--halving"], "only grid search without halving"),
    (["--cohort-size", "65"], "cohort_size"),
    (["--cohort-size", "-1"], "cohort_size"),
])
def test_a_cohort_size_no_run_can_honour_is_refused_before_anything_is_written(tmp_path, args, message):
    from tests.test_cli import _tiny_study, dse

    opts = _tiny_study(tmp_path)
    out = dse("run", *opts, *args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_cohort_size_and_compile_reach_the_configuration(tmp_path):
    from tests.test_cli import _tiny_study, dse

    out = dse("run", *_tiny_study(tmp_path), "--cohort-size", "3", "--compile", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "cohort_size = 3" in out.stdout and "compile = true" in out.stdout
    out = dse("run", *_tiny_study(tmp_path), "--dry-run", cwd=tmp_path)
    assert "cohort_size = 0" in out.stdout and "compile = false" in out.stdout


def test_a_study_trains_seeds_as_a_cohort_with_one_row_each_equal_to_training_alone(tmp_path):
    """`dse run --seeds 2 --cohort-size 2` as typed: every candidate's two seeds train as one cohort; each
    row is the member's own, and equals the row the same trial gets trained alone (up to float rounding)."""
    import pandas as pd

    from dse.store import ResultsStore
    from tests.test_cli import _tiny_study, dse

    opts = _tiny_study(tmp_path, ("heads = [2, 4]", "heads = [2]"))
    together = dse("run", *opts, "--seeds", "2", "--cohort-size", "2", "--study", "together", cwd=tmp_path)
    assert together.returncode == 0, together.stdout + together.stderr
    alone = dse("run", *opts, "--seeds", "2", "--cohort-size", "1", "--study", "alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    a = ResultsStore(tmp_path / "results" / "together" / "trials").read().set_index("trial_id").sort_index()
    b = ResultsStore(tmp_path / "results" / "alone" / "trials").read().set_index("trial_id").sort_index()
    assert list(a.index) == list(b.index) and len(a) == 2 * a["candidate_id"].nunique()  # same trials, same ids
    assert (a["status"] == "complete").all() and (b["status"] == "complete").all()
    for _, members in a.groupby("candidate_id"):
        assert set(members["seed"]) == {0, 1}
        assert (members["cohort_size"] == 2).all() and members["cohort_id"].nunique() == 1
        assert members["cohort_id"].iloc[0] in members.index
    assert (b["cohort_size"] == 1).all() and (b["cohort_id"] == b.index).all()
    pd.testing.assert_series_equal(a["final_loss"], b["final_loss"], rtol=1e-4)
    assert a["final_loss"].nunique() == len(a)  # each member's own loss, not the cohort's
