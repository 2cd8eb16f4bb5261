"""The `diffusers` teacher: a local save_pretrained folder (tiny random UNet2DModel / DiTTransformer2DModel
plus a scheduler, written here; nothing is downloaded) as an EDM denoiser. The sigma <-> timestep
mapping is checked against the schedulers' own add_noise, get_velocity, _sigma_to_t and step; the
CLI makes a pair store from a folder and a study runs on it; bad folders are one line, exit 2."""

import json
import shutil

import pytest
import torch

from dse.teacher.edm import SIGMA_MAX, SIGMA_MIN
from dse.teacher.hf import DiffusersDenoiser, _VPSchedule, load_diffusers_teacher, make_schedule, vp_timestep
from dse.types import Geometry
from tests.data.test_pairs import _listing
from tests.teacher.test_cli_teacher import _one_line_error
from tests.test_cli import _tiny_study, dse

diffusers = pytest.importorskip("diffusers")

DIGITS = Geometry(8, 1, 10)  # the digits data set: 8x8x1, 10 classes


def tiny_unet(num_class_embeds=10, seed=0, channels=1):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=num_class_embeds,
    ).eval()


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=1, sample_size=8, patch_size=2,
        num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """unet: a model folder (class-conditional UNet, DDPM epsilon, scheduler_config.json beside it);
    pipeline: a DDPMPipeline folder (unconditional UNet, DDIM v-prediction); dit: a model folder
    (DiT, EDMEulerScheduler in scheduler/)."""
    root = tmp_path_factory.mktemp("hf")
    tiny_unet().save_pretrained(root / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "unet")
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(num_class_embeds=None, seed=1),
                                  scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(root / "pipeline")
    tiny_dit().save_pretrained(root / "dit")
    diffusers.EDMEulerScheduler(sigma_data=0.5).save_pretrained(root / "dit" / "scheduler")
    return root


# -- the sigma <-> timestep mapping, against the schedulers' own arithmetic ---------------------------


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_vp_mapping_matches_add_noise_and_get_velocity(beta_schedule):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 17, 250, 731, 999])
    abar = sched.alphas_cumprod.to(torch.float64)[t].view(-1, 1, 1, 1)
    sigma = ((1 - abar) / abar).sqrt().flatten()  # (6,)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps  # EDM's variables
    x_t = sched.add_noise(x0, eps, t)  # the scheduler's VP sample at step t
    assert torch.allclose(x_t / abar.sqrt(), x, atol=1e-5)

    for prediction, target in (("epsilon", eps), ("v_prediction", sched.get_velocity(x0, eps, t)), ("sample", x0)):
        schedule = _VPSchedule(sched, prediction)
        x_in, timestep = schedule.model_input(x, sigma)
        assert torch.allclose(x_in, x_t, atol=1e-5) and torch.allclose(timestep, t.double(), atol=1e-3)
        # the model's exact prediction gives back x0 (a wrong formula for v would not)
        assert torch.allclose(schedule.denoised(x, target, sigma), x0, atol=1e-5), prediction


