"""`dse export CKPT --format diffusers --out DIR` (issue 15): a folder that diffusers'
`DiTTransformer2DModel.from_pretrained(DIR, local_files_only=True)` loads and that gives dse's images for
the same (z, y), with and without classifier-free guidance done as docs/formats.md says; safetensors only;
refusals in one line with nothing written. Tiny students on CPU; nothing is downloaded."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import get_timestep_embedding

from dse.errors import DseError
from dse.evaluation import save_student
from dse.export_diffusers import diffusers_state_dict, export_diffusers, to_diffusers
from dse.layout import DIFFUSERS_NOTE_FILE, STUDENT_FILE, STUDENT_WEIGHTS_FILE
from dse.models.dit import STUDENT_TIME, DiT, TimestepEmbedder
from dse.types import Geometry, StudentArch
from tests.test_cli import dse

ATOL = 1e-5


def _student(arch=StudentArch(2, 16, 2), geometry=Geometry(8, 1, 10), seed=0):
    """A student whose every weight matters (DiT's initialisation zeroes the adaLN and output layers)."""
    torch.manual_seed(seed)
    model = DiT(arch, geometry, label_dropout=0.1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the sin-cos position embedding stays fixed, as in training
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _load(folder):
    return DiTTransformer2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval()


def _inputs(g, n=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, g.channels, g.image_size, g.image_size), generator=gen), torch.randint(0, g.num_classes, (n,), generator=gen)


def _guided_as_the_docs_say(model, z, y, s):
    """docs/formats.md: one batch [z, z] with labels [y, null], any timestep, x_u + s (x_c - x_u)."""
    null = torch.full_like(y, model.config.num_embeds_ada_norm)
    out = model(torch.cat([z, z]), timestep=torch.zeros(2 * len(y)), class_labels=torch.cat([y, null])).sample
    x_c, x_u = out.chunk(2)
    return x_u + s * (x_c - x_u)


@pytest.mark.parametrize("arch, geometry", [
    (StudentArch(2, 16, 2), Geometry(8, 1, 10, 2)),
    (StudentArch(3, 24, 3), Geometry(8, 3, 4, 4)),  # RGB, patch 4, 3 heads of 8
])
@torch.no_grad()
def test_a_saved_pretrained_export_reproduces_dse_with_and_without_guidance(tmp_path, arch, geometry):
    student = _student(arch, geometry)
    to_diffusers(student).save_pretrained(tmp_path / "hf")
    model = _load(tmp_path / "hf")
    z, y = _inputs(geometry)
    y[0] = geometry.num_classes  # the null label itself is a label diffusers takes
    expected = student(z, y)
    got = model(z, timestep=torch.zeros(len(y)), class_labels=y).sample
    assert got.shape == expected.shape == z.shape
    assert torch.allclose(got, expected, atol=ATOL), float((got - expected).abs().max())
    assert expected.abs().max() > 0.5  # a real output, not a zero the two agree on by construction
    y = y.clamp(max=geometry.num_classes - 1)
    for s in (1.5, 4.0):
        guided = _guided_as_the_docs_say(model, z, y, s)
        assert torch.allclose(guided, student.forward_with_cfg(z, y, s), atol=ATOL)
        assert not torch.allclose(guided, student(z, y), atol=1e-3)  # guidance changed the image


@torch.no_grad()
def test_any_timestep_gives_the_students_output_because_the_time_embedding_is_constant(tmp_path):
    student = _student()
    model = to_diffusers(student)
    z, y = _inputs(student.geometry, n=3)
    expected = student(z, y)
    for t in (torch.zeros(3), torch.full((3,), 999.0), torch.tensor([0.5, float(STUDENT_TIME), 12345.0])):
        assert torch.allclose(model(z, timestep=t, class_labels=y).sample, expected, atol=ATOL)


def test_diffusers_timestep_sinusoid_is_not_dses_so_only_a_constant_maps_exactly():
    """Why the export bakes the time embedding in: diffusers' DiT uses downscale_freq_shift=1
    (frequencies exp(-ln(1e4) i / (half - 1))), dse (DiT's own code) divides by half."""
    t = torch.tensor([0.3, float(STUDENT_TIME)])
    ours = TimestepEmbedder.timestep_embedding(t, 256)
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    assert not torch.allclose(ours, theirs, atol=1e-2)
    assert torch.allclose(ours, get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0), atol=1e-5)


def test_every_block_carries_the_students_one_embedder_and_qkv_is_split():
    student = _student(StudentArch(3, 16, 2))
    sd = diffusers_state_dict(student)
    table = student.y_embedder.embedding_table.weight
    t_emb = student.t_embedder(torch.tensor([float(STUDENT_TIME)]))[0]
    for i in range(3):
        emb = f"transformer_blocks.{i}.norm1.emb."
        assert torch.equal(sd[emb + "class_embedder.embedding_table.weight"], table)
        assert torch.allclose(sd[emb + "timestep_embedder.linear_2.bias"], t_emb)
        assert not sd[emb + "timestep_embedder.linear_2.weight"].any()
        q, k, v = (sd[f"transformer_blocks.{i}.attn1.to_{n}.weight"] for n in "qkv")
        assert torch.equal(torch.cat([q, k, v]), student.blocks[i].attn.qkv.weight)


