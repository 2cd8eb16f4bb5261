"""Executable documentation: every `dse ...` command line shown in README.md and docs/*.md runs as a
user would type it, in a fresh folder laid out like a clone, and ends as the docs promise.

Which lines count (the rule; docs/reliability.md repeats it):
- Only lines inside fenced code blocks (``` with no language, or sh / bash / shell / console) are
  collected; `python`, `toml` and other blocks are not shell.
- A line counts when, after an optional `$ ` prompt, it starts with `dse `. A trailing `\\` joins
  the next line; a `# comment` outside quotes is dropped. Lines starting with `#` are comments.
  Lines of other programs (`make`, `ray start`) are not dse commands.
- After a `$ ` line, the lines up to the next blank line, prompt or fence are its expected output:
  each must appear in what the command prints.
- `dse ...` written inline in prose or in tables is NOT collected: those are synopses with
  brackets and placeholders (`dse run [--space FILE]`, `dse eval CHECKPOINT`), not command lines.
- A shell-block line that mentions `dse ` without starting with it (e.g. `FOO=1 dse run`) or a
  collected line containing `...` fails the collection test, so nothing is skipped silently.

How they run: one temporary clone for the session (search_spaces/ symlinked, a `bin/dse` shim that
runs `python -m dse` with PYTHONPATH=<repo>, $DSE_DATA an empty folder), commands in document order
(README.md, then docs/*.md by name; a later command may use what an earlier one made, as a reader
following the page would), each through bash. The shim appends the test's tiny settings (TINY)
to `dse run`, `dse eval` and `dse teacher generate/train`, so the documented text is never changed
for speed. PLACEHOLDERS lists the only words the test replaces, and why. Every command must exit 0
unless EXPECTED_REFUSALS lists it: then it must exit 2 with one `error: ` line naming what is
missing (a file a fresh clone lacks, a CUDA device, a reachable cluster) and write nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = ("", "sh", "bash", "shell", "console")
COMMAND_TIMEOUT_S = 600

# What the shim appends, by subcommand: tiny settings that keep every documented run short.
TINY = {
    "run": ["--no-live", "--set", "train.steps=2", "--set", "train.epochs=0", "--set", "train.batch_size=16",
            "--set", "teacher.num_pairs=64", "--set", "teacher.num_steps=2", "--set", "eval.num_samples=20",
            "--set", "eval.reference_num=100", "--set", "eval.latency_num_images=8", "--set", "eval.latency_batch=4",
            "--set", "eval.latency_repeats=1", "--set", "eval.onnx=false", "--set", "eval.samples_per_class=2"],
    "eval": ["--num-samples", "20", "--latency-images", "8", "--set", "eval.reference_num=100",
             "--set", "eval.latency_batch=4", "--set", "eval.latency_repeats=1", "--set", "eval.onnx=false"],
    "teacher generate": ["--num", "64", "--steps", "2"],
    "teacher train": ["--steps", "4", "--batch-size", "16"],
}

# The only words of a documented command the test replaces: (pattern, replacement, why).
PLACEHOLDERS = [
    (r"\bHEAD_IP:6379\b", "127.0.0.1:1",
     "no cluster here (tests/test_cluster is the real one): a port nothing listens on, which dse must refuse fast"),
    (r"(?<=\s)/shared/results\b", "shared/results", "an NFS folder: kept inside the temporary clone"),
    (r"(?<=\s)/data/get/cifar10-edm\b", "get-fixture", "GET's published pairs: a tiny folder in GET's layout"),
    (r"(?<=\s)DIR\b", "pairs-fixture", "any pair store: a tiny one made by the test"),
    (r"(?<=\s)my-ddpm\b", "hf-fixture", "your diffusers folder: a tiny random UNet2DModel + DDPMScheduler"),
]


@dataclass(frozen=True)
class Refusal:
    words: tuple[str, ...]  # the one error line names at least one of these
    why: str
    unless_cuda: bool = False  # with a CUDA device the command must run instead


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Documented commands that a fresh clone on a CPU machine must refuse cleanly (exit 2, one line).
EXPECTED_REFUSALS = {
    "dse run --budget 5M --device cuda": Refusal(("cuda",), "asks for CUDA", unless_cuda=True),
    "dse run --budget 5M --device cuda --gpus-per-trial 0.25": Refusal(("cuda", "gpu"), "asks for CUDA", unless_cuda=True),
    "dse run --budget 5M --device cuda --seeds 4 --cohort-size 4 --compile": Refusal(("cuda",), "asks for CUDA",
                                                                                      unless_cuda=True),
    "dse run --budget 5M --address HEAD_IP:6379 --results-dir /shared/results": Refusal(
        ("127.0.0.1:1",), "no Ray cluster listens there"),
    "dse teacher generate --teacher empirical --dataset cifar10 --num 50000 --out results/pairs/cifar10-empirical "
    "--device cuda": Refusal(("cuda", "cifar"), "CIFAR-10 is not downloaded, and it asks for CUDA"),
    "dse teacher generate --teacher trained --source results/teachers/digits/last.pt --dataset digits --num 100000 "
    "--out results/pairs/digits-trained": Refusal(
        ("results/teachers/digits/last.pt",), "the teacher is trained later on the page (section 3)"),
    "dse teacher generate --teacher external --source edm_cifar10.pt --dataset cifar10 --num 1000000 "
    "--out results/pairs/cifar10-edm --image-dtype float16 --device cuda": Refusal(
        ("edm_cifar10.pt", "cuda", "cifar"), "your own EDM network file is not in a clone"),
    "dse teacher convert my_teachers:build_unet --out teachers/my-ddpm --dataset digits": Refusal(
        ("my_teachers",), "your module is not in a clone (tests/teacher/test_convert.py converts real ones)"),
}


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # as written, continuation lines joined, comment dropped
    output: tuple[str, ...]  # lines shown after a `$ ` prompt


def _drop_comment(text: str) -> str:
    """`text` without a trailing `# comment`, runs of blanks outside quotes written as one space."""
    out, quote = [], None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            break
        elif ch.isspace() and out and out[-1] == " ":
            continue
        out.append(" " if ch.isspace() and not quote else ch)
    return "".join(out).strip()


def shell_blocks(path: Path):
    """(first line number, lines) of each fenced shell block of a Markdown file."""
    lines, block, start, tag = path.read_text().splitlines(), None, 0, ""
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            if block is None:
                block, start, tag = [], number + 1, line.strip()[3:].strip().lower()
            else:
                if tag in SHELL_TAGS:
                    yield start, block
                block = None
        elif block is not None:
            block.append(line)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def collect(paths=DOC_FILES) -> list[DocCommand]:
    found = []
    for path in paths:
        for start, lines in shell_blocks(path):
            i = 0
            while i < len(lines):
                text = lines[i].strip()
                prompt = text.startswith("$ ")
                text = text[2:] if prompt else text
                if text.startswith("dse "):
                    first = i
                    while text.endswith("\\") and i + 1 < len(lines):
                        i += 1
                        text = text[:-1].rstrip() + " " + lines[i].strip()
                    output = []
                    while prompt and i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith("$ "):
                        i += 1
                        output.append(lines[i].strip())
                    found.append(DocCommand(f"{_shown(path)}:{start + first}", _drop_comment(text), tuple(output)))
                i += 1
    return found


COMMANDS = collect()
# a dse command that does not start its line: after a shell operator, variables, or time / env / sudo
HIDDEN_DSE = re.compile(r"(?:[;&|(]\s*|^(?:\w+=\S*\s+)+|\b(?:sudo|time|env|exec|nohup)\s+)dse\s")


def test_the_docs_show_commands_and_none_is_skipped_silently():
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) >= 10 and {"README.md", "docs/running.md", "docs/teachers.md"} <= where, COMMANDS
    for c in COMMANDS:
        assert "..." not in c.text, f"{c.where}: `{c.text}` has a placeholder '...': write the command out"
    for path in DOC_FILES:
        for start, lines in shell_blocks(path):
            for n, line in enumerate(lines):
                text = line.strip().removeprefix("$ ")
                if HIDDEN_DSE.search(_drop_comment(text)) and not (n and lines[n - 1].rstrip().endswith("\\")):
                    pytest.fail(f"{path.relative_to(ROOT)}:{start + n}: `{text}` runs dse but is not a `dse ...` line")


def test_every_placeholder_and_expected_refusal_is_used():
    texts = [c.text for c in COMMANDS]
    assert set(EXPECTED_REFUSALS) <= set(texts), set(EXPECTED_REFUSALS) - set(texts)
    for pattern, _, why in PLACEHOLDERS:
        assert any(re.search(pattern, t) for t in texts), f"placeholder {pattern} ({why}) is used by no command"


def test_the_collection_rule_on_a_sample(tmp_path):
    page = tmp_path / "page.md"
    assert HIDDEN_DSE.search("RAY_ADDRESS=h:1 dse run") and HIDDEN_DSE.search("cd x && dse status")
    assert not HIDDEN_DSE.search("study.json   what `dse report` reads") and not HIDDEN_DSE.search("dse run")
    page.write_text("Inline `dse run [--space FILE]` is a synopsis.\n\n| `dse status` | table |\n\n"
                    "```python\ndse = 1\n```\n\n```\n# dse run --in-a-comment\ndse run --budget 5M \\\n"
                    "    --study x   # trailing comment\nmake demo\n$ dse propose --budget 5M\nd7-w192-h12: depth 7\n\n```\n")
    got = collect([page])
    assert [c.text for c in got] == ["dse run --budget 5M --study x", "dse propose --budget 5M"]
    assert got[1].output == ("d7-w192-h12: depth 7",)


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(folder))] = "dir" if p.is_dir() else (
                "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


SHIM = """#!{python}
import os, sys
TINY = {tiny!r}
args = sys.argv[1:]
key = " ".join(args[:2]) if args[:1] == ["teacher"] else (args[0] if args else "")
os.execv({python!r}, [{python!r}, "-m", "dse", *args, *TINY.get(key, [])])
"""


def _tiny_get_folder(out: Path) -> None:
    """GET's layout with 16 pairs: latent/N.pkl = [noise (n, 3, 32, 32), one-hot (n, 10)], image/N.pkl."""
    import torch

    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 3, 32, 32, generator=g)
    onehot = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    for sub, value in (("latent", [z, onehot]), ("image", (z / 3).clamp(-1, 1))):
        (out / sub).mkdir(parents=True)
        torch.save(value, out / sub / "000000015.pkl")


