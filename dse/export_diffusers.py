"""Owns the mapping of dse's student DiT onto Hugging Face diffusers' `DiTTransformer2DModel` and the
`dse export --format diffusers` folder (`save_pretrained`: config.json + safetensors weights, checked by
loading it back with `from_pretrained` and comparing outputs).

The two networks are the same DiT (Peebles & Xie's models.py) with different names, except:
- the fused attention projection `attn.qkv` is split into diffusers' `attn1.to_q` / `to_k` / `to_v`;
- diffusers keeps a timestep + label embedder in EVERY block (`norm1.emb`) and the final layer reads
  block 0's: dse's one embedder is copied into each;
- diffusers' timestep sinusoid (`Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1)`:
  frequencies `exp(-ln(10^4) i / (half - 1))`) is not dse's (`... i / half`), so no weights make the two
  time embeddings agree for every t. The one-step student only ever sees STUDENT_TIME, so the export
  makes the time embedding a constant: `timestep_embedder.linear_1` / `linear_2` weights zero and
  `linear_2.bias` = dse's embedding of STUDENT_TIME. Any timestep then gives dse's output exactly;
- diffusers' MLP is always 4x the width (no `mlp_ratio`), so other students are refused;
- diffusers computes the fixed sin-cos position embedding itself (not in the weights); it is checked
  against the student's.
The model's output is the image itself (one step), not a noise prediction for a scheduler loop;
classifier-free guidance is done by the caller (docs/formats.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from dse.errors import DseError, one_line
from dse.fileio import check_folder
from dse.layout import DIFFUSERS_NOTE_FILE
from dse.models.dit import STUDENT_TIME, DiT

DIFFUSERS_CLASS = "DiTTransformer2DModel"
NOTE_FORMAT = "dse-diffusers-export-v1"
CHECK_GUIDANCE = (1.0, 1.5)  # the round trip is checked without and with classifier-free guidance
CHECK_ATOL = 1e-4  # refused above this (float32 reordering gives ~1e-6)
POS_EMBED_ATOL = 1e-5


def diffusers_class():
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as exc:
        raise DseError(f"--format diffusers needs the diffusers package ({exc}); install it: pip install diffusers") from None
    return DiTTransformer2DModel


def diffusers_config(model: DiT) -> dict[str, Any]:
    """The `DiTTransformer2DModel` arguments of `model`'s architecture, or a DseError when diffusers
    cannot express it (an MLP not 4x the width)."""
    a, g = model.arch, model.geometry
    if int(a.width * a.mlp_ratio) != 4 * a.width:
        raise DseError(f"diffusers' {DIFFUSERS_CLASS} has MLPs 4x the width, this student's mlp_ratio is {a.mlp_ratio:g}: "
                       "it cannot be exported for diffusers; export it as ONNX (--format onnx)")
    return dict(
        num_attention_heads=a.heads, attention_head_dim=a.width // a.heads, in_channels=g.channels,
        out_channels=g.channels, num_layers=a.depth, dropout=0.0, attention_bias=True, sample_size=g.image_size,
        patch_size=g.patch_size, activation_fn="gelu-approximate", num_embeds_ada_norm=g.num_classes,
        upcast_attention=False, norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-6,
    )


@torch.no_grad()
def diffusers_state_dict(model: DiT) -> dict[str, torch.Tensor]:
    """`model`'s weights under diffusers' names (see the module docstring for what is not a rename)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    w = model.arch.width
    t_emb = model.t_embedder(torch.tensor([float(STUDENT_TIME)]))[0].float()  # dse's constant time embedding (w,)
    freq = model.t_embedder.frequency_embedding_size
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(model.arch.depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = dst + "norm1.emb."
        out[emb + "timestep_embedder.linear_1.weight"] = torch.zeros(w, freq)
        out[emb + "timestep_embedder.linear_1.bias"] = torch.zeros(w)
        out[emb + "timestep_embedder.linear_2.weight"] = torch.zeros(w, w)
        out[emb + "timestep_embedder.linear_2.bias"] = t_emb.clone()
        out[emb + "class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"].clone()
        out[dst + "norm1.linear.weight"] = sd[src + "adaLN_modulation.1.weight"]
        out[dst + "norm1.linear.bias"] = sd[src + "adaLN_modulation.1.bias"]
        for name, weight, bias in zip(("to_q", "to_k", "to_v"), sd[src + "attn.qkv.weight"].chunk(3),
                                      sd[src + "attn.qkv.bias"].chunk(3)):
            out[dst + f"attn1.{name}.weight"], out[dst + f"attn1.{name}.bias"] = weight.clone(), bias.clone()
        out[dst + "attn1.to_out.0.weight"] = sd[src + "attn.proj.weight"]
        out[dst + "attn1.to_out.0.bias"] = sd[src + "attn.proj.bias"]
        out[dst + "ff.net.0.proj.weight"], out[dst + "ff.net.0.proj.bias"] = sd[src + "mlp.fc1.weight"], sd[src + "mlp.fc1.bias"]
        out[dst + "ff.net.2.weight"], out[dst + "ff.net.2.bias"] = sd[src + "mlp.fc2.weight"], sd[src + "mlp.fc2.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def to_diffusers(model: DiT):
    """A `DiTTransformer2DModel` (eval mode, CPU, float32) that computes what `model` computes, for any timestep."""
    cls = diffusers_class()
    out = cls(**diffusers_config(model))
    out.load_state_dict(diffusers_state_dict(model), strict=True)
    pos = out.pos_embed.pos_embed
    ours = model.pos_embed.detach().float().cpu()
    if pos.shape != ours.shape or float((pos - ours).abs().max()) > POS_EMBED_ATOL:
        raise DseError("this student's position embedding is not the fixed sin-cos one diffusers computes, "
                       "so diffusers cannot reproduce it; export it as ONNX (--format onnx)")
    return out.eval()


def guided(diffusers_model, z: torch.Tensor, y: torch.Tensor, guidance: float) -> torch.Tensor:
    """What docs/formats.md tells a diffusers user to run: classifier-free guidance with the exported model
    (null label = num_classes, any timestep), `x_u + s (x_c - x_u)`; one pass without guidance at s = 1."""
    t = torch.zeros(2 * len(y))  # any timestep: the exported time embedding is constant
    null = torch.full_like(y, diffusers_model.config.num_embeds_ada_norm)
    if guidance == 1.0:
        return diffusers_model(z, timestep=t[: len(y)], class_labels=y).sample
    x_c, x_u = diffusers_model(torch.cat([z, z]), timestep=t, class_labels=torch.cat([y, null])).sample.chunk(2)
    return x_u + guidance * (x_c - x_u)


@torch.no_grad()
def max_abs_diff(model: DiT, diffusers_model, *, batch: int = 4, seed: int = 0) -> float:
    """The largest |diffusers - dse| over a seeded batch of (z, y), each guidance of CHECK_GUIDANCE."""
    g = model.geometry
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((batch, g.channels, g.image_size, g.image_size), generator=gen)
    y = torch.randint(0, g.num_classes, (batch,), generator=gen)
    model = model.eval()
    return max(float((guided(diffusers_model, z, y, s) - model.forward_with_cfg(z, y, s)).abs().max())
               for s in CHECK_GUIDANCE)


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DseError(f"--out {out} is a file; give a new folder for the diffusers model")
        if any(out.iterdir()):
            raise DseError(f"--out folder {out} is not empty; give a new (or empty) folder for the diffusers model")
    check_folder(out, "--out folder")


def export_diffusers(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """`dse export CKPT --format diffusers --out DIR`: the saved student as a diffusers `save_pretrained`
    folder (config.json, diffusion_pytorch_model.safetensors, DIFFUSERS_NOTE_FILE), loaded back with
    `from_pretrained(..., local_files_only=True)` and compared with dse's output before it appears at `out`
    (written to a temporary folder beside it, then renamed). `out` must be new or empty; nothing is written
    when anything is refused."""
    from dse.evaluation import load_student

    out = Path(out)
    _check_out(out)
    model, meta = load_student(checkpoint)
    cls = diffusers_class()
    exported = to_diffusers(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.dse-", dir=out.parent))
    try:
        exported.save_pretrained(tmp, safe_serialization=True)
        try:
            loaded = cls.from_pretrained(tmp, local_files_only=True, low_cpu_mem_usage=False).eval()
        except Exception as exc:  # noqa: BLE001 - any failure of the round trip is ours, said in one line
            raise DseError(f"the exported folder does not load back in diffusers ({one_line(exc)})") from None
        diff = max_abs_diff(model, loaded)
        if not diff <= CHECK_ATOL:
            raise DseError(f"the diffusers model differs from the dse student by {diff:.2e} (> {CHECK_ATOL:g}); nothing written")
        g = model.geometry
        note = {
            "format": NOTE_FORMAT, "diffusers_class": DIFFUSERS_CLASS, "source": str(Path(checkpoint).resolve()),
            **meta, "arch": dataclasses.asdict(model.arch), "geometry": dataclasses.asdict(g),
            "input": f"hidden_states: noise z ~ N(0, I), (B, {g.channels}, {g.image_size}, {g.image_size}) float32 (not "
                     "scaled by sigma_max); class_labels: (B,) int64 in [0, num_classes), num_classes = the null label",
            "timestep": f"any (B,) tensor: the time embedding is the constant dse's student uses (t = {float(STUDENT_TIME):g})",
            "output": "`.sample` is the image itself, in [-1, 1] like the training images (one step, not clamped), "
                      "not a noise prediction: no scheduler loop",
            "guidance": "x = x_u + s * (x_c - x_u) from one batch of [z, z] with labels [y, null]; docs/formats.md",
            "max_abs_diff": diff, "checked_guidance": list(CHECK_GUIDANCE),
        }
        (tmp / DIFFUSERS_NOTE_FILE).write_text(json.dumps(note, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes folders private
        if out.is_dir():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    return {"out": str(out), "files": files, "bytes": sum((out / f).stat().st_size for f in files),
            "max_abs_diff": diff, "diffusers_params": sum(p.numel() for p in exported.parameters()),
            "params": sum(p.numel() for p in model.parameters())}