def test_vp_timestep_is_diffusers_sigma_to_t_between_steps_and_clamped_outside():
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear")  # sigma from 0.03 to 14.6
    abar = sched.alphas_cumprod.to(torch.float64)
    log_sigmas = (0.5 * ((1 - abar) / abar).log()).numpy()
    sigma = torch.tensor([0.002, 0.02986, 0.1, 0.7, 3.3, 14.0, 14.6, 80.0], dtype=torch.float64)
    ours = vp_timestep(sigma, sched.alphas_cumprod)
    theirs = torch.as_tensor(sched._sigma_to_t(sigma.numpy(), log_sigmas))
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)
    assert ours[0] == 0 and ours[-1] == 999 and (ours.diff() >= 0).all() and 0 < ours[3] < 999


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_one_ddim_step_is_one_euler_step_of_the_denoiser(prediction):
    """DDIM (eta 0) from step t to the previous one is Euler's step of the PF-ODE in EDM's variables:
    x' = x + (sigma' - sigma) (x - D(x, sigma)) / sigma, with x = x_vp / sqrt(abar). (DDIM's clip_sample,
    a sampler setting that clips its x0 estimate to [-1, 1], is off: the denoiser is the model's.)"""
    sched = diffusers.DDIMScheduler(prediction_type=prediction, clip_sample=False)
    sched.set_timesteps(10)
    unet = tiny_unet()
    denoiser = DiffusersDenoiser(unet, make_schedule(sched), conditional=True)
    t, t_prev = sched.timesteps[3], sched.timesteps[4]
    abar, abar_prev = (sched.alphas_cumprod[i].double() for i in (t, t_prev))
    sigma, sigma_prev = (((1 - a) / a).sqrt() for a in (abar, abar_prev))
    g = torch.Generator().manual_seed(1)
    x_vp = torch.randn(3, 1, 8, 8, generator=g)
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        out = unet(x_vp, t, class_labels=labels).sample
    prev = sched.step(out, t, x_vp, eta=0.0).prev_sample.double()

    x = x_vp.double() / abar.sqrt()
    d = denoiser(x, sigma.expand(3), labels)
    euler = x + (sigma_prev - sigma) * (x - d) / sigma
    assert torch.allclose(euler * abar_prev.sqrt(), prev, atol=1e-4), (euler * abar_prev.sqrt() - prev).abs().max()


def test_an_edm_scheduler_step_is_one_euler_step_of_the_denoiser():
    sched = diffusers.EDMEulerScheduler(sigma_data=0.5)
    sched.set_timesteps(8)
    dit = tiny_dit()
    denoiser = DiffusersDenoiser(dit, make_schedule(sched), conditional=True)
    g = torch.Generator().manual_seed(2)
    sigma, sigma_next = sched.sigmas[2].double(), sched.sigmas[3].double()
    x = torch.randn(2, 1, 8, 8, generator=g) * float(sigma)
    labels = torch.tensor([1, 7])
    t = sched.timesteps[2]
    with torch.no_grad():
        out = dit(sched.scale_model_input(x, t), timestep=t.expand(2), class_labels=labels).sample
    prev = sched.step(out, t, x).prev_sample.double()
    d = denoiser(x.double(), sigma.expand(2), labels)
    assert torch.allclose(x + (sigma_next - sigma) * (x - d) / sigma, prev, atol=1e-4)


# -- the folders as teachers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "pipeline", "dit"])
def test_a_folder_is_a_denoiser_close_to_x_at_small_sigma_and_labels_matter_only_if_conditional(folders, name):
    d = load_diffusers_teacher(folders / name, geometry=DIGITS)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    small, large = torch.full((4,), SIGMA_MIN, dtype=torch.float64), torch.full((4,), SIGMA_MAX, dtype=torch.float64)
    y, y2 = torch.tensor([0, 3, 5, 9]), torch.tensor([1, 2, 6, 8])
    out = d(x, small, y)
    assert out.dtype == torch.float64 and out.shape == x.shape and torch.isfinite(out).all()
    assert (out - x).abs().max() < 0.05  # D(x, sigma -> 0) -> x
    assert (d(x, large, y) - x).abs().max() > 0.5  # ... and at sigma_max it is no identity
    differs = not torch.allclose(d(x, torch.full((4,), 1.0, dtype=torch.float64), y),
                                 d(x, torch.full((4,), 1.0, dtype=torch.float64), y2))
    assert differs == (name != "pipeline")  # the unconditional pipeline ignores labels


def test_generate_from_a_folder_through_the_cli_makes_a_valid_store(folders, tmp_path):
    from dse.data.pairs import PairStore

    for name, conditional in (("unet", True), ("pipeline", False)):
        out = tmp_path / name
        done = dse("teacher", "generate", "--teacher", "diffusers", "--source", str(folders / name),
                   "--dataset", "digits", "--num", "12", "--steps", "3", "--batch-size", "8", "--out", str(out),
                   "--device", "cpu")
        assert done.returncode == 0, done.stdout + done.stderr
        store = PairStore.open(out)
        teacher = store.manifest["teacher"]
        assert teacher["kind"] == "diffusers" and teacher["source"] == str(folders / name)
        assert teacher["conditional"] is conditional and teacher["model"] == "UNet2DModel"
        z, y, x = store.batch(range(12))
        assert x.shape == (12, 1, 8, 8) and bool((abs(x) < 1e3).all()) and not (x == z).all()
        assert len(set(y.tolist())) > 1  # the labels are drawn either way; the manifest says whether they matter


