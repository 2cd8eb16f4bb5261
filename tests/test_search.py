"""Orchestration decisions without Ray: GPU shares from estimated memory, rungs and the
non-dominated successive-halving cut."""

import pytest

from dse.config import TrainConfig
from dse.types import Geometry, StudentArch
from dse.search import (
    DEFAULT_GPU_BYTES, CandidateTree, Partial, SuccessiveHalving, estimate_train_bytes, gpu_share, halving_keeps,
    rung_steps, trial_resources,
)

CIFAR = Geometry(32, 3, 10, 2)


def test_a_small_student_gets_an_eighth_of_a_gpu_and_a_big_one_a_whole_gpu():
    small = estimate_train_bytes(StudentArch(6, 96, 3), CIFAR, TrainConfig(batch_size=256))  # ~0.5M params
    big = estimate_train_bytes(StudentArch(28, 1152, 16), CIFAR, TrainConfig(batch_size=256))  # DiT-XL/2
    assert small < big
    assert gpu_share(small, DEFAULT_GPU_BYTES) == 0.125
    assert gpu_share(big, DEFAULT_GPU_BYTES) == 1.0
    assert gpu_share(small, 0) == 0.0  # no GPU: no share


def test_the_share_is_the_smallest_power_of_two_slice_that_holds_the_estimate_with_a_margin():
    gb = 10**9
    assert gpu_share(6 * gb, 80 * gb) == 0.125  # 1.5 * 6 = 9 <= 10
    assert gpu_share(7 * gb, 80 * gb) == 0.25  # 10.5 > 10
    assert gpu_share(20 * gb, 80 * gb) == 0.5
    assert gpu_share(30 * gb, 80 * gb) == 1.0
    assert gpu_share(300 * gb, 80 * gb) == 1.0  # never more than one GPU


def test_memory_grows_with_batch_and_with_the_setups_own_networks():
    arch, base = StudentArch(4, 64, 4), TrainConfig(batch_size=64)
    plain = estimate_train_bytes(arch, CIFAR, base)
    assert estimate_train_bytes(arch, CIFAR, TrainConfig(batch_size=128)) > plain
    assert estimate_train_bytes(arch, CIFAR, TrainConfig(batch_size=64, setup="ta")) > plain
    assert estimate_train_bytes(arch, CIFAR, TrainConfig(batch_size=64, setup="dmd")) > plain
    assert estimate_train_bytes(arch, CIFAR, TrainConfig(batch_size=64, loss="lpips")) > plain


def test_trial_resources_pack_cpus_with_the_gpu_share():
    gb = 10**9
    # auto: a small trial gets 1/8 of a GPU and 1/8 of the node's CPUs
    assert trial_resources(gb, cpus_per_trial=0, gpus_per_trial=-1, node_cpus=16, node_gpus=1, gpu_bytes=80 * gb) \
        == (2.0, 0.125)
    # no GPU anywhere: the whole node's CPUs, no GPU
    assert trial_resources(gb, cpus_per_trial=0, gpus_per_trial=-1, node_cpus=2, node_gpus=0, gpu_bytes=0) == (2.0, 0.0)
    # explicit values win
    assert trial_resources(gb, cpus_per_trial=3, gpus_per_trial=0.25, node_cpus=16, node_gpus=1, gpu_bytes=0) \
        == (3.0, 0.25)
    assert trial_resources(gb, cpus_per_trial=0, gpus_per_trial=0.5, node_cpus=16, node_gpus=8, gpu_bytes=0) \
        == (1.0, 0.5)


def test_rungs_are_at_total_over_powers_of_eta_before_the_end():
    assert rung_steps(900, 3, 3) == [100, 300]
    assert rung_steps(1000, 4, 2) == [125, 250, 500]
    assert rung_steps(150, 3, 3) == [17, 50]
    assert rung_steps(4, 4, 3) == [1]  # tiny runs: duplicates merged, never the last step
    assert rung_steps(1000, 1, 3) == []


def test_the_front_goes_on_and_dominated_ones_beyond_the_quota_stop():
    recs = [
        Partial("small", 100, 0.50), Partial("big", 200, 0.30),  # the front: neither beats the other
        Partial("big-bad", 200, 0.90), Partial("mid-bad", 150, 0.60), Partial("huge-bad", 300, 0.95),
        Partial("mid-ok", 150, 0.40),
    ]
    keeps = halving_keeps(recs, eta=3)  # quota ceil(6/3) = 2: filled by the front
    assert {t for t, (go, _) in keeps.items() if go} == {"small", "big", "mid-ok"}  # mid-ok is on the front too
    assert keeps["mid-bad"] == (False, 1)  # dominated by mid-ok
    assert keeps["big-bad"] == (False, 2)  # dominated by mid-bad too
    assert keeps["huge-bad"] == (False, 3)


