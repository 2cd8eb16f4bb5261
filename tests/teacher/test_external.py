import warnings

import pytest
import torch
from torch import nn

from dse.errors import DseError
from dse.teacher.external import load_external_teacher

SHAPE = (1, 4, 4)


class GaussianDenoiser(nn.Module):
    """The exact denoiser of data N(mu, s^2 I): D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def __init__(self, mu: float = 0.3, s: float = 0.5):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu))  # float32: the loader casts float64 inputs to it
        self.s = s

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shrink = self.s**2 / (self.s**2 + sigma.view(-1, 1, 1, 1) ** 2)
        return self.mu + shrink * (x - self.mu)


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *SHAPE, generator=g, dtype=dtype)
    return x, torch.tensor([80.0, 1.0, 0.01], dtype=dtype), torch.tensor([0, 1, 2])


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / "gauss.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(GaussianDenoiser()), str(path))
    return path


MODULE_SOURCE = '''
import torch

BUILT_ON = []
NOT_CALLABLE = 3


def build(device="cpu"):
    BUILT_ON.append(device)
    return lambda x, sigma, labels: 0.5 * x


def build_plain():
    return lambda x, sigma, labels: x


class Factory:
    @staticmethod
    def make():
        return lambda x, sigma, labels: -x


def returns_number():
    return 3


def bad_shape():
    return lambda x, sigma, labels: x[:, :, :2]


def not_finite():
    return lambda x, sigma, labels: x * float("nan")


def raises():
    def denoiser(x, sigma, labels):
        raise ValueError("boom")
    return denoiser


def raises_a_paragraph():
    def denoiser(x, sigma, labels):
        raise RuntimeError("boom. More text.\\n\\tand a second line\\n")
    return denoiser


def factory_fails():
    raise KeyError("no weights here")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module `dse_test_user_teacher` on sys.path."""
    (tmp_path / "dse_test_user_teacher.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "dse_test_user_teacher", raising=False)
    return "dse_test_user_teacher"


def test_torchscript_file_matches_its_module(scripted):
    teacher = load_external_teacher(str(scripted), shape=SHAPE, num_classes=10)
    x, sigma, labels = _inputs()
    out = teacher(x, sigma, labels)
    expected = GaussianDenoiser()(x.float(), sigma.float(), labels)
    assert out.dtype == torch.float64 and out.shape == x.shape
    torch.testing.assert_close(out.float(), expected)
    assert torch.allclose(out[0].float(), torch.tensor(0.3), atol=1e-4)  # sigma >> s: the mean
    assert torch.allclose(out[2], x[2], atol=1e-3)  # sigma << s: nearly x


def test_module_function_gets_the_device(user_module):
    teacher = load_external_teacher(f"{user_module}:build", shape=SHAPE)
    x, sigma, labels = _inputs()
    torch.testing.assert_close(teacher(x, sigma, labels), 0.5 * x)
    assert __import__(user_module).BUILT_ON == ["cpu"]


@pytest.mark.parametrize("attr, sign", [("build_plain", 1.0), ("Factory.make", -1.0)])
def test_module_function_without_device_and_dotted_attributes(user_module, attr, sign):
    x, sigma, labels = _inputs(torch.float32)
    out = load_external_teacher(f"{user_module}:{attr}")(x, sigma, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sign * x)


def test_missing_file(tmp_path):
    with pytest.raises(DseError, match="not found"):
        load_external_teacher(str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("content", ["junk", "state_dict"])
def test_not_torchscript(tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "junk":
        path.write_bytes(b"not a model")
    else:
        torch.save(GaussianDenoiser().state_dict(), path)
    with pytest.raises(DseError, match="not a TorchScript file"):
        load_external_teacher(str(path))


def test_neither_file_nor_entry_point():
    with pytest.raises(DseError, match="neither a TorchScript file nor"):
        load_external_teacher("edm")


@pytest.mark.parametrize(
    "attr, message",
    [
        ("no_such_function", "has no attribute"),
        ("NOT_CALLABLE", "not a function"),
        ("returns_number", "not a callable"),
    ],
)
def test_entry_point_errors(user_module, attr, message):
    with pytest.raises(DseError, match=message):
        load_external_teacher(f"{user_module}:{attr}")


def test_module_not_importable():
    with pytest.raises(DseError, match="cannot import module 'dse_no_such_module'"):
        load_external_teacher("dse_no_such_module:build")


@pytest.mark.parametrize(
    "attr, message",
    [("bad_shape", "returned shape"), ("not_finite", "NaN or infinite"), ("raises", "failed on a probe batch.*boom")],
)
def test_probe_errors(user_module, attr, message):
    load_external_teacher(f"{user_module}:{attr}")  # no shape: no probe
    with pytest.raises(DseError, match=message):
        load_external_teacher(f"{user_module}:{attr}", shape=SHAPE, num_classes=10)


@pytest.mark.parametrize(
    "attr, message",
    [("raises_a_paragraph", "failed on a probe batch .*RuntimeError: boom$"),
     ("factory_fails", "factory_fails\\(\\) failed while building the external teacher: KeyError: 'no weights here'$")],
)
def test_the_users_errors_become_one_line(user_module, attr, message):
    with pytest.raises(DseError, match=message) as err:
        load_external_teacher(f"{user_module}:{attr}", shape=SHAPE, num_classes=10)
    assert "\n" not in str(err.value)


def test_an_empty_file_is_not_torchscript_in_one_line(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(DseError, match="not a TorchScript file") as err:
        load_external_teacher(str(path))
    assert "\n" not in str(err.value)