def test_a_study_runs_end_to_end_on_pairs_from_a_diffusers_folder(folders, tmp_path):
    import pandas as pd

    opts = _tiny_study(tmp_path)
    out = dse("run", *opts, "--set", "teacher.kind=diffusers", "--set", f"teacher.source={folders / 'dit'}",
              "--set", "space.heads=[2]")
    assert out.returncode == 0, out.stdout + out.stderr
    df = pd.concat(pd.read_parquet(p) for p in (tmp_path / "results" / "tiny" / "trials").glob("*.parquet"))
    assert len(df) == 1 and set(df["status"]) == {"complete"} and df["fid"].notna().all()
    manifest = json.loads(next((tmp_path / "results" / "pairs").glob("digits-diffusers-*/manifest.json")).read_text())
    assert manifest["teacher"]["kind"] == "diffusers" and manifest["teacher"]["model"] == "DiTTransformer2DModel"
    assert manifest["num_pairs"] == 64


def _bin_only(folders, tmp_path):
    bad = tmp_path / "in" / "bin-only"
    shutil.copytree(folders / "unet", bad)
    weights = bad / "diffusion_pytorch_model.safetensors"
    weights.rename(bad / "diffusion_pytorch_model.bin")  # (its bytes do not matter: dse must not open it)
    return bad


@pytest.mark.parametrize(
    "case, dataset, message",
    [
        ("bin-only", "digits", "diffusion_pytorch_model.bin (a pickle, which dse never loads"),
        ("missing", "digits", "not found"),
        ("no-scheduler", "digits", "has no scheduler"),
        ("not-diffusers", "digits", "is not a diffusers folder"),
        ("unet", "cifar10", "does not fit the data set: it has image size 8 (the data set's: 32)"),
        ("no-source", "digits", "needs --source"),
        ("bad-scheduler", "digits", "'NopeScheduler' is not a scheduler of diffusers"),
    ],
)
def test_bad_folders_are_one_line_exit_2_and_write_nothing(folders, tmp_path, case, dataset, message):
    (tmp_path / "in").mkdir()
    source = {"bin-only": lambda: _bin_only(folders, tmp_path), "missing": lambda: tmp_path / "in" / "nope",
              "unet": lambda: folders / "unet", "no-source": lambda: ""}.get(case, lambda: tmp_path / "in" / case)()
    if case == "no-scheduler":
        shutil.copytree(folders / "unet", source)
        (source / "scheduler_config.json").unlink()
    elif case == "bad-scheduler":
        shutil.copytree(folders / "unet", source)
        config = json.loads((source / "scheduler_config.json").read_text())
        (source / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "NopeScheduler"}))
    elif case == "not-diffusers":
        source.mkdir()
        (source / "weights.safetensors").write_bytes(b"")
    before = _listing(tmp_path)
    out = dse("teacher", "generate", "--teacher", "diffusers", "--source", str(source), "--dataset", dataset,
              "--num", "8", "--steps", "2", "--out", str(tmp_path / "new" / "pairs"), "--device", "cpu")
    _one_line_error(out, message)
    assert _listing(tmp_path) == before


def test_a_study_with_a_bad_diffusers_teacher_is_refused_in_one_line_before_writing(folders, tmp_path):
    opts = _tiny_study(tmp_path)
    before = _listing(tmp_path)
    for teacher, message in (([], "teacher.kind = 'diffusers' needs teacher.source"),
                             ([f"teacher.source={tmp_path / 'nope'}"], "not found"),
                             ([f"teacher.source={folders / 'unet'}", "data.dataset=fashion-mnist"], "image size 8")):
        out = dse("run", *opts, "--set", "teacher.kind=diffusers", *[a for t in teacher for a in ("--set", t)])
        _one_line_error(out, message)
        assert _listing(tmp_path) == before  # no study folder, no latency pass written
