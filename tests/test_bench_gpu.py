"""bench/gpu.py, the one GPU benchmark (issue 14): `--device cpu --quick` runs every section and code path in
CI time and writes a JSON with a row for every figure the issue asks for, each measured or saying why not."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.py"
ARCHS = ("d5-w64-h8", "d7-w192-h12")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def run(out: Path, *extra: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """The user's command, run once: bench/gpu.py --device cpu --quick --out <tmp>."""
    return run(tmp_path_factory.mktemp("gpu") / "gpu-cpu-quick.json")


def test_every_section_and_the_targets(quick):
    result, stdout = quick
    assert list(result["sections"]) == ["train", "packed", "latency", "fid", "lpips"]
    for name, section in result["sections"].items():
        assert "error" not in section, (name, section.get("error"))
        assert section["seconds"] >= 0 and section["budget_s"] > 0
    assert result["device_slug"] == "cpu" and result["quick"] is True and result["peak_flops"] is None
    assert result["targets_issue14"] == {"train_images_per_s": 20_000, "latency_50k_s": 0.6}
    train, latency = result["targets"]["train_images_per_s"], result["targets"]["latency_50k_s"]
    assert train["target"] == 20_000 and positive(train["value"]) and train["meets_target"] is False
    assert train["x_of_target"] == pytest.approx(train["value"] / 20_000)
    assert latency["target"] == 0.6 and positive(latency["value"]) and latency["meets_target"] is False
    assert latency["x_of_target"] == pytest.approx(latency["value"] / 0.6)
    assert "Targets (issue 14)" in stdout and "written:" in stdout


def test_training_rows_cover_archs_losses_modes_and_cohorts(quick):
    result, _ = quick
    rows = result["sections"]["train"]["rows"]
    keys = [(r["arch"], r["loss"], r["mode"], r["cohort"]) for r in rows]
    assert sorted(keys) == sorted((a, loss, mode, c) for a in ARCHS for loss in ("l2", "lpips")
                                  for mode in ("eager", "compiled") for c in (1, 4, 8))
    for r in rows:
        assert "error" not in r, r
        if r["images_per_s"] is None:  # quick compiles only the small student, and says so
            assert r["mode"] == "compiled" and "not compiled" in r["skipped"], r
            continue
        assert positive(r["images_per_s"]) and positive(r["timed_s"])
        assert r["timed_images"] == r["cohort"] * r["batch"] * r["timed_steps"]
        assert r["images_per_s"] == pytest.approx(r["timed_images"] / r["timed_s"])
        assert r["flop_floor_images_per_s"] is None and r["floor_ratio"] is None  # no peak on a CPU
        assert r["diverged"] is None
    assert all(r["images_per_s"] for r in rows if r["mode"] == "eager")
    compiled = [r for r in rows if r["mode"] == "compiled" and r["images_per_s"]]
    assert {(r["arch"], r["loss"]) for r in compiled} == {("d5-w64-h8", "l2"), ("d5-w64-h8", "lpips")}
    assert all(r["compile_s"] is not None for r in compiled)
    assert any("compiled" in note for note in result["notes"])
    for r in rows:  # the target is (7,192,12) with l2's, and only theirs
        if r["arch"] == "d7-w192-h12" and r["loss"] == "l2":
            assert r["target"] == 20_000
            assert r["images_per_s"] is None or r["x_of_target"] == pytest.approx(r["images_per_s"] / 20_000)
        else:
            assert "target" not in r


def test_packed_processes_and_mps(quick):
    result, _ = quick
    section = result["sections"]["packed"]
    plain = {r["processes"]: r for r in section["rows"] if not r["mps"]}
    assert set(plain) >= {1, 2}
    for n, r in plain.items():
        assert positive(r["images_per_s"]) and len(r["per_process_images_per_s"]) == n, r
        assert r["images"] == n * r["batch"] * r["timed_steps"]
    assert plain[1]["x_of_one_process"] == 1.0
    assert section["mps"] == {"available": False, "why_not": "cpu"}
    assert all(r["images_per_s"] is None and r["skipped"] == "no MPS: cpu" for r in section["rows"] if r["mps"])


