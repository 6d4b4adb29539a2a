"""Grade a submission with the instructor's checks (``python -m ppo_lib.classroom grade``).

:func:`grade` follows nbgrader's ``autograde``: the check cells of the submission are replaced
by the instructor's (so the hidden tests come back and a student cannot edit a check), matched
by ``grade_id``; edited check cells, changed nbgrader metadata and changed cell types are
reported; the notebook runs cell by cell with a time limit per cell, continuing past errors;
a check cell earns its points when it runs without an error.

It runs the notebook in a sandbox (:mod:`.sandbox`, :mod:`._runner`) built so that a
submission cannot talk the grader into points: the checks run in a fresh process, over a
guarded view of the notebook's functions, with the state of the interpreter put back after
every piece of student code; the library function an exercise reimplements is refused while
the student's code runs; the report is read from a channel of the grader's own and has every
control character removed. What that does and does not guarantee is written in the README's
"For teachers" section and in the two modules' docstrings.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shutil
import sys
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .assignment import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, END_SOLUTION, ClassroomError, _check_exercises,
                      _is_autograded_test, _is_grade, _is_solution, _nbgrader, _read_notebook, _replace_regions,
                      _where, release_notebook)
from .sandbox import Limits, StartError, run_notebook

__all__ = ["grade", "GradeReport", "ExerciseResult", "FORBIDDEN"]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    # checker -> the library functions its exercise reimplements: they raise while the
    # student's code runs for that check (calling them is not an answer).
    "ppo_lib.exercises.ch01.check_sequence_logprob": ("ppo_lib.rollout.logprobs_from_logits",
                                                      "ppo_lib.rollout.token_logprobs"),
    "ppo_lib.exercises.ch01.check_entropy_at_temperature": ("ppo_lib.losses.entropy_from_logits",),
    "ppo_lib.exercises.ch03.check_returns": ("ppo_lib.advantages.discounted_returns",
                                             "ppo_lib.advantages.discounted_cumsum",
                                             "ppo_lib.advantages.discounted_cumsum_reference"),
    "ppo_lib.exercises.ch03.check_td_errors": ("ppo_lib.advantages.td_errors",),
    "ppo_lib.exercises.ch03.check_random_walk_values": ("ppo_lib.toys.random_walk_true_values",),
    "ppo_lib.exercises.ch04.check_gae": ("ppo_lib.advantages.gae", "ppo_lib.advantages.gae_reference"),
    "ppo_lib.exercises.ch04.check_lambda_returns": ("ppo_lib.advantages.gae", "ppo_lib.advantages.gae_reference"),
    "ppo_lib.exercises.ch04.check_whiten": ("ppo_lib.masking.masked_whiten",),
    "ppo_lib.exercises.ch05.check_ppo_clip_loss": ("ppo_lib.losses.ppo_clip_loss",),
    "ppo_lib.exercises.ch05.check_value_loss": ("ppo_lib.losses.value_loss",),
    "ppo_lib.exercises.ch05.check_kl_k3": ("ppo_lib.kl.kl_estimate",),
    "ppo_lib.exercises.ch06.check_shape_rewards": ("ppo_lib.kl.shape_rewards",),
    "ppo_lib.exercises.ch06.check_response_mask": ("ppo_lib.rollout.truncate_after_eos",),
    "ppo_lib.exercises.ch07.check_lr_schedule": ("ppo_lib.schedules.lr_factor",),
    "ppo_lib.exercises.ch08.check_bt_loss": ("ppo_lib.reward_model.bradley_terry_loss",),
    "ppo_lib.exercises.ch08.check_best_of_n": ("ppo_lib.reward_model.best_of_n_estimate",),
    "ppo_lib.exercises.ch08.check_noise_ceiling": ("ppo_lib.preferences.noise_ceiling",),
    "ppo_lib.exercises.ch09.check_rloo": ("ppo_lib.policy_gradient.rloo_advantages",
                                          "ppo_lib.policy_gradient.dr_grpo_advantages",
                                          "ppo_lib.policy_gradient.group_mean"),
    "ppo_lib.exercises.ch09.check_grpo_advantages": ("ppo_lib.policy_gradient.grpo_advantages",
                                                     "ppo_lib.policy_gradient.group_mean"),
    "ppo_lib.exercises.ch09.check_dpo_loss": ("ppo_lib.dpo.dpo_loss",),
}
"""Per checker (``ppo_lib.exercises.chNN.check_x``), the ``ppo_lib`` functions its exercise
reimplements. Besides these, an answer that *is* a ``ppo_lib`` function (``my_gae = gae``)
always fails."""


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
    notebook could not be graded at all, or interfered with the grader; ``notes`` lists what
    the teacher should know: errors outside check cells, edited check cells, code to review."""

    notebook: str
    instructor: str | None = None
    exercises: list[ExerciseResult] = field(default_factory=list)
    total: float = 0
    max_total: float = 0
    manual_points: float = 0
    timeout: float = 300
    deadline: float = 3600
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def clean(self) -> GradeReport:
        """Remove control characters (terminal escapes, bidi overrides) from every string, in place."""
        self.notebook, self.instructor, self.error = _clean(self.notebook), _clean(self.instructor), _clean(self.error)
        self.notes = [_clean(n) for n in self.notes]
        for e in self.exercises:
            e.grade_id, e.title, e.status, e.message = _clean(e.grade_id), _clean(e.title), _clean(e.status), _clean(e.message)
        return self

    def to_dict(self) -> dict:
        return asdict(self.clean())

    def format(self) -> str:
        """The report a teacher reads in a terminal."""
        self.clean()
        lines = [f"Grading {self.notebook}"]
        if self.error:
            lines.append(f"  cannot grade: {self.error}")
            lines.extend(f"Note: {note}" for note in self.notes)
            return "\n".join(lines)
        lines[0] += (f" (checks from {self.instructor}; time limit {_num(self.timeout)} s per cell, "
                     f"{_num(self.deadline)} s in all)")
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


