"""`dse run --seeds N` as a user types it: one trial per seed in the dry run's plan and estimate, the
seeds in the resolved configuration, nothing written; bad values refused on one line with exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SPACE = """
[study]
name = "tiny"
[data]
dataset = "digits"
[teacher]
num_pairs = 64
num_steps = 2
[space]
budget = "20k"
widths = [16]
heads = [2, 4]
[train]
steps = 2
batch_size = 64
[eval]
num_samples = 20
latency_num_images = 8
latency_batch = 4
latency_repeats = 1
"""


def dse(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dse", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def _space(tmp_path, extra: str = "") -> list[str]:
    (tmp_path / "tiny.toml").write_text(SPACE + extra)
    return ["--space", str(tmp_path / "tiny.toml"), "--results-dir", str(tmp_path / "results"),
            "--reports-dir", str(tmp_path / "reports"), "--no-live"]


def test_seeds_2_plans_and_estimates_one_trial_per_seed_and_writes_nothing(tmp_path):
    opts = _space(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    one = dse("run", *opts, "--dry-run", cwd=tmp_path)
    two = dse("run", *opts, "--seeds", "2", "--dry-run", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert sorted(tmp_path.rglob("*")) == before

    def trials(text):
        return [line.split()[0] for line in text.splitlines() if re.match(r"d\d+-w16-h\d-get-l2-", line)]

    single, seeded = trials(one.stdout), trials(two.stdout)
    assert len(single) == 2 and len(seeded) == 4 and len(set(seeded)) == 4  # 2 architectures x 2 seeds
    assert set(single) < set(seeded)  # seed 0 is train.seed: those trials keep their ids
    assert re.search(r"study tiny: 4 trials", two.stdout)
    assert "seeds = [0, 1]" in two.stdout and "seeds = []" in one.stdout  # the resolved [space]


@pytest.mark.parametrize("args, extra, message", [
    (["--seeds", "0"], "", "--seeds 0"),
    (["--seeds", "33"], "", "--seeds 33"),
    (["--seeds", "2"], '[[variants]]\nname = "own"\nseed = 4\n', "variant 'own' sets seed"),
    (["--set", "space.seeds=[1, 1]"], "", "distinct training seeds"),
])
def test_bad_seeds_are_refused_on_one_line_with_exit_2(tmp_path, args, extra, message):
    opts = _space(tmp_path, extra)
    out = dse("run", *opts, *args, "--dry-run", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]
