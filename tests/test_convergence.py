"""Convergence: the still-improving test on synthetic curves whose truth is known, the stored form of a
curve, and the warnings `dse run` prints from a study's rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dse.convergence import (TREND_MIN_FALL, curve_json, curve_trend, parse_curve, study_warnings)


def _curve(losses, every=6):
    return [(every * (i + 1), float(v)) for i, v in enumerate(losses)]


def _decay(seed, noise=0.03, points=100):
    """0.1 + 0.5 exp(-s / 300) over 600 steps, multiplicative noise: over the last 180 steps the true
    loss falls from 0.223 to 0.168 (-25%)."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, points + 1) * 6
    return _curve((0.1 + 0.5 * np.exp(-s / 300)) * np.exp(rng.normal(0, noise, points)))


def _plateau(seed, noise=0.03, points=100):
    rng = np.random.default_rng(seed)
    return _curve(0.2 * np.exp(rng.normal(0, noise, points)))


def test_a_noisy_decay_still_falling_is_still_improving():
    for seed in range(20):
        improving, trend = curve_trend(_decay(seed))
        assert improving, seed
        true = (0.1 + 0.5 * math.exp(-600 / 300)) / (0.1 + 0.5 * math.exp(-420 / 300)) - 1  # -0.247
        assert trend == pytest.approx(true, abs=0.06)


def test_a_flat_noisy_plateau_is_not():
    flagged = [curve_trend(_plateau(seed))[0] for seed in range(100)]
    assert sum(flagged) <= 10  # a 5% one-sided test, and the 2% floor: rarely a false alarm
    improving, trend = curve_trend(_plateau(0, noise=0.0))
    assert improving is False and trend == pytest.approx(0.0, abs=1e-12)


def test_a_real_but_tiny_fall_is_converged_enough():
    s = np.arange(1, 101) * 6.0
    loss = 0.2 * np.exp(-0.01 * (s - 420) / 180)  # a clean 1% fall over the window: significant, under 2%
    improving, trend = curve_trend(_curve(loss))
    assert -TREND_MIN_FALL < trend < 0 and improving is False
    steeper = 0.2 * np.exp(-0.05 * (s - 420) / 180)  # 5%: both tests pass
    assert curve_trend(_curve(steeper))[0] is True


def test_a_curve_too_short_says_nothing():
    for curve in ([], [(10, 1.0)], _curve([1.0, 0.9, 0.8]), _curve([1.0, 0.5, 0.25, 0.12, 0.06, 0.03], every=1)):
        improving, trend = curve_trend(curve)
        assert improving is False and math.isnan(trend)  # the last 30% of steps 1..6 holds 2 points (5, 6)
    assert curve_trend(_curve([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], every=1))[0] is True


def test_a_rising_loss_is_not_improving():
    improving, trend = curve_trend(_curve(np.linspace(0.1, 0.3, 50)))
    assert improving is False and trend > 0


def test_the_stored_curve_is_compact_json_to_six_digits():
    text = curve_json([(50, 0.123456789), (100, 1234567.891), (150, float("nan"))])
    assert text == "[[50,0.123457],[100,1234570.0]]"
    assert json.loads(text) == [[50, 0.123457], [100, 1234570.0]]
    assert parse_curve(text) == [(50, 0.123457), (100, 1234570.0)]
    assert parse_curve(None) == [] and parse_curve("") == [] and parse_curve("not json") == []


def _row(width, steps, fid, improving=False, trend=None, seed=0, status="complete", lr=1e-3):
    config = {"train": {"steps": steps, "seed": seed, "lr": lr, "setup": "get", "loss": "l2"}, "eval": {"num_samples": 200}}
    return {"trial_id": f"w{width}-s{steps}-{seed}-{lr}", "status": status, "dataset": "digits", "depth": 2,
            "width": width, "heads": 2, "setup": "get", "loss": "l2", "steps": steps, "fid": fid,
            "still_improving": improving, "loss_trend": trend, "config_json": json.dumps(config)}


def test_most_trials_still_improving_gives_a_warning_with_the_numbers():
    rows = pd.DataFrame([_row(16, 600, 40.0, True, -0.10), _row(32, 600, 38.0, True, -0.20),
                         _row(48, 600, 36.0, False, -0.01), _row(64, 600, None, True, -0.5, status="failed")])
    lines = study_warnings(rows)
    assert lines == ["2 of 3 trials were still improving when training stopped (loss falling by 15.0% over the "
                     "last 30% of steps): their FIDs are not converged; train longer (--steps / train.steps)"]


def test_half_or_fewer_still_improving_gives_no_warning():
    rows = pd.DataFrame([_row(16, 600, 40.0, True, -0.10), _row(32, 600, 38.0, False, -0.01)])
    assert study_warnings(rows) == []
    assert study_warnings(pd.DataFrame()) == []


def test_one_candidate_at_two_step_counts_says_what_doubling_did():
    rows = pd.DataFrame([
        _row(16, 600, 40.0), _row(16, 600, 42.0, seed=1), _row(16, 1200, 30.0), _row(16, 1200, 31.0, seed=1),
        _row(32, 600, 50.0), _row(32, 1200, 45.0),
        _row(48, 600, 10.0),  # one step count only: not counted
        _row(32, 2400, 1.0, lr=5e-4),  # another training (lr): not the same candidate
    ])
    lines = study_warnings(rows)
    # w16: 41 -> 30.5 (-10.5, -25.6%); w32: 50 -> 45 (-5, -10%); mean -7.75, -17.8%
    assert lines == ["doubling the steps changed FID by -7.75 (-17.8%) (from 600 to 1200 steps, 2 candidates; "
                     "from -10.50 to -5.00)"]


def test_no_repeat_at_other_steps_says_nothing_about_steps():
    rows = pd.DataFrame([_row(16, 600, 40.0), _row(16, 600, 41.0, seed=1), _row(32, 1200, 30.0)])
    assert study_warnings(rows) == []


def test_convergence_imports_neither_torch_nor_ray():
    code = "import sys, dse.convergence; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_warnings_read_rows_as_the_store_gives_them_back_old_rows_included(tmp_path):
    from dse.store import ResultsStore

    store = ResultsStore(tmp_path)
    for row in (_row(16, 600, 40.0, True, -0.2), _row(32, 600, 38.0, True, -0.4), _row(16, 1200, 30.0)):
        store.write(row)
    store.write({"trial_id": "old", "status": "complete", "fid": 50.0, "steps": 600})  # before curves were stored
    # 2 of 4 still improving is not most of them; the old row has no flag and no config: it only counts
    assert study_warnings(store.read()) == [
        "doubling the steps changed FID by -10.00 (-25.0%) (from 600 to 1200 steps, 1 candidate)"]
    store.write(_row(48, 600, 36.0, True, -0.1))
    assert study_warnings(store.read())[0].startswith("3 of 5 trials were still improving")