# Terminal escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), DCS/SOS/PM/APC, others.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.?)", re.S)


def _clean(text: str | None) -> str | None:
    """``text`` without terminal escapes and control or format characters (a line break or tab
    becomes a space), so a report cannot move the cursor, recolour or reorder a terminal."""
    if text is None:
        return None
    text = _ESCAPES.sub("", str(text))
    return "".join(" " if ch in "\n\r\t" else ch for ch in text
                   if ch in "\n\r\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))


# --------------------------------------------------------------------------------------
# finding the instructor version
# --------------------------------------------------------------------------------------

def _repo_chapters() -> Path:
    """The instructor chapters next to this package (an editable or source checkout)."""
    return Path(__file__).resolve().parents[2] / "chapters"


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


# --------------------------------------------------------------------------------------
# the notebook to run
# --------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """What to run: ``notebook`` (the submission with the instructor's locked cells),
    ``located`` (grade_id -> index of its check cell), ``missing`` check cells, ``notes`` on
    what the submission changed in cells it must not change."""

    notebook: nbformat.NotebookNode
    located: dict[str, int]
    missing: list[str]
    notes: list[str]


_COMPARED = ("grade_id", "grade", "solution", "locked", "points")


def _assemble(student, teacher, name: str) -> _Plan:
    """The notebook to execute: the submission with every check cell (and other locked cell)
    replaced by the instructor's, hidden tests included, and every graded cell given back the
    instructor's cell type and metadata (nbgrader's checks; each change is noted).

    Cells are matched by ``grade_id``; a submission whose metadata was lost (some editors
    drop it) is matched by the released source of the check cell instead.
    """
    nb = copy.deepcopy(student)
    by_id = {_nbgrader(c).get("grade_id"): i for i, c in enumerate(nb.cells) if _nbgrader(c).get("grade_id")}
    released = release_notebook(teacher)
    located, missing, notes, claimed = {}, [], [], set()
    for t_index, t_cell in enumerate(teacher.cells):
        meta = _nbgrader(t_cell)
        gid = meta.get("grade_id")
        if not gid:
            continue
        locked = bool(meta.get("locked") or _is_grade(t_cell)) and not _is_solution(t_cell)
        index = by_id.get(gid)
        visible = released.cells[t_index].source.strip()
        if index is None and locked and visible:  # metadata lost: find the check cell by its visible source
            index = next((i for i, c in enumerate(nb.cells)
                          if c.cell_type == t_cell.cell_type and c.source.strip() == visible), None)
        if index is None:
            if _is_autograded_test(t_cell):
                missing.append(gid)
            continue
        claimed.add(index)
        cell = nb.cells[index]
        where = _where(name, index, t_cell)
        if cell.cell_type != t_cell.cell_type:
            notes.append(f"{where}: the cell type was changed from {t_cell.cell_type} to {cell.cell_type}; "
                         f"it was graded as the instructor's {t_cell.cell_type} cell")
        theirs = _nbgrader(cell)
        if theirs and any(theirs.get(k) != meta.get(k) for k in _COMPARED):
            notes.append(f"{where}: its nbgrader metadata was changed; the instructor's was used")
        if locked:
            if cell.source.strip() not in (visible, t_cell.source.strip()):
                notes.append(f"{where}: the submission changed this locked cell; the instructor's version was run")
            source = t_cell.source
            if _is_autograded_test(t_cell):
                located[gid] = index
        else:
            source = cell.source
        nb.cells[index] = _new_cell(t_cell.cell_type, source, t_cell.metadata)
    teacher_ids = _grade_ids(teacher)
    for index, cell in enumerate(nb.cells):
        gid = _nbgrader(cell).get("grade_id")
        if gid and index not in claimed:
            why = "another cell has the same grade_id" if gid in teacher_ids else \
                "the instructor's version has no cell with this grade_id"
            notes.append(f"{_where(name, index, cell)}: {why}; it ran as an ordinary cell")
            cell.metadata.pop("nbgrader", None)
    return _Plan(nb, located, missing, notes)


def _new_cell(cell_type: str, source: str, metadata) -> nbformat.NotebookNode:
    metadata = copy.deepcopy(dict(metadata))
    if cell_type == "code":
        return nbformat.v4.new_code_cell(source, metadata=metadata)
    if cell_type == "markdown":
        return nbformat.v4.new_markdown_cell(source, metadata=metadata)
    return nbformat.v4.new_raw_cell(source, metadata=metadata)


def _jobs(plan: _Plan) -> list[dict]:
    """The runner's cells: every non-empty code cell, check cells with what their exercise forbids."""
    checks = {index: gid for gid, index in plan.located.items()}
    imported = _imported_checkers(plan.notebook.cells[i].source for i in checks)
    jobs = []
    for index, cell in enumerate(plan.notebook.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if index in checks:
            names = _names(cell.source)
            forbidden = sorted({f for name in names for f in FORBIDDEN.get(imported.get(name, ""), ())})
            jobs.append({"index": index, "kind": "check", "source": cell.source, "forbidden": forbidden})
        else:
            jobs.append({"index": index, "kind": "code", "source": cell.source, "forbidden": []})
    return jobs


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", source))
    except (SyntaxError, ValueError):
        return None


def _names(source: str) -> set[str]:
    tree = _parse(source)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} if tree else set()


