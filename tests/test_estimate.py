"""The study's time estimate: it grows with the training steps and with the model, counts the pairs
only when they are missing, writes nothing, and is within a small factor of a real training run."""

from __future__ import annotations

from pathlib import Path

import pytest

from dse.config import load_study, with_overrides
from dse.estimate import Machine, estimate_study, pairs_flops
from dse.sizing import forward_flops
from dse.study import plan_study

DEMO = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.toml"
HERE = Machine(cpus=4, gpus=0, gpu_bytes=0)


def study(tmp_path, **sections):
    run = {"results_dir": str(tmp_path / "results"), "device": "cpu", **sections.pop("run", {})}
    return with_overrides(load_study(DEMO), run=run, **sections)


def test_the_estimate_grows_with_steps_and_with_the_model(tmp_path):
    short, long = study(tmp_path, train={"steps": 100}), study(tmp_path, train={"steps": 1000})
    specs = plan_study(short).specs
    a = estimate_study(short, specs, HERE, image_seconds=1e-4)
    b = estimate_study(long, plan_study(long).specs, HERE, image_seconds=1e-4)
    assert [t.train_s * 10 for t in a.trials] == pytest.approx([t.train_s for t in b.trials])
    assert b.study_s > a.study_s and a.trials[0].eval_s == b.trials[0].eval_s  # the same evaluation
    by_flops = sorted(a.trials, key=lambda t: forward_flops(*next((s.arch, s.geometry) for s in specs
                                                                   if s.trial_id == t.trial_id)))
    assert [t.train_s for t in by_flops] == sorted(t.train_s for t in a.trials)  # bigger model, longer
    assert by_flops[0].train_s < by_flops[-1].train_s
    # one trial at a time on a CPU-only machine (each gets every CPU): the study is their sum, plus the pairs
    assert a.parallel == 1 and a.study_s == pytest.approx(sum(t.total_s for t in a.trials) + a.pairs_s)


def test_pairs_are_counted_only_when_the_store_lacks_them(tmp_path, tiny_pairs):
    missing = study(tmp_path, teacher={"num_pairs": 512, "num_steps": 6})
    assert pairs_flops(missing) > 0
    made = study(tmp_path, teacher={"num_pairs": 512, "num_steps": 6, "pairs_dir": str(tiny_pairs)})
    assert pairs_flops(made) is None
    assert estimate_study(made, plan_study(made).specs[:1], HERE, image_seconds=1e-4).pairs_s is None


def test_estimate_writes_nothing_and_is_within_a_small_factor_of_training(tmp_path, tiny_pairs):
    torch = pytest.importorskip("torch")
    from dse.data.pairs import PairStore
    from dse.distill.train import train_student
    from dse.models.dit import DiT

    cfg = study(tmp_path, train={"steps": 40, "batch_size": 64}, run={"cpus_per_trial": 1})
    spec = plan_study(cfg).specs[0]
    guess = estimate_study(cfg, [spec], Machine(cpus=1, gpus=0, gpu_bytes=0))  # timed for real
    assert not list(tmp_path.iterdir())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the trial gets (cpus_per_trial = 1)
    try:
        torch.manual_seed(0)
        trained = train_student(DiT(spec.arch, spec.geometry), PairStore.open(tiny_pairs), spec.train,
                                torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    ratio = guess.trials[0].train_s / trained.seconds
    assert 1 / 3 < ratio < 3, (guess.trials[0].train_s, trained.seconds)


def test_the_estimate_counts_every_seed_as_a_trial(tmp_path):
    one = study(tmp_path, space={"seeds": [0]})
    three = study(tmp_path, space={"seeds": [0, 1, 2]})
    a = estimate_study(one, plan_study(one).specs, HERE, image_seconds=1e-4)
    b = estimate_study(three, plan_study(three).specs, HERE, image_seconds=1e-4)
    assert len(b.trials) == 3 * len(a.trials) and len({t.trial_id for t in b.trials}) == len(b.trials)
    # each seed costs what the single run's training and FID cost: three times those, the pairs once, and the
    # latency once per architecture (measured before training, whatever the seeds)
    assert sum(t.train_s + t.eval_s for t in b.trials) == pytest.approx(3 * sum(t.train_s + t.eval_s for t in a.trials))
    assert sum(t.latency_s for t in b.trials) == pytest.approx(sum(t.latency_s for t in a.trials))
    assert all(t.latency_s > 0 for t in b.trials)