def test_the_cli_writes_a_safetensors_folder_that_from_pretrained_loads(tmp_path):
    student = _student()
    trial = tmp_path / "artifacts" / "t1"
    save_student(trial / STUDENT_FILE, student, dataset="digits", trial_id="t1")
    out = dse("export", str(trial / STUDENT_WEIGHTS_FILE), "--format", "diffusers", "--out", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    assert "max |diffusers - dse| =" in out.stdout and "DiTTransformer2DModel" in out.stdout
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert files == sorted(["config.json", DIFFUSERS_NOTE_FILE, "diffusion_pytorch_model.safetensors"])  # no .bin, no pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "hf"]  # no temporary folder left
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and config["num_embeds_ada_norm"] == 10
    assert (config["sample_size"], config["patch_size"], config["in_channels"], config["num_layers"]) == (8, 2, 1, 2)
    note = json.loads((tmp_path / "hf" / DIFFUSERS_NOTE_FILE).read_text())
    assert note["trial_id"] == "t1" and note["max_abs_diff"] <= ATOL and "any (B,) tensor" in note["timestep"]
    model = _load(tmp_path / "hf")
    z, y = _inputs(student.geometry)
    with torch.no_grad():
        assert torch.allclose(_guided_as_the_docs_say(model, z, y, 1.5), student.forward_with_cfg(z, y, 1.5), atol=ATOL)


def _refused(out, needle):
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr


@pytest.fixture
def workdir(tmp_path):
    save_student(tmp_path / STUDENT_FILE, _student(), dataset="digits")
    save_student(tmp_path / "wide.pt", _student(StudentArch(1, 16, 2, mlp_ratio=2.0)), dataset="digits")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize("args, needle", [
    (["--format", "diffusers", "--out", "full"], "is not empty"),
    (["--format", "diffusers", "--out", "afile"], "is a file"),
    (["--format", "safetensors", "--out", "new"], "--format must be onnx or diffusers"),
    (["--format", "diffusers", "--out", "new", "--guidance", "2"], "--guidance is for --format onnx"),
    (["--format", "diffusers", "--out", "new", "CKPT=wide.pt"], "mlp_ratio is 2"),
    (["--format", "diffusers", "--out", "new", "CKPT=missing.pt"], "not found"),
])
def test_refusals_are_one_line_and_write_nothing(workdir, args, needle):
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("CKPT=")), STUDENT_FILE)
    args = [a for a in args if not a.startswith("CKPT=")]
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    _refused(dse("export", ckpt, *args, cwd=workdir), needle)
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
    assert (workdir / "full" / "keep.txt").read_text() == "mine"


def test_an_empty_out_folder_is_filled(tmp_path):
    student = _student()
    save_student(tmp_path / STUDENT_FILE, student, dataset="digits")
    (tmp_path / "hf").mkdir()
    info = export_diffusers(tmp_path, tmp_path / "hf")
    assert "diffusion_pytorch_model.safetensors" in info["files"] and info["max_abs_diff"] <= ATOL


def test_a_position_embedding_diffusers_cannot_compute_is_refused():
    student = _student()
    with torch.no_grad():
        student.pos_embed.add_(0.1)
    with pytest.raises(DseError, match="position embedding"):
        to_diffusers(student)



def test_the_guidance_example_of_docs_formats_md_gives_dses_guided_images(tmp_path):
    """The python block of docs/formats.md, run as written on an exported student (only its folder
    name replaced): its `images` are dse's `forward_with_cfg(z, y, 1.5)` for the same z and y."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    section = text.split("### As a diffusers model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    student = _student()
    save_student(tmp_path / STUDENT_FILE, student, dataset="digits")
    export_diffusers(tmp_path / STUDENT_FILE, tmp_path / "hf")
    assert code.count('"student-diffusers"') == 1
    scope: dict = {}
    exec(code.replace('"student-diffusers"', repr(str(tmp_path / "hf"))), scope)  # noqa: S102 - our own docs
    with torch.no_grad():
        assert torch.allclose(scope["images"], student.forward_with_cfg(scope["z"], scope["y"], 1.5), atol=ATOL)


def test_a_trained_trials_student_exports_and_matches(tiny_pairs, tmp_path):
    """Issue 15's "done when": a trial's trained student (its artifacts folder, as a study leaves it:
    student.pt and the safetensors pair) exported for diffusers gives dse's images."""
    import dataclasses

    from dse.config import EvalConfig, TrainConfig
    from dse.evaluation import load_student
    from dse.trial import TrialSpec, run_trial

    spec = TrialSpec(
        study="t", dataset="digits", geometry=Geometry(8, 1, 10), arch=StudentArch(2, 16, 2),
        train=TrainConfig(steps=10, batch_size=32, lr=1e-3), pairs_dir=str(tiny_pairs), budget=20_000,
        eval=dataclasses.replace(EvalConfig(), num_samples=20, reference_num=100, samples_per_class=0, onnx=False),
        artifacts_dir=str(tmp_path / "art"), defer_latency=True,
    )
    row = run_trial(spec).row
    assert row["status"] == "complete", row["error"]
    folder = Path(row["checkpoint"]).parent
    assert (folder / STUDENT_WEIGHTS_FILE).is_file() and (folder / "student.json").is_file()
    student, meta = load_student(folder)  # the safetensors form
    assert meta["trial_id"] == spec.trial_id
    from_pt, _ = load_student(row["checkpoint"])
    z, y = _inputs(student.geometry)
    with torch.no_grad():
        assert torch.equal(student(z, y), from_pt(z, y))
    export_diffusers(folder, tmp_path / "hf")
    with torch.no_grad():
        got = _guided_as_the_docs_say(_load(tmp_path / "hf"), z, y, 1.5)
        assert torch.allclose(got, student.forward_with_cfg(z, y, 1.5), atol=ATOL)