def _imported_checkers(sources) -> dict[str, str]:
    """name -> ``module.name`` for every ``from ppo_lib... import name`` in the check cells."""
    found = {}
    for source in sources:
        tree = _parse(source)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ppo_lib"):
                for alias in node.names:
                    found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def _preimports(teacher, jobs: list[dict]) -> list[str]:
    """Modules to import before the notebook runs, so that what the checks use is loaded (and
    its state captured) before any student code: everything the instructor's cells import,
    what the checker modules import inside their functions, and the forbidden functions' modules."""
    modules: list[str] = []
    for cell in teacher.cells:
        tree = _parse(cell.source) if cell.cell_type == "code" else None
        modules.extend(_imports(tree, "") if tree else ())
    package = Path(__file__).resolve().parents[1]
    for name in [m for m in modules if m.startswith("ppo_lib.exercises.")]:
        path = package.parent / (name.replace(".", "/") + ".py")
        tree = _parse(path.read_text(encoding="utf-8")) if path.is_file() else None
        modules.extend(_imports(tree, name) if tree else ())
    for job in jobs:
        modules.extend(dotted.rpartition(".")[0] for dotted in job["forbidden"])
    return list(dict.fromkeys(modules))


def _imports(tree: ast.Module, module: str) -> list[str]:
    """Absolute names of the modules ``tree`` imports (relative ones resolved against ``module``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:-node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name:
                found.append(name)
                if name.startswith("ppo_lib"):  # `from . import ch03`: maybe a submodule
                    found.extend(f"{name}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _instructor_files(teacher_path: Path) -> list[Path]:
    """The instructor's notebooks the grader protects: the chapter and its folder's notebooks."""
    folder = teacher_path.resolve().parent
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".ipynb", ".py")]
    return [teacher_path.resolve(), *(p for p in files if p != teacher_path.resolve())]


def _kernel_python(kernel: str | None) -> str:
    """The Python interpreter of the Jupyter kernel ``kernel`` (default: this one)."""
    if not kernel:
        return sys.executable
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec(kernel)
    except Exception as exc:  # jupyter_client's NoSuchKernel is a KeyError
        raise ClassroomError(f"could not start the kernel ({type(exc).__name__}: {exc}); "
                             "check `jupyter kernelspec list`, or leave out --kernel.") from None
    if (spec.language or "").lower() != "python" or not spec.argv:
        raise ClassroomError(f"could not start the kernel: {kernel!r} is not a Python kernel.")
    python = spec.argv[0]
    return shutil.which(python) or python


# --------------------------------------------------------------------------------------
# what the report must not show, and what a teacher should look at
# --------------------------------------------------------------------------------------

def _secret_lines(teacher) -> list[str]:
    """Lines of the instructor's solutions and hidden tests that the student version does not show."""
    released = release_notebook(teacher)
    visible = {line.strip() for cell in released.cells for line in cell.source.splitlines()}
    secret = set()
    for cell in teacher.cells:
        for begin, end in ((BEGIN_SOLUTION, END_SOLUTION), (BEGIN_HIDDEN, END_HIDDEN)):
            inside = False
            for line in cell.source.splitlines():
                if begin in line:
                    inside = True
                elif end in line:
                    inside = False
                elif inside and len(line.strip()) >= 16 and line.strip() not in visible:
                    secret.add(line.strip())
    return sorted(secret, key=len, reverse=True)


