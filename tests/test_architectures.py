"""`[space] architectures`: an explicit list of students instead of widths x depths x heads (the
paper's Table 6), through the config, the sizing and the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dse.config import load_study
from dse.errors import DseError
from dse.sizing import count_params, enumerate_candidates
from dse.study import plan_study
from dse.types import Geometry, StudentArch

ROOT = Path(__file__).resolve().parent.parent
CIFAR = Geometry(32, 3, 10, 2)
TABLE6 = [(1, 128, 8), (2, 96, 8), (5, 64, 4), (5, 64, 8), (9, 48, 6), (21, 32, 4),
          (3, 192, 12), (7, 128, 8), (13, 96, 8), (4, 256, 16), (16, 128, 8), (7, 192, 12)]


def _space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text('[data]\ndataset = "digits"\n[space]\nbudget = "200k"\n' + body)
    return path


def test_the_table6_file_lists_the_papers_twelve_students_at_their_sizes():
    cfg = load_study(ROOT / "search_spaces" / "paper_table6.toml")
    cands = enumerate_candidates(cfg.space, CIFAR)
    assert sorted((c.arch.depth, c.arch.width, c.arch.heads) for c in cands) == sorted(TABLE6)
    # the paper's three sizes: 0.42M, 2.2M and 5M (within 3%)
    sizes = sorted(c.params for c in cands)
    assert all(abs(n / 0.42e6 - 1) < 0.03 for n in sizes[:6])
    assert all(abs(n / 2.2e6 - 1) < 0.03 for n in sizes[6:9])
    assert all(abs(n / 5e6 - 1) < 0.03 for n in sizes[9:])
    assert cfg.space.losses == ("lpips",) and cfg.eval.guidance == 1.5


def test_a_listed_architecture_is_planned_even_below_the_band(tmp_path):
    cfg = load_study(_space(tmp_path, "lower = 0.99\narchitectures = [[1, 16, 2], [4, 48, 6]]\n"))
    plan = plan_study(cfg)
    archs = {(s.arch.depth, s.arch.width, s.arch.heads) for s in plan.specs}
    assert archs == {(1, 16, 2), (4, 48, 6)}
    g = plan.geometry
    assert count_params(StudentArch(1, 16, 2), g) < 0.99 * 200_000  # far below the band: kept all the same


@pytest.mark.parametrize("body, words", [
    ("architectures = [[4, 48, 5]]\n", "heads >= 1 dividing the width"),
    ("architectures = [[4, 50, 5]]\n", "multiple of 4"),
    ("architectures = [[0, 48, 6]]\n", "depth >= 1"),
    ("architectures = [[4, 48]]\n", "[depth, width, heads]"),
    ("architectures = [4, 48, 6]\n", "[depth, width, heads]"),
    ("architectures = [[4, 48, 6], [4, 48, 6]]\n", "twice"),
    ("architectures = [[64, 256, 8]]\n", "over upper*budget"),
])
def test_a_bad_list_is_one_line_and_exit_2_through_the_cli(tmp_path, body, words):
    space = _space(tmp_path, body)
    out = subprocess.run([sys.executable, "-m", "dse", "space", "--space", str(space)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_dse_space_lists_exactly_the_given_architectures(tmp_path):
    space = _space(tmp_path, "architectures = [[2, 32, 4], [3, 48, 6]]\n")
    out = subprocess.run([sys.executable, "-m", "dse", "space", "--space", str(space), "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    rows = rows["candidates"] if isinstance(rows, dict) else rows
    assert sorted((r["depth"], r["width"]) for r in rows) == [(2, 32), (3, 48)]


def test_an_explicit_list_replaces_the_enumeration_not_the_budget():
    from dse.config import SpaceConfig

    with pytest.raises(DseError, match="over upper"):
        enumerate_candidates(SpaceConfig(budget="100k", architectures=((8, 128, 8),)), Geometry(8, 1, 10, 2))
