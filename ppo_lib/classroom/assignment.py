"""Student versions of instructor notebooks, by nbgrader's rules (``python -m ppo_lib.classroom release``).

The chapters are the *instructor* version: every exercise's answer sits between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines, and graded check cells may carry
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks. Cells carry nbgrader's metadata
(schema 3). :func:`release` follows nbgrader's ``generate_assignment``: a solution region
becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (``YOUR ANSWER HERE`` in
markdown), hidden-test blocks are deleted, and the outputs of solution and check cells are
cleared; the reader's visible self-checks and every other output stay.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import nbformat

__all__ = ["ClassroomError", "release_notebook", "release"]

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