def _redact(text: str | None, secrets: list[str]) -> str | None:
    if text:
        for line in secrets:
            if line in text:
                text = text.replace(line, "[hidden]")
    return text


REVIEW_MODULES = {
    "ctypes", "gc", "inspect", "importlib", "builtins", "sys", "os", "subprocess", "signal", "threading", "_thread",
    "multiprocessing", "concurrent", "resource", "socket", "shutil", "pickle", "marshal", "types", "atexit",
    "weakref", "faulthandler", "IPython", "ppo_lib",
}
REVIEW_ATTRIBUTES = {
    "_getframe", "f_back", "f_globals", "f_locals", "f_builtins", "f_trace", "f_code", "tb_frame", "gi_frame",
    "cr_frame", "__code__", "__globals__", "__closure__", "cell_contents", "__builtins__", "__dict__", "__class__",
    "__subclasses__", "__bases__", "__mro__", "__module__", "register_hook", "register_prehook",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook", "saved_tensors_hooks",
    "register_multi_grad_hook", "Function", "library", "Library", "modules", "meta_path", "path_hooks",
    "settrace", "setprofile", "addaudithook", "setitimer", "pthread_sigmask", "kill", "killpg", "fork", "setsid",
    "system", "environ", "remove", "unlink", "rmtree", "chmod", "write_text", "write_bytes",
}
REVIEW_NAMES = {"exec", "eval", "compile", "globals", "locals", "vars", "setattr", "delattr", "__import__",
                "open", "breakpoint", "__builtins__", "__build_class__", "get_ipython"}
ORDINARY_DUNDERS = {"__init__", "__call__", "__repr__", "__str__", "__len__", "__iter__", "__next__",
                    "__getitem__", "__enter__", "__exit__", "__post_init__"}


def _review(plan: _Plan, teacher, name: str) -> list[str]:
    """Notes on cells the student wrote that reach into the interpreter, files or the grader:
    what the sandbox cannot stop, a teacher can read."""
    ours = {c.source.strip() for nb in (teacher, release_notebook(teacher)) for c in nb.cells}
    notes = []
    for index, cell in enumerate(plan.notebook.cells):
        if cell.cell_type != "code" or index in plan.located.values() or cell.source.strip() in ours:
            continue
        tree = _parse(cell.source)
        found = set()
        modules = {"torch", "np", "numpy", "math", "sys", "os", "builtins", "ppo_lib"}
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) \
                    and _root(node) in modules:  # torch.testing.assert_close = ...
                found.add(f"sets {ast.unparse(node)}")
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] in REVIEW_MODULES)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in REVIEW_MODULES:
                found.add(node.module)
            elif isinstance(node, ast.Attribute) and node.attr in REVIEW_ATTRIBUTES:
                found.add("." + node.attr)
            elif isinstance(node, ast.Name) and node.id in REVIEW_NAMES:
                found.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("__") \
                    and node.name.endswith("__") and node.name not in ORDINARY_DUNDERS:
                found.add(f"def {node.name}")
        if found:
            notes.append(f"{_where(name, index, cell)}: review by hand: it uses {', '.join(sorted(found))}, "
                         "which can reach into the interpreter, other files or the grader")
    return notes


