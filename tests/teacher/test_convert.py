"""`dse teacher convert SOURCE --out DIR`: a teacher given as code becomes safetensors + JSON that dse
loads without running code, reproducing the source; what dse cannot rebuild is one line, exit 2,
nothing written."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from dse.errors import DseError
from tests.data.test_pairs import _listing
from tests.teacher.test_cli_teacher import _one_line_error
from tests.test_cli import ROOT

pytest.importorskip("diffusers")

# A user's teachers: each wrapper writes the EDM denoiser by hand (its own sigma -> timestep code,
# with numpy's interp, independent of dse's), as someone holding a diffusers model would.
USER_MODULE = '''
import numpy as np
import torch
import diffusers

from dse.teacher.train import TeacherTrainConfig, build_denoiser
from dse.types import Geometry


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=10)


class UNetTeacher(torch.nn.Module):
    """D(x, sigma, y) of a DDPM epsilon UNet: x_vp = x / sqrt(1 + sigma^2), t by log-sigma interpolation."""

    def __init__(self, shift=0.0, with_scheduler=True):
        super().__init__()
        self.unet, self.shift = _unet(), shift
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
        abar = sched.alphas_cumprod.double().numpy()
        self.log_sigmas = 0.5 * np.log((1 - abar) / abar)
        if with_scheduler:
            self.scheduler = sched

    def forward(self, x, sigma, labels):
        t = np.interp(np.log(sigma.double().cpu().numpy()), self.log_sigmas, np.arange(1000.0)) + self.shift
        s = sigma.view(-1, 1, 1, 1)
        eps = self.unet(x / (1 + s**2).sqrt(), torch.as_tensor(t, dtype=torch.float32), class_labels=labels).sample
        return x - s * eps


def unet():
    return UNetTeacher()


def unet_as_closure():
    teacher = UNetTeacher()
    return lambda x, sigma, labels: teacher(x.float(), sigma.float(), labels).to(x.dtype)  # the sampler's float64


def unet_without_scheduler():
    return UNetTeacher(with_scheduler=False)


def unet_with_another_mapping():
    return UNetTeacher(shift=40.0)


def dse_net():
    torch.manual_seed(0)
    d = build_denoiser(TeacherTrainConfig(depth=1, width=16, heads=2), Geometry(8, 1, 10, 2))
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.05 * torch.randn_like(p))  # (its output layer starts at zero)
    return d


def unknown():
    return torch.nn.Conv2d(1, 1, 3, padding=1)
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A folder with the user's module (on PYTHONPATH in `convert`) and a TorchScript teacher."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_teachers.py").write_text(USER_MODULE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 1, 3, padding=1)), str(root / "teacher.ts"))
    return root


def dse_with(user_dir, *args):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{user_dir}"}
    return subprocess.run([sys.executable, "-m", "dse", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)


def _user_teacher(user, name):
    sys.path.insert(0, str(user))
    try:
        import my_teachers

        return getattr(my_teachers, name)()
    finally:
        sys.path.remove(str(user))


def _probe():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.tensor([20.0, 0.7, 0.01], dtype=torch.float64), torch.tensor([2, 5, 9])


@pytest.mark.parametrize("entry", ["unet", "unet_as_closure"])
def test_a_wrapped_diffusers_unet_becomes_a_diffusers_folder_that_reproduces_it(user, tmp_path, entry):
    from dse.teacher.hf import load_diffusers_teacher

    out = tmp_path / "converted"
    done = dse_with(user, "teacher", "convert", f"my_teachers:{entry}", "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UNet2DModel + DDPMScheduler" in done.stdout
    assert f"dse teacher generate --teacher diffusers --source {out} --dataset digits" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "dse_convert.json", "scheduler_config.json"]
    assert json.loads((out / "dse_convert.json").read_text())["max_abs_diff"] < 1e-3

    x, sigma, y = _probe()
    with torch.no_grad():
        want = _user_teacher(user, "unet")(x.float(), sigma.float(), y).double()
    assert torch.allclose(load_diffusers_teacher(out)(x, sigma, y), want, atol=1e-4)

    pairs = dse_with(user, "teacher", "generate", "--teacher", "diffusers", "--source", str(out), "--num", "4",
                     "--steps", "2", "--out", str(tmp_path / "pairs"), "--device", "cpu")
    assert pairs.returncode == 0, pairs.stderr
    assert json.loads((tmp_path / "pairs" / "manifest.json").read_text())["teacher"]["conditional"] is True


def test_dse_own_edm_teacher_becomes_safetensors_and_json_for_the_trained_kind(user, tmp_path):
    from dse.teacher.train import load_trained_teacher

    out = tmp_path / "converted"
    done = dse_with(user, "teacher", "convert", "my_teachers:dse_net", "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--teacher trained" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dse_convert.json", "teacher.json", "teacher.safetensors"]
    description = json.loads((out / "teacher.json").read_text())
    assert description["config"]["depth"] == 1 and description["config"]["width"] == 16
    assert description["config"]["heads"] == 2 and description["geometry"]["image_size"] == 8

    x, sigma, y = _probe()
    source = _user_teacher(user, "dse_net").eval()
    with torch.no_grad():
        want = source(x.float(), sigma.float(), y).double()
    got = load_trained_teacher(out, dataset="digits")(x, sigma, y)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, x, atol=1e-2)

    pairs = dse_with(user, "teacher", "generate", "--teacher", "trained", "--source", str(out), "--num", "4",
                     "--steps", "2", "--out", str(tmp_path / "pairs"), "--device", "cpu")
    assert pairs.returncode == 0, pairs.stderr

    # tampered weights are refused in one line, before anything runs
    data = bytearray((out / "teacher.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "teacher.safetensors").write_bytes(bytes(data))
    with pytest.raises(DseError, match="does not match the sha256"):
        load_trained_teacher(out)


@pytest.mark.parametrize(
    "source, message",
    [
        ("{user}/teacher.ts",
         "is a TorchScript program (a Conv2d); dse cannot rebuild an unknown architecture without its code"),
        ("my_teachers:unknown", "holding no diffusers UNet2DModel / DiTTransformer2DModel and no dse EDM teacher"),
        ("my_teachers:unet_without_scheduler", "holds a UNet2DModel but no diffusers scheduler"),
        ("my_teachers:unet_with_another_mapping", "does not reproduce my_teachers:unet_with_another_mapping"),
        ("my_teachers:nope", "has no attribute 'nope'"),
        ("no_such_module:build", "cannot import module 'no_such_module'"),
    ],
)
def test_what_dse_cannot_rebuild_is_one_line_exit_2_writing_nothing(user, tmp_path, source, message):
    before = _listing(tmp_path)
    out = dse_with(user, "teacher", "convert", source.format(user=user), "--out", str(tmp_path / "new" / "teacher"),
                   "--device", "cpu")
    _one_line_error(out, message)
    assert _listing(tmp_path) == before


def test_an_existing_folder_is_not_overwritten(user, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    before = _listing(tmp_path)
    out = dse_with(user, "teacher", "convert", "my_teachers:unet", "--out", str(tmp_path / "out"), "--device", "cpu")
    _one_line_error(out, "already exists and is not an empty folder")
    assert _listing(tmp_path) == before
