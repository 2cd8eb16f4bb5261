"""Bad values through the real `dse` command: one line starting `error: `, exit 2, no traceback,
nothing written; good values of the resource options accepted; `dse run --budget B` without a space
file explores the paper's widths; `dse space` groups the head counts of an architecture."""

import json

import pytest

from dse.sizing import count_params, default_widths
from dse.types import Geometry, StudentArch
from tests.test_cli import CIFAR, dse

DIGITS = Geometry(8, 1, 10)


def _refused(out, *needles: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _nothing_written(tmp_path) -> None:
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def _run(tmp_path, *args: str):
    return dse("run", *args, "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
               "--no-live")


@pytest.mark.parametrize("args, needles", [
    (["--cpus-per-trial", "-1"], ["run.cpus_per_trial must be >= 0"]),
    (["--gpus-per-trial", "-0.5"], ["run.gpus_per_trial must be >= 0", "or -1"]),
    (["--set", "run.cpus_per_trial=-2"], ["run.cpus_per_trial must be >= 0"]),
    (["--budget", "1e400"], ["invalid budget '1e400'"]),
    (["--budget", "inf"], ["invalid budget 'inf'"]),
    (["--budget", "nan"], ["invalid budget 'nan'"]),
    (["--budget", "-5M"], ["invalid budget '-5M'"]),
    (["--set", "data.patch_size=0"], ["patch_size 0", "use one of 1, 2, 4, 8"]),
    (["--set", "data.patch_size=3"], ["patch_size 3 does not divide the 8x8 images of digits", "1, 2, 4, 8"]),
    (["--set", 'data.patch_size="two"'], ["patch_size", "expected an integer"]),
    (["--set", 'space.widths="32"'], ["[space] widths", "expected a list of integers"]),
    (["--set", 'space.widths=["a"]'], ["[space] widths", "expected a list of integers"]),
    (["--set", 'space.heads=["x"]'], ["[space] heads", "expected a list of integers"]),
    (["--set", 'train.mi1_times=["a"]'], ["[train] mi1_times", "expected a list of numbers"]),
    (["--set", "space.setups=[1]"], ["[space] setups", "expected a list of strings"]),
    (["--set", "space.architectures=[]", "--set", "space.widths=[32, 48, 64]", "--set", "space.heads=[5]"],
     ["heads 5 divides none of the widths 32, 48, 64", "heads must divide the width"]),
    (["--set", "space.heads=[5]"], ["[space] architectures lists the students, so heads would be ignored"]),
    (["--set", "train.lr=nan"], ["train.lr must be a finite number"]),
    (["--set", "train.lr=inf"], ["train.lr must be a finite number"]),
    (["--set", "train.lr=-1e-3"], ["train.lr must be positive"]),
    (["--set", "train.weight_decay=-0.1"], ["train.weight_decay must be >= 0"]),
    (["--set", "eval.guidance=nan"], ["eval.guidance must be a finite number"]),
    (["--set", "eval.guidance=-1"], ["eval.guidance must be >= 0"]),
    (["--set", "train.steps=true"], ["[train] steps", "expected an integer"]),
    (["--device", "cudax"], ["device 'cudax'", "use auto, cpu, cuda or cuda:N"]),
    (["--set", "data.dataset=mnist"], ["unknown data set 'mnist'", "cifar10, digits, fashion-mnist"]),
    (["--study", "../x"], ["study name '../x' is not allowed"]),
    (["--study", ".."], ["study name '..' is not allowed"]),
    (["--study", "/tmp/abs"], ["study name '/tmp/abs' is not allowed"]),
    (["--study", "a/b"], ["study name 'a/b' is not allowed"]),
    (["--set", 'study.name="../../x"'], ["study name '../../x' is not allowed"]),
])
def test_bad_values_are_one_line_exit_2_and_nothing_written(tmp_path, args, needles):
    _refused(_run(tmp_path, *args), *needles)
    _nothing_written(tmp_path)


def test_a_space_file_with_bad_values_or_an_unsafe_stem_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[space]\nbudget = "200k"\nwidths = "32"\n[run]\ngpus_per_trial = -3\n')
    _refused(_run(tmp_path, "--space", str(bad)), "[space] widths", "expected a list of integers")
    stem = tmp_path / "my space.toml"
    stem.write_text('[space]\nbudget = "200k"\n')
    _refused(_run(tmp_path, "--space", str(stem)), "study name 'my space' is not allowed")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args", [
    ["--cpus-per-trial", "1", "--gpus-per-trial", "0.25"],
    ["--cpus-per-trial", "1.0", "--gpus-per-trial", "0"],
    ["--set", "run.cpus_per_trial=1", "--set", "run.gpus_per_trial=0.25"],
])
def test_resource_options_take_ints_and_fractions(tmp_path, args):
    # a later mistake (train.lr) is what stops the run: the resources passed every check before it
    line = _refused(_run(tmp_path, *args, "--set", "train.lr=-1"), "train.lr must be positive")
    assert "cpus_per_trial" not in line and "gpus_per_trial" not in line
    space = tmp_path / "toml.toml"
    space.write_text('[space]\nbudget = "200k"\n[train]\nlr = -1.0\n[run]\ncpus_per_trial = 1\ngpus_per_trial = 1\n')
    _refused(_run(tmp_path, "--space", str(space)), "train.lr must be positive")
    _nothing_written(tmp_path)


