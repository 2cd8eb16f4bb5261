"""`dse run` says before it starts when a study trains LPIPS where it is known not to apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dse.findings import LPIPS_MIN_IMAGE_SIZE, plan_notes

ROOT = Path(__file__).resolve().parent.parent
NOTE = "note: LPIPS on 8x8 images"


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dse", "run", "--dry-run", "--space", str(ROOT / "search_spaces" / "demo.toml"),
                           "--results-dir", str(tmp_path / "r"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_a_digits_study_with_lpips_is_told_before_it_runs(tmp_path):
    out = _dry_run(tmp_path, "--set", 'space.losses=["l2", "lpips"]')
    assert out.returncode == 0, out.stderr
    assert NOTE in out.stdout and "docs/findings.md" in out.stdout
    plain = _dry_run(tmp_path)  # the demo trains l2 only: no note
    assert plain.returncode == 0, plain.stderr
    assert NOTE not in plain.stdout


def test_the_note_depends_on_the_loss_and_the_image_size():
    assert plan_notes(["l2", "lpips"], 8) and not plan_notes(["l2", "l1"], 8)
    assert not plan_notes(["lpips"], LPIPS_MIN_IMAGE_SIZE) and not plan_notes(["lpips"], 32)
