"""Device names: the format check (no torch) and the resolution to a torch.device this machine has."""

import subprocess
import sys

import pytest
import torch

from dse.device import check_device_name, resolve_device
from dse.errors import DseError


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_check_device_name_accepts_the_documented_names(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["cudax", "gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "", " cpu", "tpu", 0, None])
def test_check_device_name_refuses_anything_else_naming_the_choices(name):
    with pytest.raises(DseError, match=r"use auto, cpu, cuda or cuda:N"):
        check_device_name(name)


def test_checking_a_name_does_not_import_torch():
    code = "import sys, dse.device; dse.device.check_device_name('cuda:1'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_and_auto_resolve_to_a_device_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cuda_without_a_gpu_says_so_and_what_to_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DseError, match=r"no CUDA GPU.*--device cpu or --device auto"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_index_the_machine_lacks_names_the_ones_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DseError, match=r"cuda:2.*has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_a_malformed_name_is_refused_before_torch_sees_it():
    with pytest.raises(DseError, match="cudax"):
        resolve_device("cudax")