def test_run_with_a_budget_and_no_space_explores_the_papers_widths(tmp_path):
    # the refusal names the smallest and largest model of the space: width 8 .. 1024, not the demo's 32 .. 64
    smallest = count_params(StudentArch(1, 8, 1), DIGITS)
    largest = count_params(StudentArch(64, 1024, 1), DIGITS)
    _refused(_run(tmp_path, "--budget", "1k"), "no architecture fits", f"{smallest:,} to {largest:,} parameters")
    # the demo file lists its three students: the first over the budget is named with its count
    demo = _refused(_run(tmp_path, "--budget", "1k", "--space", "search_spaces/demo.toml"), "over upper*budget")
    assert f"d2-w16-h2 has {count_params(StudentArch(2, 16, 2), DIGITS):,} parameters" in demo
    _nothing_written(tmp_path)


def test_space_with_a_budget_and_no_space_file_lists_the_papers_widths_with_rule_heads():
    out = dse("space", "--budget", "5M", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["candidates"]
    widths = {r["width"] for r in rows}
    assert widths <= set(default_widths()) and {96, 128, 192, 256} <= widths  # not only the demo's 32, 48, 64
    assert {(r["width"], r["heads"]) for r in rows} == {(64, 8), (96, 8), (128, 8), (192, 12), (256, 16)}
    assert [(r["depth"], r["width"]) for r in rows if r["design_rule"]] == [(7, 192)]
    # one depth per width, the one closest to the budget (the paper's Table 2), not depths 54-64 at width 64
    assert sorted(r["width"] for r in rows) == [64, 96, 128, 192, 256]
    for r in rows:
        others = [n for d in range(1, 65) if 4_000_000 <= (n := count_params(StudentArch(d, r["width"], 1), DIGITS))
                  <= 5_100_000]  # every depth of that width in the space and the band
        assert all(abs(r["params"] - 5_000_000) <= abs(n - 5_000_000) for n in others)
    demo = dse("space", "--json")  # no budget: the demo as it is
    assert {r["width"] for r in json.loads(demo.stdout)["candidates"]} == {16, 32, 48}  # the demo's own list


def test_space_table_puts_the_head_counts_of_an_architecture_on_one_row():
    table = dse("space", "--budget", "0.42M", *CIFAR)
    data = dse("space", "--budget", "0.42M", *CIFAR, "--json")
    assert table.returncode == 0 and data.returncode == 0, table.stderr + data.stderr
    rows = json.loads(data.stdout)["candidates"]  # the JSON keeps one entry per (depth, width, heads)
    pairs = {(r["depth"], r["width"]) for r in rows}
    lines = table.stdout.strip().splitlines()
    body = [line.split() for line in lines[2:]]
    assert lines[1].split() == ["depth", "width", "heads", "params"]
    assert len(body) == len(pairs) < len(rows)
    by_arch = {(int(b[0]), int(b[1])): b for b in body}
    d5w64 = by_arch[(5, 64)]
    assert d5w64[2] == "1,2,4,8,16,32,64" and d5w64[3] == "421,068" and "design rule (heads 8)" in " ".join(d5w64)
    assert by_arch[(2, 96)][2] == ",".join(str(h) for h in range(1, 97) if 96 % h == 0)


def test_space_patch_size_applies_to_the_data_set_and_is_checked():
    out = dse("space", "--patch-size", "4", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["geometry"]["patch_size"] == 4
    _refused(dse("space", "--patch-size", "3"), "patch_size 3 does not divide the 8x8 images of digits")
    _refused(dse("propose", "--budget", "1e400"), "invalid budget '1e400'")
