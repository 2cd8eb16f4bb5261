"""dse/events.py is the one home of row statuses, event kinds and the OnEvent type: the store accepts
exactly its statuses, and no other module defines them again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dse import events
from dse.store import ResultsStore

PACKAGE = Path(events.__file__).parent


def test_no_other_module_defines_a_status_an_event_kind_or_on_event():
    owned = {"OnEvent", "COMPLETE", "FAILED", "STOPPED", "STATUSES", "START", "TRAIN", "QUALITY", "LATENCY",
             "EVENT_KINDS"}
    defined = sorted(
        f"{path.relative_to(PACKAGE)}:{node.lineno} {target.id}"
        for path in PACKAGE.rglob("*.py") if path.name != "events.py"
        for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for target in (t.elts if isinstance(t, ast.Tuple) else [t])
        if isinstance(target, ast.Name) and target.id in owned
    )
    assert defined == []


def test_the_kinds_are_distinct_and_include_every_status():
    assert len(set(events.EVENT_KINDS)) == len(events.EVENT_KINDS)
    assert set(events.STATUSES) <= set(events.EVENT_KINDS)


@pytest.mark.parametrize("status", [*events.STATUSES, "running", "done"])
def test_the_store_accepts_exactly_the_row_statuses(tmp_path, status):
    store = ResultsStore(tmp_path)
    row = {"trial_id": "t1", "status": status}
    if status in events.STATUSES:
        store.write(row)
        assert store.statuses() == {"t1": status}
    else:
        with pytest.raises(ValueError, match="status"):
            store.write(row)
