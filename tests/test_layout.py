"""Where a study's files live: names are one safe path component, every derived path stays inside
its folder, and there is one listing of the studies of a results folder."""

import os
from pathlib import Path

import pytest

from dse.errors import DseError
from dse.layout import StudyLayout, check_name, inside, is_inside, study_names

BAD_NAMES = ["../x", "..", ".", "/abs", "a/b", "a\\b", "", " x", "x y", ".hidden", "-x", "x" * 129, None, 5]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_one_safe_path_component_is_refused(name, tmp_path):
    with pytest.raises(DseError, match="is not allowed: use 1-128 letters"):
        check_name(name)
    with pytest.raises(DseError):
        StudyLayout(tmp_path / "results", name)


@pytest.mark.parametrize("name", ["demo", "demo-5M", "paper_0.42M", "a+b", "x" * 128])
def test_safe_names_are_kept_and_their_files_lie_inside_their_folders(name, tmp_path):
    layout = StudyLayout(tmp_path / "results", name, tmp_path / "reports")
    assert check_name(name) == name
    assert layout.study_dir == tmp_path / "results" / name
    assert layout.report_path == tmp_path / "reports" / f"{name}.html"
    assert layout.artifacts_dir("d2-w16-h1-get-l2-0123abcd") == tmp_path / "results" / name / "artifacts" / "d2-w16-h1-get-l2-0123abcd"
    with pytest.raises(DseError, match="trial id '../t' is not allowed"):
        layout.artifacts_dir("../t")


def test_a_link_leading_out_of_the_results_folder_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "results" / "linked")
    assert not is_inside(tmp_path / "results", tmp_path / "results" / "linked")
    with pytest.raises(DseError, match="leads outside"):
        StudyLayout(tmp_path / "results", "linked").study_dir
    with pytest.raises(DseError, match="leads outside"):
        inside(tmp_path / "results", "..", "elsewhere")
    assert inside(tmp_path / "results", "a", "b") == tmp_path / "results" / "a" / "b"


def test_study_names_is_the_one_listing_of_studies(tmp_path):
    root = tmp_path / "results"
    for folder in ("with-config", "with-trials/trials", "pairs/digits-empirical-64-s0", "bad name/trials", "empty"):
        (root / folder).mkdir(parents=True)
    (root / "with-config" / "study.json").write_text("{}")
    (root / "file-not-folder").write_text("x")
    (tmp_path / "outside" / "trials").mkdir(parents=True)
    os.symlink(tmp_path / "outside", root / "link-out")
    assert study_names(root) == ["with-config", "with-trials"]
    assert study_names(tmp_path / "nowhere") == []
    with pytest.raises(DseError, match="file-not-folder is not a folder"):
        study_names(root / "file-not-folder")


def test_query_results_and_status_list_the_same_studies(tmp_path):
    """Before, `dse.query.known_studies` and `dse.study.study_names` had different rules: a study with
    rows but no study.json was known to one and not the other."""
    import importlib

    from dse import study
    query = importlib.import_module("dse.query")  # the module: `dse.query` is the public function `query`

    root = tmp_path / "results"
    (root / "a" / "trials").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "study.json").write_text("not json")
    assert study.study_names(root) == query.study_names(root) == study_names(root) == ["a", "b"]
    assert [s["study"] for s in study.studies_status(root)] == ["a", "b"]


def test_the_file_names_of_a_study_are_spelled_only_in_layout():
    """One owner for the layout: no other module spells study.json, last.pt, student.pt (.safetensors,
    .json), samples.png, student.onnx, teacher.safetensors / .json, dse_export.json, mlflow.db or the
    claims/, artifacts/ and tune/ folders as a string literal ("trials" and "ta"
    are also a SQL view and a setup's name, so they are not searched for)."""
    import ast

    from dse import layout as owner

    names = {owner.STUDY_FILE, owner.CLAIMS_DIR, owner.ARTIFACTS_DIR, owner.TUNE_DIR, owner.LAST_CHECKPOINT,
             owner.STUDENT_FILE, owner.SAMPLES_FILE, owner.ONNX_FILE, owner.STUDENT_WEIGHTS_FILE,
             owner.STUDENT_CONFIG_FILE, owner.TEACHER_WEIGHTS_FILE, owner.TEACHER_CONFIG_FILE, owner.DIFFUSERS_NOTE_FILE,
             owner.MLFLOW_DB}
    package = Path(owner.__file__).parent
    spelled = sorted(
        f"{path.relative_to(package)}:{node.lineno} {node.value!r}"
        for path in package.rglob("*.py") if path != Path(owner.__file__)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    )
    assert spelled == []