def _root(node: ast.expr) -> str | None:
    """``torch`` for ``torch.testing.assert_close``."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


# --------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------

def grade(notebook: Path | str, instructor: Path | str | None = None, timeout: float = 300,
          kernel: str | None = None, *, deadline: float = 3600, memory_gib: float = 4.0) -> GradeReport:
    """Execute a student's notebook with the instructor's checks and grade each exercise.

    Args:
        notebook: the submission (``.ipynb``).
        instructor: the instructor notebook, or a folder holding it; default: the file of the
            same name in this checkout's ``chapters/``, else the chapter with the same grade_ids.
        timeout: seconds each cell may run (> 0); a cell that runs longer is interrupted and
            fails, one that ignores the interrupt stops the run.
        kernel: a Jupyter kernel name whose Python runs the notebook; default: this Python.
        deadline: seconds the whole notebook may run (> 0); after it, the rest is not run.
        memory_gib: memory the notebook's process may allocate, in GiB (> 0).

    Returns:
        A :class:`GradeReport`. It never raises for a bad submission: an unreadable file,
        a missing instructor version, a kernel that will not start, or a notebook that
        interfered with the grader give ``report.error``.

    Raises:
        ValueError: ``timeout``, ``deadline`` or ``memory_gib`` is not a positive number.
    """
    limits = Limits(timeout=timeout, deadline=deadline, memory_gib=memory_gib)
    path = Path(notebook)
    report = GradeReport(notebook=str(notebook), timeout=timeout, deadline=deadline)
    if os.name != "posix":  # process groups, rlimits, pass_fds
        report.error = "grading needs Linux or macOS (on Windows, run it in WSL)."
        return report.clean()
    try:
        student = _read_notebook(path)
        teacher_path = _find_instructor(path, student, Path(instructor) if instructor else None)
        report.instructor = str(teacher_path)
        teacher = _read_notebook(teacher_path)
        _check_exercises(teacher, teacher_path.name)
        plan = _assemble(student, teacher, path.name)
        jobs = _jobs(plan)
        shown = copy.deepcopy(plan.notebook)  # what the working directory holds: no hidden tests
        for index in plan.located.values():
            shown.cells[index].source = _replace_regions(shown.cells[index].source, BEGIN_HIDDEN, END_HIDDEN,
                                                         None, "")[0]
        outcome = run_notebook(jobs, limits, python=_kernel_python(kernel), preimport=_preimports(teacher, jobs),
                               protected=_instructor_files(teacher_path), notebook_json=nbformat.writes(shown),
                               notebook_name=path.name)
    except StartError as exc:
        report.error = f"could not start the kernel ({exc}); check `jupyter kernelspec list`, or leave out --kernel."
        return report.clean()
    except ClassroomError as exc:
        report.error = str(exc)
        return report.clean()

    secrets = _secret_lines(teacher)
    report.notes = plan.notes + _review(plan, teacher, path.name) + outcome.notes
    if outcome.interference:
        report.error = ("the notebook interfered with the grader, so it was not graded: "
                        + "; ".join(outcome.interference))
        return report.clean()
    results, nb = outcome.results, plan.notebook
    titles = _exercise_titles(teacher)
    for cell in teacher.cells:
        meta = _nbgrader(cell)
        if not _is_grade(cell):
            continue
        gid, max_points = meta["grade_id"], float(meta.get("points", 0))
        result = ExerciseResult(gid, titles.get(gid, ""), 0.0, max_points, "fail")
        if not _is_autograded_test(cell):  # a written answer, or a markdown task
            result.status, result.message = "manual", "written answer: grade by hand"
            report.manual_points += max_points
        elif gid in plan.missing:
            result.status, result.message = "missing", "the check cell is not in the submission"
        else:
            index = plan.located[gid]
            if index not in results:
                result.message = "not run: " + (outcome.stopped or "execution stopped before this cell")
            elif results[index] is None:
                result.status, result.points = "pass", max_points
            else:
                result.message = _redact(results[index], secrets)
        report.exercises.append(result)
        if result.status != "manual":
            report.max_total += max_points
            report.total += result.points
    # Errors outside check cells explain failures (an import that failed, an unanswered exercise).
    checks = set(plan.located.values())
    for index, error in results.items():
        if error and index not in checks:
            report.notes.append(f"{_where(path.name, index, nb.cells[index])} raised {_redact(error, secrets)}")
    if outcome.stopped:
        report.notes.append(_redact(outcome.stopped, secrets))
    return report.clean()