def test_latency_rows_for_table6_beside_the_paper(quick):
    result, _ = quick
    table = load("latency").PAPER_TABLE6
    rows = {r["arch"]: r for r in result["sections"]["latency"]["rows"] if r["dtype"] == "float32" and not r["compile"]}
    assert set(rows) == {f"d{d}-w{w}-h{h}" for _, d, w, h, _ in table}
    for _, d, w, h, jetson in table:
        r = rows[f"d{d}-w{w}-h{h}"]
        assert r["paper_jetson_orin_s"] == jetson and r["scaled"] is True and r["images_timed"] < 50_000
        assert positive(r["latency_50k_s"])
        assert r["latency_50k_s"] == pytest.approx(r["measured_s"] * 50_000 / r["images_timed"])
    key = rows["d7-w192-h12"]
    assert key["paper_a100_s"] == 3.66 and key["target"] == 0.6
    assert key["x_of_paper_a100"] == pytest.approx(key["latency_50k_s"] / 3.66)
    assert rows["d5-w64-h8"]["paper_a100_s"] is None and "target" not in rows["d5-w64-h8"]
    assert result["sections"]["latency"]["paper_a100_others_s"]["GET 8.6M (Geng et al. 2024)"] == 6.46


def test_fid_wall_time(quick):
    result, _ = quick
    fid = result["sections"]["fid"]
    assert fid["scaled"] is True and fid["generated"] < 50_000 and positive(fid["generate_50k_s"])
    if fid["extractor"] is None:  # no Inception weights here: generation only, and why
        assert fid["weights_missing"] and fid["fid_50k_s"] is None
    else:
        assert positive(fid["features_50k_s"]) and fid["features_timed"] == fid["generated"]
        assert fid["fid_50k_s"] == pytest.approx(fid["generate_50k_s"] + fid["features_50k_s"] + fid["distance_s"])


def test_lpips_cost_and_cache(quick):
    result, _ = quick
    rows = {r["size"]: r for r in result["sections"]["lpips"]["rows"]}
    assert set(rows) == {64, 128, 224}
    for r in rows.values():
        assert positive(r["ms_per_image"]) and positive(r["cached_ms_per_image"]), r
        assert r["max_abs_diff_cached"] < 1e-4  # the cached distance is LPIPSLoss's
        assert r["cache_pairs_per_gb"] == int(1e9 // r["cache_bytes_per_image"])
    # float16 AlexNet features: 64 x 55^2 + 192 x 27^2 + (384 + 256 + 256) x 13^2 values at 224 px
    assert rows[224]["cache_bytes_per_image"] == 2 * (64 * 55**2 + 192 * 27**2 + (384 + 256 + 256) * 13**2)
    assert rows[64]["cache_bytes_per_image"] < rows[128]["cache_bytes_per_image"] < rows[224]["cache_bytes_per_image"]


def test_a_section_out_of_time_records_what_it_skipped(tmp_path):
    result, _ = run(tmp_path / "out.json", "--sections", "lpips", "--budget", "0")
    assert list(result["sections"]) == ["lpips"]
    section = result["sections"]["lpips"]
    assert [r["skipped"] for r in section["rows"]] == ["section budget spent"] * 3
    assert section["skipped"] == [f"size {s}: section budget spent" for s in (64, 128, 224)]


def test_device_slugs():
    gpu = load("gpu")
    cuda = gpu.torch.device("cuda")
    assert gpu.device_slug(cuda, "NVIDIA H100 80GB HBM3") == "h100"
    assert gpu.device_slug(cuda, "NVIDIA H200") == "h200"
    assert gpu.device_slug(cuda, "NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu.device_slug(cuda, "NVIDIA GeForce RTX 4090") == "geforce-rtx-4090"
    assert gpu.device_slug(gpu.torch.device("cpu"), "Intel(R) Xeon(R)") == "cpu"
    assert gpu.peak_flops(cuda, "NVIDIA H200") == 989e12 and gpu.peak_flops(cuda, "NVIDIA L4") is None