def test_with_equal_sizes_it_is_plain_successive_halving_on_the_loss():
    recs = [Partial(f"t{i}", 1000, loss) for i, loss in enumerate([0.9, 0.2, 0.5, 0.4, 0.8, 0.3, 0.7, 0.6, 0.1])]
    keeps = halving_keeps(recs, eta=3)
    assert sorted(t for t, (go, _) in keeps.items() if go) == ["t1", "t5", "t8"]  # losses 0.2, 0.3, 0.1
    assert keeps["t0"] == (False, 8)


def test_a_dominated_quota_slot_goes_to_the_lower_loss():
    recs = [Partial("a", 100, 0.1), Partial("b", 200, 0.5), Partial("c", 200, 0.4), Partial("d", 300, 0.3)]
    keeps = halving_keeps(recs, eta=2)  # quota 2: a (front) and then the best dominated one by loss
    assert {t for t, (go, _) in keeps.items() if go} == {"a", "d"}


def test_missing_losses_are_never_stopped():
    keeps = halving_keeps([Partial("a", 100, 0.1), Partial("b", 200, float("nan"))], eta=3)
    assert keeps["b"] == (True, -1)


def test_asynchronous_halving_compares_latecomers_with_those_recorded_before_them():
    sh = SuccessiveHalving(rungs=3, eta=3)  # total 900: rungs at 100 and 300
    g = "get/l2/900"
    assert sh.observe("a", g, params=100, step=50, total_steps=900, loss=0.8) is None  # before the first rung
    assert sh.observe("a", g, params=100, step=100, total_steps=900, loss=0.5) is None  # first at rung 1: goes on
    assert sh.observe("b", g, params=200, step=100, total_steps=900, loss=0.3) is None  # not dominated by a
    stop = sh.observe("c", g, params=100, step=100, total_steps=900, loss=0.9)  # same size as a, worse loss
    assert stop is not None and stop.rung == 1 and stop.rank == 1 and stop.rung_step == 100 and stop.recorded == 3
    assert stop.reason.startswith("stopped at step 100 by successive halving (rank 1 over (params, loss) at rung 1")
    assert sh.observe("c", g, params=100, step=150, total_steps=900, loss=0.9) is stop  # stays stopped
    # another group (another loss function) is not compared with these
    assert sh.observe("x", "get/lpips/900", params=100, step=100, total_steps=900, loss=5.0) is None
    # one report can pass two rungs: d is recorded at rung 1 (goes on: rank 0) then rung 2 (alone: goes on)
    assert sh.observe("d", g, params=50, step=300, total_steps=900, loss=0.6) is None
    assert sh.passed["d"] == 2
    # e is on the front at rung 1, but at rung 2 it is dominated by d, which was recorded there first
    assert sh.observe("e", g, params=60, step=100, total_steps=900, loss=0.45) is None
    stop = sh.observe("e", g, params=60, step=300, total_steps=900, loss=0.7)
    assert (stop.rung, stop.rank, stop.recorded, stop.step) == (2, 1, 2, 300)


@pytest.mark.parametrize("total,rungs,eta", [(10, 3, 3), (1000, 2, 3), (1, 3, 3)])
def test_a_lone_trial_is_never_stopped(total, rungs, eta):
    sh = SuccessiveHalving(rungs=rungs, eta=eta)
    assert all(sh.observe("a", "g", params=1, step=s, total_steps=total, loss=1.0) is None for s in range(1, total + 1))


def _budget_like_keys():
    """Two trainings x widths, each width with its own depths (as a budget band gives), heads dividing it."""
    keys = {}
    for training in ("get-l2", "get-lpips"):
        for width, depths in ((64, (10, 11)), (96, (5,)), (128, (3,))):
            for depth in depths:
                for heads in (2, 4):
                    keys[f"{training}-d{depth}-w{width}-h{heads}"] = (training, width, depth, heads)
    return keys


def test_the_search_tree_names_a_choice_after_what_determines_its_options():
    tree = CandidateTree(_budget_like_keys())
    path = tree.path("get-lpips-d11-w64-h4")
    # depth depends on the width only (not on the training), heads on nothing
    assert path == {"training": ("get-lpips", ["get-l2", "get-lpips"]), "width": (64, [64, 96, 128]),
                    "depth|width=64": (11, [10, 11]), "heads": (4, [2, 4])}


def test_every_candidate_is_exactly_one_path():
    keys = _budget_like_keys()
    tree = CandidateTree(keys)
    for tid in keys:
        values = {name: value for name, (value, _) in tree.path(tid).items()}
        assert tree.walk(lambda name, options, values=values: values[name]) == tid
    # a choice never changes its options from one path to another (what Optuna's categoricals need)
    seen = {}
    for tid in keys:
        for name, (_, options) in tree.path(tid).items():
            assert seen.setdefault(name, options) == options


def test_candidates_that_share_every_level_are_told_apart_by_id():
    tree = CandidateTree({"a": ("get-l2", 16, 1, 2), "b": ("get-l2", 16, 1, 2), "c": ("get-l2", 8, 1, 2)})
    assert tree.path("b") == {"width": (16, [8, 16]), "trial|width=16": ("b", ["a", "b"])}
    assert tree.walk(lambda name, options: options[-1]) == "b"
    assert tree.walk(lambda name, options: options[0]) == "c"
