"""The public API (`dse/__init__.py`): every name it exports is its owner's object, and importing
dse stays light (the heavy names load on first use)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import dse

OWNERS = {
    "DseError": "dse.errors", "Geometry": "dse.types", "StudentArch": "dse.types", "StudyConfig": "dse.config",
    "load_study": "dse.config", "count_params": "dse.sizing", "enumerate_candidates": "dse.sizing",
    "parse_budget": "dse.config", "propose": "dse.sizing", "plan_study": "dse.study", "run_study": "dse.study",
    "run_trial": "dse.trial", "TrialSpec": "dse.trial", "ResultsStore": "dse.store", "pareto_front": "dse.pareto",
    "write_report": "dse.report", "query": "dse.query",
}


def test_all_is_the_documented_api():
    assert set(dse.__all__) == {*OWNERS, "__version__"}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_every_exported_name_is_its_owners_object(name):
    if name == "query":  # the module of that name, callable as its function
        assert getattr(dse, name) is importlib.import_module("dse.query") and name in dir(dse)
        return
    assert getattr(dse, name) is getattr(importlib.import_module(OWNERS[name]), name)
    assert name in dir(dse)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        dse.no_such_name  # noqa: B018


def test_importing_dse_loads_neither_torch_nor_ray_nor_the_lazy_modules():
    code = ("import sys, dse; print(sorted(m for m in ('torch', 'ray', 'pandas', 'dse.study', 'dse.trial', "
            "'dse.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_whole_api_resolves_without_torch_or_ray():
    code = "import sys, dse; [getattr(dse, n) for n in dse.__all__]; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dse_query_is_the_module_and_runs_a_query(tmp_path):
    import dse.query as module

    assert module is sys.modules["dse.query"] and module.format_table is not None
    messages = []
    for run in (dse.query, module.query):
        with pytest.raises(dse.DseError) as refused:
            run("SELECT 1", results_dir=tmp_path / "missing")
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and "missing" in messages[0]
