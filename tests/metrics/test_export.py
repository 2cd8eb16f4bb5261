"""The ONNX deployment proxy: a tiny DiT round-trips through onnxruntime with guidance folded in,
the graph bakes the guidance scale in, bad paths are DseErrors, and the ORT timing reports its keys.

Tolerance 1e-4: PyTorch and onnxruntime both compute in float32 but with different kernels (fused
LayerNorm, other matmul blocking and summation order), which moves outputs of order 1 by ~1e-6;
1e-4 leaves a 100x margin yet is far below what a wrong graph gives (a guidance of 1.5 instead of
3, or a missing guidance, changes the output by ~1e-1 here).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dse.types import Geometry, StudentArch
from dse.errors import DseError
from dse.metrics.export import (
    ONNX_COLUMNS,
    GuidedStudent,
    check_onnx,
    export_onnx,
    measure_onnx,
    onnx_latency,
)
from dse.models.dit import DiT

TOL = 1e-4
GEOMETRY = Geometry(8, 1, 10, 2)


@pytest.fixture(scope="module")
def student() -> DiT:
    """A depth-2, width-16 DiT whose weights are all random (DiT's init zeroes the output layer,
    which would make every output 0 and every comparison pass)."""
    torch.manual_seed(0)
    model = DiT(StudentArch(2, 16, 2), GEOMETRY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    return path, export_onnx(student, path, guidance=1.5, batch_size=8)


def inputs(batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 1, 8, 8), generator=gen), torch.randint(10, (batch,), generator=gen)


def run_ort(path, z, y) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"z": z.numpy(), "y": y.numpy()})[0]


def test_guided_student_is_forward_with_cfg(student):
    z, y = inputs(3)
    with torch.no_grad():
        assert torch.equal(GuidedStudent(student, 2.0)(z, y), student.forward_with_cfg(z, y, 2.0))


def test_export_writes_the_file_atomically_with_its_metadata(exported):
    path, info = exported
    assert path.is_file() and info["onnx_bytes"] == path.stat().st_size > 0
    assert info["onnx_exporter"] == "torchscript" and info["onnx_guidance"] == 1.5
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(meta["dse_guidance"]) == 1.5 and meta["dse_num_classes"] == "10"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["z", "y"] and [o.name for o in graph.output] == ["x"]


def test_round_trip_within_tolerance(student, exported):
    path, _ = exported
    assert check_onnx(student, path, 1.5) < TOL
    assert check_onnx(student, path, 1.5, batch_size=1) < TOL  # the batch axis is dynamic


@pytest.mark.parametrize("batch", [1, 5, 8, 13])
def test_folded_guidance_equals_forward_with_cfg(student, exported, batch):
    path, _ = exported
    z, y = inputs(batch)
    got = run_ort(path, z, y)
    with torch.no_grad():
        want = student.forward_with_cfg(z, y, 1.5).numpy()
        unguided = student(z, y).numpy()
    assert got.shape == (batch, 1, 8, 8)
    assert np.abs(got - want).max() < TOL
    assert np.abs(got - unguided).max() > 100 * TOL  # the graph really guides


def test_the_graph_bakes_the_guidance_in(student, exported, tmp_path):
    path15, _ = exported
    path3 = tmp_path / "s3.onnx"
    export_onnx(student, path3, guidance=3.0, batch_size=8)
    z, y = inputs(4)
    out15, out3 = run_ort(path15, z, y), run_ort(path3, z, y)
    assert np.abs(out15 - out3).max() > 100 * TOL
    with torch.no_grad():
        assert np.abs(out3 - student.forward_with_cfg(z, y, 3.0).numpy()).max() < TOL
    assert check_onnx(student, path3, 3.0) < TOL
    assert check_onnx(student, path3, 1.5) > 100 * TOL  # checking against another scale catches it


def test_export_leaves_the_model_alone(tmp_path):
    model = DiT(StudentArch(1, 16, 2), GEOMETRY).train()
    export_onnx(model, tmp_path / "m.onnx", batch_size=2)
    assert model.training


def test_bad_paths_are_dse_errors(student, tmp_path):
    with pytest.raises(DseError, match="no ONNX file"):
        onnx_latency(tmp_path / "missing.onnx", num_images=2, batch_size=2, repeats=1)
    with pytest.raises(DseError, match="no ONNX file"):
        check_onnx(student, tmp_path / "missing.onnx", 1.5)
    with pytest.raises(DseError, match="folder"):
        export_onnx(student, tmp_path, batch_size=2)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DseError, match="cannot write"):
        export_onnx(student, tmp_path / "a-file" / "s.onnx", batch_size=2)
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(DseError, match="cannot load"):
        onnx_latency(tmp_path / "bad.onnx", num_images=2, batch_size=2, repeats=1)


def test_missing_packages_say_how_to_install(student, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(DseError, match="pip install onnx onnxruntime"):
        onnx_latency(exported[0], num_images=2, batch_size=2, repeats=1)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(DseError, match="pip install onnx onnxruntime"):
        export_onnx(student, tmp_path / "s.onnx", batch_size=2)


def test_onnx_latency_reports_its_keys(exported):
    out = onnx_latency(exported[0], num_images=5, batch_size=2, repeats=2, threads=1)
    assert out["latency_onnx_cpu_s"] > 0 and out["latency_onnx_per_image_ms"] > 0
    assert out["latency_onnx_threads"] == 1 and out["latency_onnx_num_images"] == 5
    assert out["latency_onnx_batch"] == 2 and out["latency_onnx_repeats"] == 2
    assert onnx_latency(exported[0], num_images=2, batch_size=2, repeats=1)["latency_onnx_threads"] >= 1


def test_measure_onnx_returns_the_store_columns(student, tmp_path):
    from dse.store import COLUMN_NAMES

    out = measure_onnx(student, tmp_path / "s.onnx", guidance=1.5, num_images=3, batch_size=2, repeats=1, threads=1)
    assert set(out) == set(ONNX_COLUMNS) and set(out) <= set(COLUMN_NAMES)  # a trial row can take them all
    assert out["onnx_max_abs_diff"] < TOL and out["onnx_bytes"] == (tmp_path / "s.onnx").stat().st_size
    assert out["latency_onnx_cpu_s"] > 0 and out["latency_onnx_threads"] == 1
    assert out["latency_onnx_num_images"] == 3 and out["latency_onnx_batch"] == 2
