"""Owns dse's public API: what a library user needs to size a model and to run, store, query and
report a study (dse: find the best tiny Diffusion Transformer for a parameter budget by distillation).

Everything else is an implementation module. Importing dse is cheap: the light names (sizing,
configuration, query) are imported now, the others on first use (`_LAZY`), so `import dse` loads
neither torch nor ray.
"""

from __future__ import annotations

import importlib
from typing import Any

from dse.config import StudyConfig, load_study
from dse.errors import DseError
from dse.sizing import count_params, enumerate_candidates, parse_budget, propose
from dse.types import Geometry, StudentArch

from . import query  # the module, callable: dse.query(sql) runs dse.query.query(sql)

__version__ = "0.1.0"

# name -> the module that owns it, imported on first use (module __getattr__, PEP 562)
_LAZY = {
    "plan_study": "dse.study",
    "run_study": "dse.study",
    "run_trial": "dse.trial",
    "TrialSpec": "dse.trial",
    "ResultsStore": "dse.store",
    "pareto_front": "dse.pareto",
    "write_report": "dse.report",
}

__all__ = [
    "DseError",
    "Geometry",
    "ResultsStore",
    "StudentArch",
    "StudyConfig",
    "TrialSpec",
    "count_params",
    "enumerate_candidates",
    "load_study",
    "pareto_front",
    "parse_budget",
    "plan_study",
    "propose",
    "query",
    "run_study",
    "run_trial",
    "write_report",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once imported, an ordinary attribute
        return value
    raise AttributeError(f"module 'dse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