def _tiny_diffusers_folder(out: Path) -> None:
    """A diffusers model folder for digits (8x8x1, 10 classes): UNet2DModel + DDPMScheduler, safetensors."""
    import diffusers
    import torch

    torch.manual_seed(0)
    diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=10,
    ).save_pretrained(out)
    diffusers.DDPMScheduler().save_pretrained(out)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder laid out like a fresh clone, plus the fixtures PLACEHOLDERS point at."""
    from dse.teacher.generate import generate_pairs
    from dse.teacher.edm import SamplerSettings

    root = tmp_path_factory.mktemp("clone")
    (root / "search_spaces").symlink_to(ROOT / "search_spaces")
    (root / "bin").mkdir()
    shim = root / "bin" / "dse"
    shim.write_text(SHIM.format(python=sys.executable, tiny=TINY))
    shim.chmod(0o755)
    (root / "data").mkdir()
    generate_pairs(root / "pairs-fixture", num_pairs=64, settings=SamplerSettings(num_steps=2), shard_size=32)
    _tiny_get_folder(root / "get-fixture")
    _tiny_diffusers_folder(root / "hf-fixture")
    return root


def _as_run(text: str) -> str:
    for pattern, replacement, _ in PLACEHOLDERS:
        text = re.sub(pattern, replacement, text)
    return text


@pytest.mark.parametrize("command", COMMANDS, ids=[c.text for c in COMMANDS])
def test_documented_command_works_as_written(command: DocCommand, clone: Path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{clone / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), DSE_DATA=str(clone / "data"))
    refusal = EXPECTED_REFUSALS.get(command.text)
    if refusal and refusal.unless_cuda and _cuda():
        refusal = None
    before = _snapshot(clone) if refusal else None
    out = subprocess.run(["bash", "-c", _as_run(command.text)], cwd=clone, env=env, capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT_S)
    both = out.stdout + out.stderr
    assert "Traceback" not in both, f"{command.where}\n{both}"
    if refusal is None:
        assert out.returncode == 0, f"{command.where}: exit {out.returncode}\n{both[-3000:]}"
        printed = [line.strip() for line in out.stdout.splitlines()]
        for line in command.output:
            assert line in printed, f"{command.where}: the docs show `{line}`; it printed:\n{out.stdout}"
    else:
        lines = out.stderr.splitlines()
        assert out.returncode == 2, f"{command.where} ({refusal.why}): exit {out.returncode}\n{both[-3000:]}"
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert any(w.lower() in lines[0].lower() for w in refusal.words), f"{lines[0]!r} names none of {refusal.words}"
        assert _snapshot(clone) == before, f"{command.where}: refused, but wrote into the clone"
